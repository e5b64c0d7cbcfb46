#!/usr/bin/env python
"""Benchmark: DAG parse time of a large table registry, as Airflow's DAG processor sees it.

Writes a --tables table registry YAML (mostly cdc tables, some full_refresh and incremental, some
with verify, soft deletes, explicit columns and slots) to a temp dir, then in a fresh Python
process per run:
  - blocks the network (socket.socket.connect / connect_ex raise, and every attempt is counted),
  - imports airflow.sdk first, as the DAG processor already has it loaded ("warm"),
  - times `from airflow_pg_replication import build_dags` + `build_dags(path)`.
Best of --runs (default 3). Target: <= 1 s, no connection attempt, one DAG per table (and one
capture DAG per slot group: the cdc tables without a slot of their own are in group "default").
The same is reported for a cold process (airflow not yet imported) for information.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from child import ChildFailed, child_entry, print_child_failure, run_child
from env import REPO, bench_env
from report import line, machine_note, verdict

TARGET_S = 1.0


def registry_yaml(n: int, duckdb_path: str) -> str:
    out = [
        "source:",
        "  conn_id: pg_source",
        "destination:",
        "  type: duckdb",
        f"  credentials: {duckdb_path}",
        "  dataset: replica",
        "defaults:",
        "  mode: cdc",
        '  schedule: "*/5 * * * *"',
        "  deletes: hard",
        "  max_batch_changes: 100000",
        "tables:",
    ]
    for i in range(n):
        schema = "sales" if i % 7 == 0 else "public"
        out.append(f"  - table: {schema}.table_{i:05d}")
        kind = i % 10
        if kind == 8:
            out += ["    mode: full_refresh", '    schedule: "@daily"']
        elif kind == 9:
            out += [
                "    mode: incremental",
                "    cursor_column: updated_at",
                "    cursor_lookback: 5 minutes",
                '    schedule: "@hourly"',
            ]
        else:
            out.append("    primary_key: [id]")
            if kind == 1:
                out.append("    columns: [id, customer_id, total, updated_at]")
            if kind == 2:
                out.append("    deletes: soft")
            if kind == 3:
                out.append("    verify: true")
            if kind == 4:
                out += [f"    slot: custom_slot_{i}", f"    destination_table: renamed_{i}"]
    return "\n".join(out) + "\n"


def in_child(payload: dict) -> dict:
    import socket

    attempts: list[str] = []
    real_connect, real_connect_ex = socket.socket.connect, socket.socket.connect_ex

    def guard(name):
        def blocked(self, address, *a, **k):
            attempts.append(f"{name}({address!r})")
            raise OSError(f"bench: {name} to {address!r} during DAG parsing")

        return blocked

    socket.socket.connect = guard("connect")
    socket.socket.connect_ex = guard("connect_ex")
    warm_s = 0.0
    if payload["warm"]:
        t0 = time.perf_counter()
        import airflow.sdk  # noqa: F401
        from airflow.sdk import DAG  # noqa: F401

        warm_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    from airflow_pg_replication import build_dags

    t1 = time.perf_counter()
    dags = build_dags(payload["path"])
    t2 = time.perf_counter()
    again = build_dags(payload["path"])  # everything imported now: pure registry + DAG construction
    t3 = time.perf_counter()
    assert len(again) == len(dags)
    prof_text = ""
    if payload.get("profile"):
        import cProfile
        import io
        import pstats

        prof = cProfile.Profile()
        prof.enable()
        build_dags(payload["path"])
        prof.disable()
        buf = io.StringIO()
        pstats.Stats(prof, stream=buf).sort_stats("cumulative").print_stats(25)
        prof_text = buf.getvalue()
    socket.socket.connect, socket.socket.connect_ex = real_connect, real_connect_ex
    broken = sorted(d for d, dag in dags.items() if "registry_error" in (dag.tags or set()))
    tasks = sum(len(dag.tasks) for dag in dags.values())
    heavy = sorted(m for m in ("dlt", "pyarrow", "duckdb", "psycopg", "psycopg2") if m in sys.modules)
    return {
        "import_s": t1 - t0,
        "build_s": t2 - t1,
        "total_s": t2 - t0,
        "preimport_s": warm_s,
        "rebuild_s": t3 - t2,
        "profile": prof_text,
        "dags": len(dags),
        "table_dags": sum(1 for d in dags if "__capture__" not in d),  # the others: a slot group's capture
        "tasks": tasks,
        "broken": broken[:5],
        "n_broken": len(broken),
        "socket_attempts": attempts[:5],
        "n_socket_attempts": len(attempts),
        "heavy_modules": heavy,
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tables", type=int, default=500, help="tables in the registry (default 500)")
    ap.add_argument("--runs", type=int, default=3, help="fresh processes per mode; the best counts (default 3)")
    ap.add_argument("--profile", action="store_true", help="cProfile one warm build_dags (modules imported)")
    ap.add_argument("--strict", action="store_true", help="exit 1 when the time target is missed")
    args = ap.parse_args()

    with bench_env() as tmp:
        path = tmp / "tables.yaml"
        path.write_text(registry_yaml(args.tables, str(tmp / "warehouse.duckdb")))
        results = {}
        try:
            for mode in ("warm", "cold"):
                runs = [
                    run_child(
                        Path(__file__),
                        {"path": str(path), "warm": mode == "warm", "profile": args.profile and mode == "warm"},
                        workdir=tmp,
                        what=f"build_dags ({mode})",
                    )
                    for _ in range(args.runs)
                ]
                results[mode] = min(runs, key=lambda r: r.result["total_s"])
        except ChildFailed as exc:
            print_child_failure(exc)
            return 1

    w, c = results["warm"].result, results["cold"].result
    ok_sockets = w["n_socket_attempts"] == 0 and c["n_socket_attempts"] == 0
    ok_dags = w["table_dags"] == args.tables and w["n_broken"] == 0
    ok_time = w["total_s"] <= TARGET_S
    print(f"registry parse benchmark: {args.tables} tables, best of {args.runs} fresh processes")
    line(
        "DAGs built (broken entries)",
        f"{w['dags']} ({w['n_broken']})  {'OK' if ok_dags else 'MISMATCH'}   {w['tasks']:,} tasks; "
        f"{w['table_dags']} of a table, {w['dags'] - w['table_dags']} of a slot group's capture",
    )
    line(
        "parse time, airflow.sdk preloaded (<= 1 s)",
        f"{w['total_s']:.3f} s  {verdict(ok_time)}   "
        f"(import provider {w['import_s']:.3f} s + build_dags {w['build_s']:.3f} s)",
    )
    line(
        "parse time, cold process (information)",
        f"{c['total_s']:.3f} s   (import incl. airflow {c['import_s']:.3f} s + build_dags {c['build_s']:.3f} s)",
    )
    line(
        "build_dags again in the same process",
        f"{w['rebuild_s']:.3f} s (all imports done: registry validation + DAG construction only)",
    )
    line("airflow.sdk preload in the warm runs", f"{w['preimport_s']:.3f} s (not counted)")
    line(
        "socket connect attempts while parsing",
        f"{w['n_socket_attempts'] + c['n_socket_attempts']}  "
        f"{'OK' if ok_sockets else 'FAIL: ' + ', '.join(w['socket_attempts'] + c['socket_attempts'])}",
    )
    line("heavy modules imported by parsing", ", ".join(w["heavy_modules"]) or "none")
    if w["n_broken"]:
        line("broken DAGs (first)", ", ".join(w["broken"]))
    overall = ok_sockets and ok_dags and ok_time
    line("overall", verdict(overall))
    print(f"  machine: {machine_note()}")
    if args.profile:
        print("\ncProfile of one build_dags call with everything imported (top 25 cumulative):")
        print(
            "\n".join(
                ln.replace(str(REPO) + "/", "").replace(".venv/lib/python3.11/site-packages/", "")
                for ln in w["profile"].splitlines()
                if ln.strip()
            )
        )
    if not (ok_sockets and ok_dags):
        return 1
    return 1 if (args.strict and not overall) else 0


if __name__ == "__main__":
    if "--_child" in sys.argv:
        child_entry(in_child)
    sys.exit(main())
