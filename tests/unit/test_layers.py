"""The package's layers read bottom to top: a module imports only from its own layer or the layers below.

Every import counts, a lazy one inside a function or one under ``TYPE_CHECKING`` too. Nothing
below the Airflow shells imports Airflow, and no runtime module imports the test bed.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "airflow_pg_replication"

#: Bottom to top. A key is a module or folder under the package; the first matching prefix wins.
LAYERS: list[tuple[str, ...]] = [
    ("errors", "replica_columns", "table_state", "phase_timing"),
    ("source",),
    ("changes",),
    ("changelog",),
    ("reconcile",),
    ("destination",),
    ("sync",),
    ("registry",),
    ("hooks", "triggers", "sensors", "operators", "dag_factory"),
]
SHELLS = len(LAYERS) - 1
TEST_BED = "testing"


def _part(module: str) -> str:
    """The first component under the package: 'source' for airflow_pg_replication.source.catalog."""
    return module.split(".")[1] if module.count(".") else ""


def _layer(module: str) -> int | None:
    part = _part(module)
    for level, names in enumerate(LAYERS):
        if part in names:
            return level
    return None


def _module_name(path: Path) -> str:
    rel = path.relative_to(PACKAGE.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _imports(path: Path) -> list[tuple[int, str]]:
    """(line, imported module) for every import in the file, however deep in a function."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.append((node.lineno, node.module))
            if node.module == "airflow_pg_replication":  # from airflow_pg_replication import x
                found += [(node.lineno, f"airflow_pg_replication.{alias.name}") for alias in node.names]
    return found


MODULES = sorted(p for p in PACKAGE.rglob("*.py") if "__pycache__" not in p.parts)


def test_every_runtime_module_has_a_layer() -> None:
    homeless = [
        _module_name(p)
        for p in MODULES
        if _module_name(p) != "airflow_pg_replication"
        and _part(_module_name(p)) != TEST_BED
        and _layer(_module_name(p)) is None
    ]
    assert not homeless, f"modules outside every layer of tests/unit/test_layers.py: {homeless}"


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(PACKAGE.parent)))
def test_imports_run_down_the_layers(path: Path) -> None:
    name = _module_name(path)
    if name == "airflow_pg_replication" or _part(name) == TEST_BED:
        return  # the package face (lazy public names) and the test bed may reach any layer
    own = _layer(name)
    wrong = []
    for line, imported in _imports(path):
        if imported.startswith("airflow_pg_replication."):
            if _part(imported) == TEST_BED:
                wrong.append(f"line {line}: {imported} is the test bed, not runtime code")
            elif (target := _layer(imported)) is not None and target > own:
                wrong.append(
                    f"line {line}: {imported} is a higher layer ({LAYERS[target][0]}/ above {LAYERS[own][0]}/)"
                )
        elif (imported == "airflow" or imported.startswith("airflow.")) and own < SHELLS:
            wrong.append(
                f"line {line}: {imported}: only hooks/, triggers/, sensors/, operators/ and "
                "dag_factory.py import Airflow"
            )
    assert not wrong, f"{name} imports against the layers:\n" + "\n".join(wrong)
