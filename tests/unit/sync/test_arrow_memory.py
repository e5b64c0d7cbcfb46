"""Arrow's memory pool: jemalloc for a task, unless the environment chose one."""

from __future__ import annotations

import os
import subprocess
import sys

CODE = (
    "import pyarrow as pa; from airflow_pg_replication.sync.arrow_memory import use_jemalloc; "
    "use_jemalloc(); print(pa.default_memory_pool().backend_name)"
)


def _pool_after(env: dict) -> str:
    """The default pool after use_jemalloc() in a fresh interpreter (the choice is per process)."""
    out = subprocess.run([sys.executable, "-c", CODE], env=env, capture_output=True, text=True, check=True)
    return out.stdout.strip()


def test_jemalloc_becomes_the_default_pool() -> None:
    # Linux wheels of pyarrow include jemalloc; where a build has none, use_jemalloc() is a no-op
    env = {k: v for k, v in os.environ.items() if k != "ARROW_DEFAULT_MEMORY_POOL"}
    assert _pool_after(env) == "jemalloc"


def test_a_pool_chosen_in_the_environment_is_kept() -> None:
    assert _pool_after({**os.environ, "ARROW_DEFAULT_MEMORY_POOL": "system"}) == "system"
