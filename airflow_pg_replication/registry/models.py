"""The YAML table registry (design.md, Contract 1): validated models and the loaders that read and check it."""

from __future__ import annotations

import datetime
import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    NonNegativeInt,
    PositiveInt,
    RootModel,
    model_validator,
)

from airflow_pg_replication.destination.duckdb.default_file import default_duckdb_path
from airflow_pg_replication.registry import names as naming
from airflow_pg_replication.registry.diagnostics import (  # the error types are part of this module's API
    CREDENTIALS_HINT,
    KeyedProblems,
    RegistryError,
    RegistryIssue,
    TableError,
    check_document,
)

DEFAULT_SCHEDULE = "*/5 * * * *"
DEFAULT_GROUP = "default"
DEFAULT_CAPTURE_SCHEDULE = "* * * * *"
SCHEDULE_PRESETS = ("@once", "@continuous", "@hourly", "@daily", "@weekly", "@monthly", "@quarterly", "@yearly")
_INTERVAL_RE = re.compile(r"\s*(\d+(?:\.\d+)?)\s+(second|minute|hour|day)s?\s*")
_URI_WITH_PASSWORD_RE = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://[^/@:\s]*:[^/@\s]+@")
_SECRET_PARAM_RE = re.compile(r"(^|[?&;\s])\w*(password|passwd|pwd|token|secret)\w*=", re.I)


def parse_interval(text: str) -> datetime.timedelta:
    """Turn ``"<number> <unit>"`` (unit second(s), minute(s), hour(s) or day(s)) into a timedelta."""
    match = _INTERVAL_RE.fullmatch(text) if isinstance(text, str) else None
    if match is None:
        raise ValueError(
            f"invalid interval {text!r}: expected '<number> <unit>' with unit second(s), minute(s), "
            "hour(s) or day(s), e.g. '5 minutes'"
        )
    return datetime.timedelta(**{match[2] + "s": float(match[1])})


def default_change_log() -> str:
    """Where a slot group's change log lives unless it says: ``$AIRFLOW_HOME/pg_replication/changes``."""
    return os.path.abspath(os.path.join(os.environ.get("AIRFLOW_HOME") or ".", "pg_replication", "changes"))


def _check_schedule(value: str | None) -> None:
    if value is None or value in SCHEDULE_PRESETS:
        return
    try:
        from croniter import croniter  # ships with Airflow; pure, no I/O
    except ImportError:  # pragma: no cover
        croniter = None
    if len(value.split()) != 5 or (croniter is not None and not croniter.is_valid(value)):
        raise ValueError(
            f"invalid schedule {value!r}: use a 5-field cron expression like '*/5 * * * *', "
            f"a preset ({', '.join(SCHEDULE_PRESETS)}), or null for manual runs only"
        )


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
SlotName = Annotated[
    str,
    _passes(
        partial(_check_pattern, r"[a-z0-9_]{1,63}", "slot name", "[a-z0-9_]{1,63} (PostgreSQL's rule for slot names)")
    ),
]
GroupName = Annotated[
    str,
    _passes(
        partial(
            _check_pattern,
            r"[a-z0-9_]{1,63}",
            "slot group name",
            "[a-z0-9_]{1,63} (lower case letters, digits and '_')",
        )
    ),
]
DestinationType = Annotated[
    str,
    _passes(
        partial(
            _check_pattern,
            r"[A-Za-z_][A-Za-z0-9_.]*",
            "destination type",
            "[A-Za-z_][A-Za-z0-9_.]* (a dlt destination name)",
        )
    ),
]


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
    #: type filesystem only: ``delta`` (a Delta table per source table, merged in place) or ``parquet``
    #: (plain Parquet files, an append-only change layout read through its current-state query).
    table_format: Literal["delta", "parquet"] | None = None

    @model_validator(mode="before")
    @classmethod
    def _default_duckdb_file(cls, data: Any) -> Any:
        if (
            isinstance(data, dict)
            and data.get("type", "duckdb") == "duckdb"
            and data.get("credentials") is None
            and data.get("conn_id") is None
        ):
            return {**data, "credentials": default_duckdb_path()}
        return data

    @model_validator(mode="after")
    def _exclusive(self) -> DestinationConfig:
        # type filesystem: credentials is the lake's folder or URL, conn_id the Airflow connection with its keys
        if self.credentials is not None and self.conn_id is not None and self.type != "filesystem":
            raise KeyedProblems([("conn_id", "set either credentials or conn_id, not both")])
        if self.type == "filesystem" and self.table_format is None:
            raise KeyedProblems(
                [
                    (
                        "table_format",
                        "destination type filesystem needs table_format: delta (a Delta table per source table, "
                        "merged in place) or parquet (plain Parquet files, an append-only change layout)",
                    )
                ]
            )
        if self.type != "filesystem" and self.table_format is not None:
            raise KeyedProblems(
                [("table_format", f"table_format is for destination type filesystem only, not {self.type!r}")]
            )
        return self

    def as_dict(self) -> dict[str, Any]:
        """The ``destination`` mapping operators take: type, credentials, dataset (and conn_id, table_format when
        set)."""
        result: dict[str, Any] = {"type": self.type, "credentials": self.credentials, "dataset": self.dataset}
        if self.conn_id is not None:
            result["conn_id"] = self.conn_id
        if self.table_format is not None:
            result["table_format"] = self.table_format
        return result


class SlotGroupConfig(_Model):
    """One slot group (``slot_groups:``): its slot and publication, its capture DAG's schedule, its change log."""

    slot: SlotName | None = None  # default pgrepl_<group>; also the publication's name
    schedule: Annotated[str | None, _passes(_check_schedule)] = DEFAULT_CAPTURE_SCHEDULE
    change_log: Annotated[str, _passes(_check_no_password)] | None = None  # a local path or an object-storage URL
    change_log_conn_id: ConnId | None = None  # Airflow connection for an object-storage change_log


@dataclass(frozen=True)
class ResolvedSlotGroup:
    """A slot group with every default filled in and every name derived."""

    name: str
    slot: str
    publication: str
    schedule: str | None
    change_log: str
    change_log_conn_id: str | None
    dag_id: str


def resolve_slot_group(name: str, config: SlotGroupConfig | None) -> ResolvedSlotGroup:
    """The group ``name`` as ``config`` (or every default) says."""
    config = config or SlotGroupConfig()
    slot = config.slot or naming.group_slot_name(name)
    return ResolvedSlotGroup(
        name,
        slot,
        slot,
        config.schedule,
        config.change_log or default_change_log(),
        config.change_log_conn_id,
        naming.capture_dag_id(name),
    )


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
    deferrable: bool | None = None  # None: Airflow's [operators] default_deferrable
    slot_group: GroupName = DEFAULT_GROUP  # CDC tables without a dedicated ``slot`` share their group's slot
    snapshot_parallelism: PositiveInt | None = None  # connections reading a big table's page ranges (None: auto)

    @model_validator(mode="after")
    def _cross_checks(self) -> TableDefaults:
        if problems := self._problems():
            raise KeyedProblems(problems)
        return self

    def _problems(self) -> list[tuple[str, str]]:
        if self.min_lag_bytes > self.max_lag_bytes:
            return [("min_lag_bytes", f"{self.min_lag_bytes} is above max_lag_bytes ({self.max_lag_bytes})")]
        return []


class TableConfig(TableDefaults):
    """One table's effective configuration: the defaults merged with the table's own keys.

    A CDC table shares its slot group's slot unless it names a dedicated ``slot`` (see :meth:`Registry.names_of`).
    """

    table: Annotated[str, _passes(naming.parse_table_name)]
    primary_key: ColumnList | None = None
    columns: ColumnList | None = None
    cursor_column: ColumnName | None = None
    cursor_lookback: Annotated[str, _passes(parse_interval)] | None = None
    destination_table: Annotated[str, _named("destination table name")] | None = None
    slot: SlotName | None = None  # a dedicated slot (and publication) of this table alone: a group of one

    @classmethod
    def merged_with_defaults(cls, defaults: dict[str, Any], entry: dict[str, Any]) -> dict[str, Any]:
        """The entry with ``defaults`` filled in; a table's own ``slot`` overrides a ``slot_group`` from defaults."""
        if "slot" in entry:
            defaults = {k: v for k, v in defaults.items() if k != "slot_group"}
        return {**defaults, **entry}

    def _problems(self) -> list[tuple[str, str]]:
        problems = super()._problems()
        if self.slot is not None and "slot_group" in self.model_fields_set:
            problems.append(
                (
                    "slot_group",
                    "a table with its own `slot` (a dedicated slot) is in no slot group; "
                    "remove slot_group, or remove slot to share the group's slot",
                )
            )
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

    @property
    def names(self) -> naming.TableNames:
        """Every name derived from this entry (see :func:`.names.table_names`)."""
        return naming.table_names(self.table, slot=self.slot, destination_table=self.destination_table)

    schema_name = property(lambda self: self.names.schema, doc="Schema ('public' if bare).")
    table_name = property(lambda self: self.names.table, doc="Table name, no schema.")
    qualified_name = property(lambda self: self.names.qualified_name, doc="'schema.table'.")
    dag_id = property(lambda self: self.names.dag_id, doc="The table's DAG id.")
    destination_table_name = property(lambda self: self.names.destination_table, doc="Its destination table.")

    @property
    def group(self) -> str | None:
        """The slot group a CDC table shares a slot with; None for a dedicated slot or a table without CDC."""
        return self.slot_group if self.mode == "cdc" and self.slot is None else None

    def cursor_lookback_delta(self) -> datetime.timedelta:
        """``cursor_lookback`` as a timedelta; zero when unset."""
        return parse_interval(self.cursor_lookback) if self.cursor_lookback else datetime.timedelta(0)


def _groups_of(tables: dict[int, TableConfig], listed: dict[str, SlotGroupConfig]) -> dict[str, ResolvedSlotGroup]:
    """Every slot group a table uses or the registry lists, resolved."""
    names = {cfg.group for cfg in tables.values() if cfg.group is not None} | set(listed)
    return {name: resolve_slot_group(name, listed.get(name)) for name in sorted(names)}


def _duplicates(tables: dict[int, TableConfig], sections: dict[str, Any]) -> list[tuple[int, str, str]]:
    """(index, key, message) for each table reusing an earlier table's name, destination, slot or DAG id.

    A slot group's slot and capture DAG id count as claimed before any table: a dedicated slot may
    not be a group's slot, nor two groups share one.
    """
    listed = sections.get("slot_groups") or {}
    listed = listed.root if isinstance(listed, SlotGroupsConfig) else listed
    groups = _groups_of(tables, listed)
    seen: dict[tuple[str, str], int] = {}
    group_claims: dict[tuple[str, str], str] = {}
    problems = []
    first_of = {cfg.group: i for i, cfg in reversed(list(tables.items())) if cfg.group is not None}
    for name, group in groups.items():
        for kind, value in (("replication slot", group.slot), ("DAG id", group.dag_id)):
            if (kind, value) in group_claims and name in first_of:
                problems.append(
                    (
                        first_of[name],
                        "slot_group",
                        f"{kind} {value!r} of slot group {name!r} is already "
                        f"slot group {group_claims[(kind, value)]!r}'s; set a distinct slot in slot_groups",
                    )
                )
            group_claims.setdefault((kind, value), name)
    for index, cfg in tables.items():
        claims = [
            ("table", "table", cfg.qualified_name, "list each table once"),
            (
                "destination table",
                "destination_table" if cfg.destination_table else "table",
                cfg.destination_table_name.lower(),
                "set a different destination_table (case is ignored)",
            ),
            ("DAG id", "table", cfg.dag_id, "these two table names cannot both be replicated"),
        ]
        if cfg.slot is not None:
            claims.append(
                ("replication slot", "slot", cfg.slot, "set a distinct slot (a dedicated slot is one table's)")
            )
        group_clash = next((c for c in claims if c[::2] in group_claims), None)
        if group_clash is not None:
            kind, key, value, _ = group_clash
            problems.append(
                (
                    index,
                    key,
                    f"{kind} {value!r} is slot group {group_claims[group_clash[::2]]!r}'s; set a distinct name",
                )
            )
            continue
        clash = next((claim for claim in claims if claim[::2] in seen), None)
        if clash is None:
            seen.update({claim[::2]: index for claim in claims})
            continue
        kind, key, value, fix = clash
        other = seen[(kind, value)]
        problems.append(
            (index, key, f"{kind} {value!r} is already used by tables[{other}] ({tables[other].qualified_name}); {fix}")
        )
    return problems


class Registry(_Model):
    """The whole registry; ``tables`` hold effective configs (dict entries get ``defaults`` merged in)."""

    source: SourceConfig = Field(default_factory=SourceConfig)
    destination: DestinationConfig = Field(default_factory=DestinationConfig)
    defaults: TableDefaults = Field(default_factory=TableDefaults)
    slot_groups: dict[GroupName, SlotGroupConfig] = Field(default_factory=dict)
    tables: list[TableConfig] = Field(default_factory=list)

    @model_validator(mode="before")
    @classmethod
    def _merge_defaults(cls, data: Any) -> Any:
        if not (isinstance(data, dict) and isinstance(data.get("tables"), list)):
            return data
        defaults = data.get("defaults") or {}
        if isinstance(defaults, TableDefaults):
            defaults = defaults.model_dump(exclude_unset=True)
        tables = [TableConfig.merged_with_defaults(defaults, t) if isinstance(t, dict) else t for t in data["tables"]]
        return {**data, "tables": tables}

    @model_validator(mode="after")
    def _unique(self) -> Registry:
        if problems := _duplicates(dict(enumerate(self.tables)), {"slot_groups": self.slot_groups}):
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

    def slot_group(self, name: str) -> ResolvedSlotGroup:
        """The slot group ``name``, as ``slot_groups:`` lists it or with every default."""
        return resolve_slot_group(name, self.slot_groups.get(name))

    def groups_in_use(self) -> dict[str, tuple[ResolvedSlotGroup, list[TableConfig]]]:
        """Each slot group that has a CDC table, with its tables in file order (each gets a capture DAG)."""
        out: dict[str, tuple[ResolvedSlotGroup, list[TableConfig]]] = {}
        for cfg in self.tables:
            if cfg.group is not None:
                out.setdefault(cfg.group, (self.slot_group(cfg.group), []))[1].append(cfg)
        return out

    def names_of(self, cfg: TableConfig) -> naming.TableNames:
        """The table's names, its slot and publication being its group's when it is in one."""
        slot = cfg.slot or (self.slot_group(cfg.group).slot if cfg.group is not None else None)
        return naming.table_names(cfg.table, slot=slot, destination_table=cfg.destination_table)


class SlotGroupsConfig(RootModel[dict[GroupName, SlotGroupConfig]]):
    """The ``slot_groups:`` block: group name -> its settings."""


_SECTIONS: dict[str, type[BaseModel]] = {
    "source": SourceConfig,
    "destination": DestinationConfig,
    "defaults": TableDefaults,
    "slot_groups": SlotGroupsConfig,
}


def _check(text: str, file: str) -> tuple[Registry | None, list[RegistryIssue], list[TableError]]:
    """Validate everything: the registry of valid tables (None if a section is broken), issues, broken tables."""
    sections, tables, issues, table_errors = check_document(text, file, _SECTIONS, TableConfig, _duplicates)
    if sections is None:
        return None, issues, table_errors
    groups = sections.pop("slot_groups")
    return Registry(**sections, slot_groups=groups.root if groups is not None else {}, tables=tables), [], table_errors


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
