"""The core needs no Airflow: a snapshot and a CDC apply run in a process where ``import airflow`` fails."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from tests.unit.sync.conftest import ITEM_COLS, items_table, make_items

REPO = Path(__file__).resolve().parents[3]

#: Run in a fresh interpreter: Airflow made unimportable before the package is imported, then the
#: protocols driven with plain libpq parameters. Prints what it did as JSON on its last line.
SCRIPT = r"""
import importlib.abc, json, sys

class NoAirflow(importlib.abc.MetaPathFinder):
    attempts = []

    def find_spec(self, name, path=None, target=None):
        if name == "airflow" or name.startswith("airflow."):
            NoAirflow.attempts.append(name)
            raise ModuleNotFoundError(f"No module named {name!r} (Airflow is unimportable in this test)", name=name)
        return None

assert "airflow" not in sys.modules, "airflow was imported at interpreter start"
sys.meta_path.insert(0, NoAirflow())
try:
    import airflow  # noqa: F401
except ImportError:
    pass
else:
    raise AssertionError("the finder did not block airflow")

import psycopg

from airflow_pg_replication.source.database import SourceDatabase
from airflow_pg_replication.sync.cdc_run import apply_changes
from airflow_pg_replication.sync.plan import next_step
from airflow_pg_replication.sync.replicated_table import ReplicatedTable
from airflow_pg_replication.sync.snapshot import snapshot_table

params, table_kw = json.loads(sys.argv[1]), json.loads(sys.argv[2])
source = SourceDatabase(params)
table = ReplicatedTable(**table_kw)
snap = snapshot_table(source, table, with_slot=True)
step = next_step(source, table)
with psycopg.connect(**params, autocommit=True) as conn:
    conn.execute("INSERT INTO items VALUES (100, 'new', 1.5, '2024-06-01 00:00:00+00')")
    conn.execute("UPDATE items SET name = 'changed' WHERE id = 2")
    conn.execute("DELETE FROM items WHERE id = 3")
applied = apply_changes(source, table)
airflow_modules = sorted(m for m in sys.modules if m == "airflow" or m.startswith("airflow."))
print(json.dumps({
    "snapshot_rows": snap["rows"],
    "next_step": step.value,
    "changes": applied["changes"],
    "airflow_modules": airflow_modules,
    "blocked_attempts": sorted(set(NoAirflow.attempts)),
}))
"""


def test_snapshot_and_cdc_run_with_airflow_unimportable(source, duck):
    make_items(source, rows=10)
    table = items_table(duck)
    table_kw = {
        "schema": table.schema,
        "name": table.name,
        "slot": table.slot,
        "publication": table.publication,
        "destination_table": table.destination_table,
        "pipeline_name": table.pipeline_name,
        "destination": dict(table.destination),
    }
    env = {k: v for k, v in os.environ.items() if not k.startswith("AIRFLOW")}
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), *filter(None, [env.get("PYTHONPATH")])])
    proc = subprocess.run(
        [sys.executable, "-c", SCRIPT, json.dumps(source.params), json.dumps(table_kw)],
        capture_output=True,
        text=True,
        env=env,
        cwd=str(REPO),
        timeout=300,
    )
    assert proc.returncode == 0, f"the core failed without Airflow:\n{proc.stderr[-4000:]}"
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["airflow_modules"] == []
    assert out["snapshot_rows"] == 10 and out["next_step"] == "wait_for_changes" and out["changes"] == 3
    # "airflow" itself was asked for (the self-check above) and refused; the run got past it
    assert "airflow" in out["blocked_attempts"]
    assert duck.rows("items", ITEM_COLS, ["id"]) == source.rows()
