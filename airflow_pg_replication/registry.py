"""The YAML table registry (design.md, Contract 1): validated models, errors that name file, line and key."""

from __future__ import annotations

import datetime
import difflib
import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, NonNegativeInt, PositiveInt, ValidationError
from pydantic import model_validator

from airflow_pg_replication import naming

DEFAULT_SCHEDULE = "*/5 * * * *"
SCHEDULE_PRESETS = ("@once", "@continuous", "@hourly", "@daily", "@weekly", "@monthly", "@quarterly", "@yearly")
CREDENTIALS_HINT = ("credentials must not be written in the registry; store them in an Airflow connection and "
                    "reference it with conn_id, or pass them through an environment variable")
_INTERVAL_RE = re.compile(r"\s*(\d+(?:\.\d+)?)\s+(second|minute|hour|day)s?\s*")
_URI_WITH_PASSWORD_RE = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://[^/@:\s]*:[^/@\s]+@")
_SECRET_PARAM_RE = re.compile(r"(^|[?&;\s])\w*(password|passwd|pwd|token|secret)\w*=", re.I)
_SECRET_KEY_RE = re.compile(r"passw(or)?d|secret|token|api_?key|private_?key|access_?key|^(pass|pwd)$", re.I)


def default_duckdb_path() -> str:
    """Absolute path of the default DuckDB file: ``$AIRFLOW_HOME/pg_replication.duckdb``, else in the cwd."""
    return os.path.abspath(os.path.join(os.environ.get("AIRFLOW_HOME") or ".", "pg_replication.duckdb"))


def parse_interval(text: str) -> datetime.timedelta:
    """Turn ``"<number> <unit>"`` (unit second(s), minute(s), hour(s) or day(s)) into a timedelta."""
    match = _INTERVAL_RE.fullmatch(text) if isinstance(text, str) else None
    if match is None:
        raise ValueError(f"invalid interval {text!r}: expected '<number> <unit>' with unit second(s), minute(s), "
                         "hour(s) or day(s), e.g. '5 minutes'")
    return datetime.timedelta(**{match[2] + "s": float(match[1])})


def _check_schedule(value: str | None) -> None:
    if value is None or value in SCHEDULE_PRESETS:
        return
    try:
        from croniter import croniter  # ships with Airflow; pure, no I/O
    except ImportError:  # pragma: no cover
        croniter = None
    if len(value.split()) != 5 or (croniter is not None and not croniter.is_valid(value)):
        raise ValueError(f"invalid schedule {value!r}: use a 5-field cron expression like '*/5 * * * *', "
                         f"a preset ({', '.join(SCHEDULE_PRESETS)}), or null for manual runs only")


def _check_no_password(value: str) -> None:
    if _URI_WITH_PASSWORD_RE.match(value.strip()) or _SECRET_PARAM_RE.search(value):
        raise ValueError(f"this value contains a password or token; {CREDENTIALS_HINT}")


def _check_columns(values: list[str]) -> None:
    if not values:
        raise ValueError("the list is empty; list at least one column or remove the key")
    if repeated := sorted({v for v in values if values.count(v) > 1}):
        raise ValueError(f"{', '.join(map(repr, repeated))} listed more than once; list each column once")


def _check_pattern(pattern: str, what: str, rule: str, value: str) -> None:
    if not re.fullmatch(pattern, value):
        raise ValueError(f"invalid {what} {value!r}: it must match {rule}")


def _passes(check: Callable[[Any], Any]) -> AfterValidator:
    """A validator that runs ``check`` (which raises ValueError on bad input) and keeps the value."""
    return AfterValidator(lambda value: (check(value), value)[1])


def _named(what: str) -> AfterValidator:
    return _passes(partial(naming.check_name, what=what))


ColumnName = Annotated[str, _named("column name")]
ColumnList = Annotated[list[ColumnName], _passes(_check_columns)]
ConnId = Annotated[str, _passes(partial(_check_pattern, r"[A-Za-z0-9_.-]+", "conn_id", "[A-Za-z0-9_.-]+"))]
SlotName = Annotated[str, _passes(partial(_check_pattern, r"[a-z0-9_]{1,63}", "slot name",
                                          "[a-z0-9_]{1,63} (PostgreSQL's rule for slot names)"))]
DestinationType = Annotated[str, _passes(partial(_check_pattern, r"[A-Za-z_][A-Za-z0-9_.]*", "destination type",
                                                 "[A-Za-z_][A-Za-z0-9_.]* (a dlt destination name)"))]


class _Problems(ValueError):
    """Cross-field problems, each tied to the key it is about (so errors can point at that key's line)."""

    def __init__(self, problems: list[tuple[str, str]]):
        super().__init__("; ".join(f"{key}: {message}" for key, message in problems))
        self.problems = problems


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class SourceConfig(_Model):
    """The source PostgreSQL, as an Airflow connection id."""

    conn_id: ConnId = "pg_source"


class DestinationConfig(_Model):
    """A dlt destination; duckdb without credentials or conn_id gets :func:`default_duckdb_path`."""

    type: DestinationType = "duckdb"
    credentials: Annotated[str, _passes(_check_no_password)] | None = None
    conn_id: ConnId | None = None
    dataset: Annotated[str, _named("dataset name")] = "replica"

    @model_validator(mode="before")
    @classmethod
    def _default_duckdb_file(cls, data: Any) -> Any:
        if (isinstance(data, dict) and data.get("type", "duckdb") == "duckdb"
                and data.get("credentials") is None and data.get("conn_id") is None):
            return {**data, "credentials": default_duckdb_path()}
        return data

    @model_validator(mode="after")
    def _exclusive(self) -> DestinationConfig:
        if self.credentials is not None and self.conn_id is not None:
            raise _Problems([("conn_id", "set either credentials or conn_id, not both")])
        return self

    def as_dict(self) -> dict[str, Any]:
        """The ``destination`` mapping operators take: type, credentials, dataset (and conn_id when set)."""
        result = {"type": self.type, "credentials": self.credentials, "dataset": self.dataset}
        return {**result, "conn_id": self.conn_id} if self.conn_id is not None else result


class TableDefaults(_Model):
    """Every per-table knob with its default; ``poke_interval`` is the lag sensor's poke period in seconds."""

    mode: Literal["cdc", "full_refresh", "incremental"] = "cdc"
    schedule: Annotated[str | None, _passes(_check_schedule)] = DEFAULT_SCHEDULE
    deletes: Literal["hard", "soft"] = "hard"
    max_batch_changes: PositiveInt = 100_000
    min_lag_bytes: NonNegativeInt = 1
    wait_timeout: PositiveInt = 240
    max_lag_bytes: PositiveInt = 10 * 1024**3
    on_slot_lost: Literal["fail", "resync"] = "fail"
    verify: bool = False
    poke_interval: PositiveInt = 30

    @model_validator(mode="after")
    def _cross_checks(self) -> TableDefaults:
        if problems := self._problems():
            raise _Problems(problems)
        return self

    def _problems(self) -> list[tuple[str, str]]:
        if self.min_lag_bytes > self.max_lag_bytes:
            return [("min_lag_bytes", f"{self.min_lag_bytes} is above max_lag_bytes ({self.max_lag_bytes})")]
        return []


class TableConfig(TableDefaults):
    """One table's effective configuration: the defaults merged with the table's own keys.

    ``publication_name`` is ``slot`` when a slot is given (one name for both), else the derived default.
    """

    table: Annotated[str, _passes(naming.parse_table_name)]
    primary_key: ColumnList | None = None
    columns: ColumnList | None = None
    cursor_column: ColumnName | None = None
    cursor_lookback: Annotated[str, _passes(parse_interval)] | None = None
    destination_table: Annotated[str, _named("destination table name")] | None = None
    slot: SlotName | None = None

    def _problems(self) -> list[tuple[str, str]]:
        problems = super()._problems()
        if self.mode == "incremental" and self.cursor_column is None:
            problems.append(("mode", "mode incremental needs cursor_column (e.g. cursor_column: updated_at)"))
        for key in ("cursor_column", "cursor_lookback"):
            if self.mode != "incremental" and getattr(self, key) is not None:
                problems.append((key, f"only used with mode incremental (mode is {self.mode!r}); remove it"))
        if self.columns is not None:
            if missing := [c for c in self.primary_key or [] if c not in self.columns]:
                problems.append(("primary_key", f"{', '.join(map(repr, missing))} not in columns; add to columns"))
            if self.cursor_column is not None and self.cursor_column not in self.columns:
                problems.append(("cursor_column", f"{self.cursor_column!r} is not in columns; add it to columns"))
        return problems

    schema_name = property(lambda self: naming.parse_table_name(self.table)[0], doc="Schema ('public' if bare).")
    table_name = property(lambda self: naming.parse_table_name(self.table)[1], doc="Table name, no schema.")
    qualified_name = property(lambda self: f"{self.schema_name}.{self.table_name}", doc="'schema.table'.")
    slot_name = property(lambda self: self.slot or naming.slot_name(self.schema_name, self.table_name))
    publication_name = property(lambda self: self.slot or naming.publication_name(self.schema_name, self.table_name))
    dag_id = property(lambda self: naming.dag_id(self.schema_name, self.table_name))
    destination_table_name = property(
        lambda self: self.destination_table or naming.default_destination_table(self.schema_name, self.table_name))

    def cursor_lookback_delta(self) -> datetime.timedelta:
        """``cursor_lookback`` as a timedelta; zero when unset."""
        return parse_interval(self.cursor_lookback) if self.cursor_lookback else datetime.timedelta(0)


def _duplicates(tables: dict[int, TableConfig]) -> list[tuple[int, str, str]]:
    """(index, key, message) for each table reusing an earlier table's name, destination, slot or DAG id."""
    seen: dict[tuple[str, str], int] = {}
    problems = []
    for index, cfg in tables.items():
        claims = [
            ("table", "table", cfg.qualified_name, "list each table once"),
            ("destination table", "destination_table" if cfg.destination_table else "table",
             cfg.destination_table_name.lower(), "set a different destination_table (case is ignored)"),
            ("replication slot", "slot" if cfg.slot else "table", cfg.slot_name, "set a distinct slot"),
            ("DAG id", "table", cfg.dag_id, "these two table names cannot both be replicated"),
        ]
        clash = next((claim for claim in claims if claim[::2] in seen), None)
        if clash is None:
            seen.update({claim[::2]: index for claim in claims})
            continue
        kind, key, value, fix = clash
        other = seen[(kind, value)]
        problems.append((index, key, f"{kind} {value!r} is already used by tables[{other}] "
                                     f"({tables[other].qualified_name}); {fix}"))
    return problems


class Registry(_Model):
    """The whole registry; ``tables`` hold effective configs (dict entries get ``defaults`` merged in)."""

    source: SourceConfig = Field(default_factory=SourceConfig)
    destination: DestinationConfig = Field(default_factory=DestinationConfig)
    defaults: TableDefaults = Field(default_factory=TableDefaults)
    tables: list[TableConfig] = Field(default_factory=list)

    @model_validator(mode="before")
    @classmethod
    def _merge_defaults(cls, data: Any) -> Any:
        if not (isinstance(data, dict) and isinstance(data.get("tables"), list)):
            return data
        defaults = data.get("defaults") or {}
        if isinstance(defaults, TableDefaults):
            defaults = defaults.model_dump(exclude_unset=True)
        return {**data, "tables": [{**defaults, **t} if isinstance(t, dict) else t for t in data["tables"]]}

    @model_validator(mode="after")
    def _unique(self) -> Registry:
        if problems := _duplicates(dict(enumerate(self.tables))):
            raise ValueError("; ".join(f"tables[{i}].{key}: {message}" for i, key, message in problems))
        return self

    def table(self, name: str) -> TableConfig:
        """The table named ``schema.table`` (bare: schema public); KeyError if it is not registered."""
        wanted = "{}.{}".format(*naming.parse_table_name(name))
        for cfg in self.tables:
            if cfg.qualified_name == wanted:
                return cfg
        raise KeyError(f"table {wanted!r} is not in the registry")

    def by_dag_id(self) -> dict[str, TableConfig]:
        return {cfg.dag_id: cfg for cfg in self.tables}


@dataclass(frozen=True)
class RegistryIssue:
    """One problem in a registry file: where it is (file, 1-based line, key path) and what is wrong."""

    file: str
    line: int | None
    key: str
    message: str

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}" if self.line else self.file
        return f"{where}: {self.key}: {self.message}" if self.key else f"{where}: {self.message}"


class RegistryError(ValueError):
    """The registry is invalid; ``errors`` lists every problem found, sorted by line."""

    def __init__(self, errors: list[RegistryIssue]):
        self.errors = sorted(errors, key=lambda e: e.line or 0)
        lines = [str(e) for e in self.errors]
        super().__init__(lines[0] if len(lines) == 1 else f"{len(lines)} problems:\n" + "\n".join(lines))


class TableError(RegistryError):
    """A broken ``tables[index]`` entry; ``table`` and ``dag_id`` are None when its name is unusable."""

    def __init__(self, index: int, table: str | None, dag_id: str | None, errors: list[RegistryIssue]):
        super().__init__(errors)
        self.index, self.table, self.dag_id = index, table, dag_id


_KeyPath = tuple  # e.g. ("tables", 1, "mode"), shown as tables[1].mode
_SECTIONS = {"source": SourceConfig, "destination": DestinationConfig, "defaults": TableDefaults}
_ROOT_KEYS = [*_SECTIONS, "tables"]


def _key_path(path: _KeyPath) -> str:
    return "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in path).lstrip(".")


def _line(node: yaml.Node, path: _KeyPath) -> int:
    """1-based line of the deepest node on ``path`` that exists (the key's line, for a mapping key)."""
    line = node.start_mark.line + 1
    for part in path:
        if isinstance(node, yaml.MappingNode):
            key, node = next(((k, v) for k, v in node.value if k.value == str(part)), (None, None))
            if key is None:
                break
            line = key.start_mark.line + 1
        elif isinstance(node, yaml.SequenceNode) and isinstance(part, int) and part < len(node.value):
            node = node.value[part]
            line = node.start_mark.line + 1
        else:
            break
    return line


def _compose(text: str, file: str) -> tuple[dict, yaml.Node]:
    """The document as data and as a node tree (for line numbers); RegistryError if it is not a mapping."""
    loader = yaml.SafeLoader(text)
    try:
        node = loader.get_single_node()
        data = loader.construct_document(node) if node is not None else None
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        hint = '; quote the value, e.g. schedule: "@hourly"' if "cannot start any token" in str(exc.problem) else ""
        detail = ": ".join(filter(None, [exc.context, exc.problem]))
        line = mark.line + 1 if mark else None
        raise RegistryError([RegistryIssue(file, line, "", f"invalid YAML: {detail}{hint}")]) from None
    except yaml.YAMLError as exc:
        raise RegistryError([RegistryIssue(file, None, "", f"invalid YAML: {exc}")]) from None
    finally:
        loader.dispose()
    if node is None:
        message = "the registry is empty; it needs at least a 'tables:' list"
        raise RegistryError([RegistryIssue(file, None, "", message)])
    if not isinstance(data, dict):
        message = f"the registry must be a mapping with keys {', '.join(_ROOT_KEYS)}; found a {type(data).__name__}"
        raise RegistryError([RegistryIssue(file, node.start_mark.line + 1, "", message)])
    return data, node


def _unknown_key(key: Any, valid: list[str]) -> str:
    close = difflib.get_close_matches(str(key), valid, n=1)
    return f"unknown key; did you mean {close[0]!r}?" if close else f"unknown key; valid keys: {', '.join(valid)}"


def _validate(model: type[_Model], data: Any) -> tuple[Any, list[tuple[_KeyPath, str]]]:
    """Validate strictly (YAML gives real types): the model, or None and the (key path, message) problems."""
    try:
        return model.model_validate(data, strict=True), []
    except ValidationError as exc:
        errors = exc.errors(include_url=False)
    problems: list[tuple[_KeyPath, str]] = []
    for err in errors:
        loc, kind, value, cause = tuple(err["loc"]), err["type"], err.get("input"), err.get("ctx", {}).get("error")
        if isinstance(cause, _Problems):
            problems += [(loc + (key,), message) for key, message in cause.problems]
        elif kind == "extra_forbidden":
            problems.append((loc, _unknown_key(loc[-1], list(model.model_fields))))
        elif kind == "missing":
            problems.append((loc, "required key is missing"))
        elif kind == "value_error":
            problems.append((loc, err["msg"].removeprefix("Value error, ")))
        elif kind == "string_type" and isinstance(value, (bool, int, float)):
            problems.append((loc, f"expected text, got {value!r}; put it in quotes"))
        else:
            got = f" (got {value!r})" if isinstance(value, (str, int, float, bool, type(None))) else ""
            problems.append((loc, f"{err['msg']}{got}"))
    return None, problems


def _secret_paths(data: Any, path: _KeyPath = ()) -> list[_KeyPath]:
    """Key paths of keys that look like they hold a secret (password, token, ...), at any depth."""
    if isinstance(data, dict):
        return [p for k, v in data.items() for p in
                ([path + (k,)] if isinstance(k, str) and _SECRET_KEY_RE.search(k) else _secret_paths(v, path + (k,)))]
    if isinstance(data, list):
        return [p for i, v in enumerate(data) for p in _secret_paths(v, path + (i,))]
    return []


def _repeated_keys(node: yaml.Node, path: _KeyPath = ()) -> list[tuple[_KeyPath, int, str]]:
    """Keys written twice in one mapping (YAML would silently keep the last)."""
    if isinstance(node, yaml.SequenceNode):
        return [p for i, item in enumerate(node.value) for p in _repeated_keys(item, path + (i,))]
    found, seen = [], set()
    for key, value in node.value if isinstance(node, yaml.MappingNode) else []:
        if key.value in seen:
            found.append((path + (key.value,), key.start_mark.line + 1, "key appears twice; keep only one"))
        seen.add(key.value)
        found += _repeated_keys(value, path + (key.value,))
    return found


def _table_index(path: _KeyPath) -> int | None:
    """The index of the table entry a key path is inside, or None for registry-level paths."""
    return path[1] if len(path) > 1 and path[0] == "tables" and isinstance(path[1], int) else None


def _check(text: str, file: str) -> tuple[Registry | None, list[RegistryIssue], list[TableError]]:
    """Validate everything: the registry of valid tables (None if a section is broken), issues, broken tables."""
    data, root = _compose(text, file)
    secrets = _secret_paths(data)
    problems: list[tuple[_KeyPath, int | None, str]] = [(p, None, CREDENTIALS_HINT) for p in secrets]
    problems += _repeated_keys(root)

    def add(prefix: _KeyPath, found: list[tuple[_KeyPath, str]]) -> None:
        problems.extend((prefix + p, None, m) for p, m in found
                        if not any((prefix + p)[: len(s)] == s for s in secrets))

    add((), [((key,), _unknown_key(key, _ROOT_KEYS)) for key in data if key not in _ROOT_KEYS])
    sections = {}
    for key, model in _SECTIONS.items():
        sections[key], found = _validate(model, {} if data.get(key) is None else data[key])
        add((key,), found)
    bad_defaults = {p[1] for p, _, _ in problems if p[:1] == ("defaults",) and len(p) > 1}
    raw_defaults = data["defaults"] if isinstance(data.get("defaults"), dict) else {}
    defaults = {k: v for k, v in raw_defaults.items() if k not in bad_defaults}

    items = data.get("tables")
    if not isinstance(items, list):
        what = "required key is missing" if "tables" not in data else "is empty" if items is None else "not a list"
        add(("tables",), [((), f"{what}; it must be a list of entries like '- table: public.customers'")])
        items = []
    configs: dict[int, TableConfig] = {}
    for index, item in enumerate(items):
        if not isinstance(item, dict):
            add(("tables", index), [((), "each entry must be a mapping like '- table: public.customers'")])
            continue
        cfg, found = _validate(TableConfig, {**defaults, **item})
        inherited = defaults.keys() - item.keys()
        add(("tables", index), [(p, f"{m} ({p[0]} is set in defaults)" if p and p[0] in inherited else m)
                                for p, m in found])
        if cfg is not None:
            configs[index] = cfg
    broken = {_table_index(p) for p, _, _ in problems} - {None}
    for index, key, message in _duplicates({i: cfg for i, cfg in configs.items() if i not in broken}):
        problems.append((("tables", index, key), None, message))
        broken.add(index)

    issues = [RegistryIssue(file, line or _line(root, p), _key_path(p), m) for p, line, m in problems]
    registry_issues = [issue for issue, (p, _, _) in zip(issues, problems) if _table_index(p) is None]
    table_errors = []
    for index in sorted(broken):
        name = items[index].get("table") if isinstance(items[index], dict) else None
        name = name if isinstance(name, str) else None
        try:
            dag_id = naming.dag_id(*naming.parse_table_name(name))
        except ValueError:
            dag_id = None
        found = [issue for issue, (p, _, _) in zip(issues, problems) if _table_index(p) == index]
        table_errors.append(TableError(index, name, dag_id, found))
    if registry_issues or None in sections.values():
        return None, registry_issues, table_errors
    return Registry(**sections, tables=[configs[i] for i in sorted(configs) if i not in broken]), [], table_errors


def parse_registry(text: str, path: str = "<string>") -> Registry:
    """Parse and validate registry YAML; raise RegistryError listing every problem."""
    registry, issues, table_errors = _check(text, str(path))
    if registry is None or table_errors:
        raise RegistryError(issues + [issue for error in table_errors for issue in error.errors])
    return registry


def parse_registry_tolerant(text: str, path: str = "<string>") -> tuple[Registry, list[TableError]]:
    """Like parse_registry, but broken table entries come back as TableErrors (one per entry), not raised."""
    registry, issues, table_errors = _check(text, str(path))
    if registry is None:
        raise RegistryError(issues + [issue for error in table_errors for issue in error.errors])
    return registry, table_errors


def _read(path: str | os.PathLike) -> str:
    try:
        return Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise RegistryError([RegistryIssue(str(path), None, "", f"cannot read the registry file: {exc}")]) from None


def load_registry(path: str | os.PathLike) -> Registry:
    """Read and validate the registry file at ``path`` (no database or network access)."""
    return parse_registry(_read(path), str(path))


def load_registry_tolerant(path: str | os.PathLike) -> tuple[Registry, list[TableError]]:
    """For the DAG factory: the registry of the valid tables, plus one TableError per broken table entry."""
    return parse_registry_tolerant(_read(path), str(path))
