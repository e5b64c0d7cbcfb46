"""docker-compose.yaml: a valid compose file with a logical-replication PostgreSQL and Airflow wired to it."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
COMPOSE = REPO / "docker-compose.yaml"


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load(COMPOSE.read_text())


def _command_text(service: dict) -> str:
    command = service.get("command", "")
    return " ".join(command) if isinstance(command, list) else str(command)


def _environment(service: dict) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        return dict(item.split("=", 1) if "=" in item else (item, "") for item in env)
    return {k: "" if v is None else str(v) for k, v in env.items()}


def _volume_pairs(service: dict) -> list[tuple[str, str]]:
    pairs = []
    for vol in service.get("volumes") or []:
        if isinstance(vol, dict):
            pairs.append((str(vol.get("source", "")), str(vol.get("target", ""))))
        else:
            parts = str(vol).split(":")
            pairs.append((parts[0], parts[1] if len(parts) > 1 else ""))
    return pairs


def _airflow_service(compose: dict) -> dict:
    assert "airflow" in compose["services"], "no 'airflow' service in docker-compose.yaml"
    return compose["services"]["airflow"]


def test_postgres_runs_with_logical_wal(compose: dict) -> None:
    pg = compose["services"]["postgres"]
    assert str(pg["image"]).startswith("postgres:15")
    assert "wal_level=logical" in _command_text(pg)


def test_postgres_init_sql_creates_customers(compose: dict) -> None:
    pg = compose["services"]["postgres"]
    inits = [(src, dst) for src, dst in _volume_pairs(pg) if dst.startswith("/docker-entrypoint-initdb.d")]
    assert inits, "postgres has no init script mounted in /docker-entrypoint-initdb.d"
    for src, _ in inits:
        path = (REPO / src).resolve()
        assert path.is_file(), f"init script {src} does not exist"
        text = path.read_text().lower()
        assert "create table public.customers" in text and "insert into public.customers" in text


def test_airflow_service_mounts_dags_and_sets_source_connection(compose: dict) -> None:
    airflow = _airflow_service(compose)
    assert "standalone" in _command_text(airflow)
    mounts = dict(_volume_pairs(airflow))
    assert mounts.get("./dags") == "/opt/airflow/dags", f"./dags is not mounted at /opt/airflow/dags: {mounts}"
    env = _environment(airflow)
    conn = env.get("AIRFLOW_CONN_PG_SOURCE", "")
    assert conn.startswith(("postgresql://", "postgres://")), "AIRFLOW_CONN_PG_SOURCE is not set to a postgres URI"
    assert "@postgres:5432/" in conn, "AIRFLOW_CONN_PG_SOURCE must point at the postgres service"


def test_airflow_image_has_the_package(compose: dict) -> None:
    airflow = _airflow_service(compose)
    build = airflow.get("build")
    if build:
        dockerfile = (
            REPO
            / (build.get("context", ".") if isinstance(build, dict) else build)
            / (build.get("dockerfile", "Dockerfile") if isinstance(build, dict) else "Dockerfile")
        )
        text = dockerfile.read_text()
        assert "apache/airflow:3." in text
        assert "pip install" in text and "/opt/airflow-pg-replication" in text
    else:
        assert str(airflow["image"]).startswith("apache/airflow:3.")
        assert "/opt/airflow-pg-replication" in _environment(airflow).get("_PIP_ADDITIONAL_REQUIREMENTS", "")


def _compose_command() -> list[str] | None:
    if shutil.which("docker-compose"):
        return ["docker-compose"]
    if shutil.which("docker"):
        probe = subprocess.run(["docker", "compose", "version"], capture_output=True, text=True)
        if probe.returncode == 0:
            return ["docker", "compose"]
    return None


def test_compose_config_is_valid() -> None:
    command = _compose_command()
    if command is None:
        pytest.skip(
            "neither docker-compose nor the docker compose plugin is installed (Debian: apt-get install docker-compose)"
        )
    result = subprocess.run(
        [*command, "-f", str(COMPOSE), "config", "-q"],
        capture_output=True,
        text=True,
        cwd=REPO,
        stdin=subprocess.DEVNULL,
        timeout=120,
    )
    assert result.returncode == 0, f"{' '.join(command)} config -q failed:\n{result.stdout}{result.stderr}"
