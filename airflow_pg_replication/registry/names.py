"""Identifier rules and the names derived from a table: slot, publication, destination table, DAG id."""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass

NAME_RULE = "[A-Za-z_][A-Za-z0-9_$]*"
DEFAULT_SCHEMA = "public"
MAX_IDENTIFIER_BYTES = 63  # PostgreSQL's NAMEDATALEN - 1
DAG_ID_PREFIX = "pg_replication"

_NAME_RE = re.compile(NAME_RULE)
_NOT_SLOT_CHAR_RE = re.compile(r"[^a-z0-9_]")
_NOT_DAG_ID_CHAR_RE = re.compile(r"[^A-Za-z0-9_.-]")
_HASH_LENGTH = 8


def is_valid_name(name: object) -> bool:
    """Return True when ``name`` is a string matching ``[A-Za-z_][A-Za-z0-9_$]*``."""
    return isinstance(name, str) and _NAME_RE.fullmatch(name) is not None


def check_name(name: object, what: str = "name") -> str:
    """Return ``name`` unchanged if valid, else raise ValueError naming it and the rule."""
    if not is_valid_name(name):
        raise ValueError(
            f"invalid {what} {name!r}: it must match {NAME_RULE} "
            "(letters, digits, '_' and '$', not starting with a digit; no spaces, dots, quotes or ';')"
        )
    return name  # type: ignore[return-value]


def parse_table_name(text: str) -> tuple[str, str]:
    """Split ``schema.table`` (or a bare ``table``, meaning schema ``public``) into its parts."""
    if not isinstance(text, str):
        raise ValueError(f"invalid table name {text!r}: expected text like 'schema.table' or 'table'")
    parts = text.split(".")
    if len(parts) == 1:
        return DEFAULT_SCHEMA, check_name(parts[0], "table name")
    if len(parts) == 2:
        return check_name(parts[0], "schema name"), check_name(parts[1], "table name")
    raise ValueError(
        f"invalid table name {text!r}: expected 'schema.table' or 'table' with at most one dot; "
        f"each part must match {NAME_RULE}"
    )


def _bounded_identifier(prefix: str, schema: str, table: str) -> str:
    """``<prefix>_<schema>_<table>`` sanitized to ``[a-z0-9_]``, hashed down to 63 bytes if long."""
    name = _NOT_SLOT_CHAR_RE.sub("_", f"{prefix}_{schema}_{table}".lower())
    if len(name) <= MAX_IDENTIFIER_BYTES:
        return name
    digest = hashlib.sha1(f"{schema}.{table}".encode()).hexdigest()[:_HASH_LENGTH]
    return f"{name[: MAX_IDENTIFIER_BYTES - _HASH_LENGTH - 1]}_{digest}"


def slot_name(schema: str, table: str) -> str:
    """Default replication slot name: ``pgrepl_<schema>_<table>``, lower case, at most 63 bytes."""
    return _bounded_identifier("pgrepl", schema, table)


def group_slot_name(group: str) -> str:
    """A slot group's default slot (and publication) name: ``pgrepl_<group>``, at most 63 bytes."""
    name = _NOT_SLOT_CHAR_RE.sub("_", f"pgrepl_{group}".lower())
    if len(name) <= MAX_IDENTIFIER_BYTES:
        return name
    digest = hashlib.sha1(group.encode()).hexdigest()[:_HASH_LENGTH]
    return f"{name[: MAX_IDENTIFIER_BYTES - _HASH_LENGTH - 1]}_{digest}"


def capture_dag_id(group: str) -> str:
    """The DAG id of a slot group's capture: ``pg_replication__capture__<group>``."""
    return f"{DAG_ID_PREFIX}__capture__{group}"


def publication_name(schema: str, table: str) -> str:
    """Default publication name; the same text as the default slot name."""
    return _bounded_identifier("pgrepl", schema, table)


def default_destination_table(schema: str, table: str) -> str:
    """Destination table name: ``table`` for schema public, else ``<schema>__<table>``."""
    return table if schema == DEFAULT_SCHEMA else f"{schema}__{table}"


def dag_id(schema: str, table: str) -> str:
    """DAG id ``pg_replication__<schema>__<table>``; '$' (not allowed by Airflow) becomes '_'."""
    return _NOT_DAG_ID_CHAR_RE.sub("_", f"{DAG_ID_PREFIX}__{schema}__{table}")


@dataclass(frozen=True)
class TableNames:
    """Every name derived from one registry table: the one place the registry's naming rules are applied."""

    schema: str
    table: str
    slot: str
    publication: str
    destination_table: str
    dag_id: str

    @property
    def qualified_name(self) -> str:
        return f"{self.schema}.{self.table}"


def table_names(table: str, *, slot: str | None = None, destination_table: str | None = None) -> TableNames:
    """The names of ``table`` (``schema.table`` or a bare table, meaning schema public).

    ``slot`` (a dedicated slot, or the table's slot group's slot) names both the slot and the
    publication; without it both are ``pgrepl_<schema>_<table>``, the per-table name a table had
    before slot groups. ValueError for a name that breaks :data:`NAME_RULE`.
    """
    schema, name = parse_table_name(table)
    return TableNames(
        schema,
        name,
        slot or slot_name(schema, name),
        slot or publication_name(schema, name),
        destination_table or default_destination_table(schema, name),
        dag_id(schema, name),
    )
