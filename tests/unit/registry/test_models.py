"""Unit tests for the YAML table registry (design.md, Contract 1)."""

from __future__ import annotations

import datetime
import os
import socket
import textwrap

import pydantic
import pytest

from airflow_pg_replication.registry.models import (
    DestinationConfig,
    Registry,
    RegistryError,
    SourceConfig,
    TableConfig,
    TableDefaults,
    TableError,
    default_duckdb_path,
    load_registry,
    load_registry_tolerant,
    parse_interval,
    parse_registry,
    parse_registry_tolerant,
)

# The example of design.md, Contract 1, verbatim.
DESIGN_EXAMPLE = """\
source:
  conn_id: pg_source              # Airflow connection id of the source PostgreSQL
destination:
  type: duckdb                    # a dlt destination name; duckdb is the default
  credentials: /data/warehouse.duckdb   # duckdb: file path. Others: dlt credentials, or
  # conn_id: warehouse            #   an Airflow connection id instead of credentials
  dataset: replica                # destination schema / dataset name
defaults:                         # every key here may be overridden per table
  mode: cdc                       # cdc | full_refresh | incremental
  schedule: "*/5 * * * *"         # cron, preset (@hourly) or null (manual only)
  deletes: hard                   # hard | soft (soft keeps the row, sets _pg_deleted_at)
  max_batch_changes: 100000       # CDC: at most this many changes per run, whole transactions
  min_lag_bytes: 1                # sensor: fire when at least this much of the table's own
                                  #   change data waits (WAL of other tables never counts)
  wait_timeout: 240               # sensor: seconds to wait before skipping this run
  max_lag_bytes: 10737418240      # sensor and apply: fail loudly past this (10 GiB)
  on_slot_lost: fail              # fail | resync (drop the dead slot, take a fresh snapshot)
  verify: false                   # add a reconciliation task after each load
  deferrable: true                # sensor waits in the triggerer (default: Airflow's
                                  #   [operators] default_deferrable)
  slot_group: default             # CDC tables share their group's slot (see "Table groups")
slot_groups:                      # optional; a group used by a table and not listed here gets
  default:                        #   every default below
    slot: pgrepl_default          # default: pgrepl_<group>; also the publication name
    schedule: "* * * * *"         # the group's capture DAG (default: every minute)
    change_log: /data/pg_replication/changes   # where captured changes wait to be applied:
                                  #   a local path or an object-storage URL (s3://…, gs://…);
                                  #   default $AIRFLOW_HOME/pg_replication/changes
    # change_log_conn_id: aws_default   # Airflow connection for an object-storage change_log
tables:
  - table: public.customers       # schema-qualified; a bare name means schema public
    primary_key: [customer_id]    # optional: read from the source catalog at run time
  - table: public.orders
    columns: [id, customer_id, total, updated_at]   # optional include list
  - table: sales.events
    mode: incremental
    cursor_column: updated_at     # required for incremental
    cursor_lookback: 5 minutes    # optional: re-read this window behind the mark
    destination_table: sales_events   # optional; default below
  - table: public.audit_log
    slot: audit_slot              # optional: a dedicated slot of its own (a group of one);
                                  #   without it a CDC table is in its slot_group
"""

DEFAULT_KNOBS = {
    "mode": "cdc",
    "schedule": "*/5 * * * *",
    "deletes": "hard",
    "max_batch_changes": 100000,
    "min_lag_bytes": 1,
    "wait_timeout": 240,
    "max_lag_bytes": 10737418240,
    "on_slot_lost": "fail",
    "verify": False,
    "poke_interval": 30,
    "deferrable": None,
    "slot_group": "default",
    "snapshot_parallelism": None,
}


def yaml_text(text: str) -> str:
    return textwrap.dedent(text).lstrip("\n")


def line_of(text: str, needle: str, occurrence: int = 1) -> int:
    """1-based line number of the n-th line containing ``needle``."""
    hits = [number for number, line in enumerate(text.splitlines(), start=1) if needle in line]
    return hits[occurrence - 1]


def errors_of(text: str, path: str = "tables.yaml") -> RegistryError:
    with pytest.raises(RegistryError) as excinfo:
        parse_registry(text, path)
    return excinfo.value


def only_error(text: str, path: str = "tables.yaml") -> str:
    error = errors_of(text, path)
    assert len(error.errors) == 1, str(error)
    return str(error)


# --- the design example and defaults -------------------------------------------------------------


def test_design_example_parses_with_documented_values():
    registry = parse_registry(DESIGN_EXAMPLE, "tables.yaml")

    assert registry.source == SourceConfig(conn_id="pg_source")
    assert registry.destination.as_dict() == {
        "type": "duckdb",
        "credentials": "/data/warehouse.duckdb",
        "dataset": "replica",
    }
    assert registry.defaults.model_dump() == {**DEFAULT_KNOBS, "deferrable": True}
    assert [t.qualified_name for t in registry.tables] == [
        "public.customers",
        "public.orders",
        "sales.events",
        "public.audit_log",
    ]

    customers, orders, events, audit_log = registry.tables
    assert {k: getattr(customers, k) for k in DEFAULT_KNOBS} == {**DEFAULT_KNOBS, "deferrable": True}
    assert customers.primary_key == ["customer_id"]
    assert customers.columns is None
    assert (customers.schema_name, customers.table_name) == ("public", "customers")
    assert customers.destination_table_name == "customers"
    assert customers.group == "default"
    assert registry.names_of(customers).slot == registry.names_of(customers).publication == "pgrepl_default"
    assert customers.dag_id == "pg_replication__public__customers"

    assert orders.columns == ["id", "customer_id", "total", "updated_at"]
    assert orders.primary_key is None
    assert orders.mode == "cdc"
    assert orders.destination_table_name == "orders"
    assert registry.names_of(orders).slot == "pgrepl_default"
    assert orders.dag_id == "pg_replication__public__orders"

    assert events.mode == "incremental"
    assert events.cursor_column == "updated_at"
    assert events.cursor_lookback == "5 minutes"
    assert events.cursor_lookback_delta() == datetime.timedelta(minutes=5)
    assert (events.schema_name, events.table_name) == ("sales", "events")
    assert events.qualified_name == "sales.events"
    assert events.destination_table_name == "sales_events"
    assert events.group is None  # not a CDC table: no slot at all
    assert events.dag_id == "pg_replication__sales__events"
    assert events.schedule == "*/5 * * * *"
    assert events.deletes == "hard"

    assert audit_log.group is None and audit_log.slot == "audit_slot"  # a dedicated slot: a group of one
    assert registry.names_of(audit_log).slot == registry.names_of(audit_log).publication == "audit_slot"
    group = registry.slot_group("default")
    assert (group.slot, group.publication, group.schedule) == ("pgrepl_default", "pgrepl_default", "* * * * *")
    assert group.change_log == "/data/pg_replication/changes" and group.dag_id == "pg_replication__capture__default"
    assert list(registry.groups_in_use()) == ["default"]
    assert [t.qualified_name for t in registry.groups_in_use()["default"][1]] == ["public.customers", "public.orders"]


def test_minimal_registry_uses_every_default(monkeypatch, tmp_path):
    monkeypatch.setenv("AIRFLOW_HOME", str(tmp_path))
    registry = parse_registry("tables:\n  - table: customers\n")
    assert registry.source.conn_id == "pg_source"
    assert registry.destination.as_dict() == {
        "type": "duckdb",
        "credentials": str(tmp_path / "pg_replication.duckdb"),
        "dataset": "replica",
    }
    (table,) = registry.tables
    assert {k: getattr(table, k) for k in DEFAULT_KNOBS} == DEFAULT_KNOBS
    assert table.qualified_name == "public.customers"
    assert table.destination_table_name == "customers"
    assert table.cursor_lookback_delta() == datetime.timedelta(0)
    for key in ("primary_key", "columns", "cursor_column", "cursor_lookback", "destination_table", "slot"):
        assert getattr(table, key) is None


def test_default_duckdb_path_without_airflow_home(monkeypatch, tmp_path):
    monkeypatch.delenv("AIRFLOW_HOME", raising=False)
    monkeypatch.chdir(tmp_path)
    assert default_duckdb_path() == str(tmp_path / "pg_replication.duckdb")
    assert os.path.isabs(DestinationConfig().credentials)
    assert DestinationConfig().credentials == str(tmp_path / "pg_replication.duckdb")


def test_default_duckdb_path_with_airflow_home(monkeypatch, tmp_path):
    monkeypatch.setenv("AIRFLOW_HOME", str(tmp_path / "home"))
    assert default_duckdb_path() == str(tmp_path / "home" / "pg_replication.duckdb")


def test_empty_sections_mean_defaults():
    registry = parse_registry("source:\ndestination:\ndefaults:\ntables:\n  - table: t\n")
    assert registry.source.conn_id == "pg_source"
    assert registry.defaults == TableDefaults()


def test_empty_tables_list_is_allowed():
    assert parse_registry("tables: []\n").tables == []


def test_table_keys_override_defaults():
    text = yaml_text("""
        defaults:
          mode: full_refresh
          schedule: "@hourly"
          deletes: soft
          verify: true
          wait_timeout: 60
        tables:
          - table: a
          - table: b
            mode: cdc
            schedule: null
            verify: false
            max_batch_changes: 5
            poke_interval: 5
            on_slot_lost: resync
        """)
    a, b = parse_registry(text).tables
    assert (a.mode, a.schedule, a.deletes, a.verify, a.wait_timeout) == ("full_refresh", "@hourly", "soft", True, 60)
    assert (b.mode, b.schedule, b.deletes, b.verify, b.wait_timeout) == ("cdc", None, "soft", False, 60)
    assert (b.max_batch_changes, b.poke_interval, b.on_slot_lost) == (5, 5, "resync")


def test_schedule_null_in_defaults_means_manual_only():
    registry = parse_registry("defaults:\n  schedule: null\ntables:\n  - table: a\n")
    assert registry.tables[0].schedule is None


@pytest.mark.parametrize("schedule", ["@hourly", "@daily", "@once", "@continuous", "0 3 * * MON-FRI", "*/15 * * * *"])
def test_valid_schedules(schedule):
    registry = parse_registry(f'tables:\n  - table: a\n    schedule: "{schedule}"\n')
    assert registry.tables[0].schedule == schedule


@pytest.mark.parametrize("schedule", ["every 5 minutes", "* * *", "61 * * * *", "@sometimes", "0 0 1 * * *"])
def test_invalid_schedules(schedule):
    text = f'tables:\n  - table: a\n    schedule: "{schedule}"\n'
    message = only_error(text)
    assert message.startswith("tables.yaml:3: tables[0].schedule: invalid schedule")
    assert "5-field cron" in message


def test_destination_with_conn_id():
    registry = parse_registry("destination:\n  type: postgres\n  conn_id: warehouse\n  dataset: dw\ntables: []\n")
    assert registry.destination.as_dict() == {
        "type": "postgres",
        "credentials": None,
        "dataset": "dw",
        "conn_id": "warehouse",
    }


def test_duckdb_with_conn_id_gets_no_default_file():
    assert DestinationConfig(conn_id="w").credentials is None


def test_non_duckdb_destination_gets_no_default_credentials():
    assert DestinationConfig(type="bigquery").credentials is None


@pytest.mark.parametrize(
    "credentials", ["postgresql://loader@dw.example.com:5432/dw?sslmode=require", "/data/w.duckdb", "md:dw"]
)
def test_credentials_without_password_are_allowed(credentials):
    destination = DestinationConfig(type="postgres", credentials=credentials)
    assert destination.as_dict()["credentials"] == credentials


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("5 minutes", datetime.timedelta(minutes=5)),
        ("1 minute", datetime.timedelta(minutes=1)),
        ("30 seconds", datetime.timedelta(seconds=30)),
        ("1 second", datetime.timedelta(seconds=1)),
        ("2 hours", datetime.timedelta(hours=2)),
        ("1 hour", datetime.timedelta(hours=1)),
        ("1 day", datetime.timedelta(days=1)),
        ("3 days", datetime.timedelta(days=3)),
        ("1.5 hours", datetime.timedelta(minutes=90)),
        ("0 seconds", datetime.timedelta(0)),
    ],
)
def test_parse_interval(text, expected):
    assert parse_interval(text) == expected


@pytest.mark.parametrize("text", ["5", "minutes", "5minutes", "5 weeks", "-5 minutes", "five minutes", "", "5 min"])
def test_parse_interval_rejects_bad_text(text):
    with pytest.raises(ValueError, match=r"expected '<number> <unit>'"):
        parse_interval(text)


# --- errors name file, line and key --------------------------------------------------------------


def test_unknown_key_suggests_nearest_key_with_exact_line():
    text = DESIGN_EXAMPLE.replace("    primary_key: [customer_id]", "    primay_key: [customer_id]")
    line = line_of(text, "primay_key")
    message = only_error(text)
    assert message == f"tables.yaml:{line}: tables[0].primay_key: unknown key; did you mean 'primary_key'?"


def test_unknown_key_in_second_table():
    text = yaml_text("""
        tables:
          - table: a
          - table: b
            colums: [id]
        """)
    assert only_error(text) == "tables.yaml:4: tables[1].colums: unknown key; did you mean 'columns'?"


@pytest.mark.parametrize(
    ("section", "typo", "suggestion"),
    [("source", "conn", "conn_id"), ("destination", "datset", "dataset"), ("defaults", "mod", "mode")],
)
def test_unknown_key_in_sections(section, typo, suggestion):
    text = f"{section}:\n  {typo}: x\ntables: []\n"
    assert only_error(text) == f"tables.yaml:2: {section}.{typo}: unknown key; did you mean '{suggestion}'?"


def test_unknown_root_key():
    message = only_error("tabels:\n  - table: a\ntables: []\n")
    assert message == "tables.yaml:1: tabels: unknown key; did you mean 'tables'?"


def test_unknown_key_without_a_close_match_lists_valid_keys():
    message = only_error("source:\n  zzz: 1\ntables: []\n")
    assert message == "tables.yaml:2: source.zzz: unknown key; valid keys: conn_id"


def test_table_only_keys_are_not_allowed_in_defaults():
    message = only_error("defaults:\n  columns: [id]\ntables: []\n")
    assert message.startswith("tables.yaml:2: defaults.columns: unknown key")


def test_wrong_literal_value():
    text = DESIGN_EXAMPLE.replace("mode: cdc  ", "mode: cdcc ")
    message = only_error(text)
    assert message.startswith("tables.yaml:9: defaults.mode: ")
    assert "'cdc', 'full_refresh' or 'incremental'" in message
    assert "(got 'cdcc')" in message


@pytest.mark.parametrize(
    ("line", "key", "fragment"),
    [
        ("max_batch_changes: lots", "max_batch_changes", "valid integer"),
        ('max_batch_changes: "100"', "max_batch_changes", "valid integer"),
        ("max_batch_changes: 0", "max_batch_changes", "greater than 0"),
        ("wait_timeout: -1", "wait_timeout", "greater than 0"),
        ("min_lag_bytes: -1", "min_lag_bytes", "greater than or equal to 0"),
        ("max_lag_bytes: 1.5", "max_lag_bytes", "valid integer"),
        ("poke_interval: 0", "poke_interval", "greater than 0"),
        ('verify: "yes please"', "verify", "valid boolean"),
        ("deletes: purge", "deletes", "'hard' or 'soft'"),
        ("on_slot_lost: ignore", "on_slot_lost", "'fail' or 'resync'"),
        ("columns: id", "columns", "valid list"),
        ("primary_key: [id, id]", "primary_key", "'id' listed more than once"),
        ("columns: []", "columns", "the list is empty"),
    ],
)
def test_wrong_values_name_line_and_key(line, key, fragment):
    text = f"tables:\n  - table: a\n    {line}\n"
    message = only_error(text)
    assert message.startswith(f"tables.yaml:3: tables[0].{key}: ")
    assert fragment in message


def test_yaml_scalars_that_are_not_text_suggest_quotes():
    text = "tables:\n  - table: a\n    columns: [id, no]\n"  # YAML 1.1 reads `no` as false
    assert only_error(text) == "tables.yaml:3: tables[0].columns[1]: expected text, got False; put it in quotes"


def test_missing_table_key():
    text = yaml_text("""
        tables:
          - table: a
          - mode: cdc
        """)
    assert only_error(text) == "tables.yaml:3: tables[1].table: required key is missing"


def test_incremental_without_cursor_column():
    text = yaml_text("""
        tables:
          - table: sales.events
            mode: incremental
        """)
    message = only_error(text)
    assert message.startswith("tables.yaml:3: tables[0].mode: mode incremental needs cursor_column")


def test_incremental_from_defaults_without_cursor_column_points_at_the_table():
    text = "defaults:\n  mode: incremental\ntables:\n  - table: a\n"
    message = only_error(text)
    assert message.startswith("tables.yaml:4: tables[0].mode: mode incremental needs cursor_column")
    assert "(mode is set in defaults)" in message


@pytest.mark.parametrize("key", ["cursor_column: updated_at", "cursor_lookback: 5 minutes"])
def test_cursor_keys_only_for_incremental(key):
    text = f"tables:\n  - table: a\n    mode: cdc\n    {key}\n"
    message = only_error(text)
    assert message.startswith(f"tables.yaml:4: tables[0].{key.split(':')[0]}: only used with mode incremental")


def test_bad_cursor_lookback():
    text = "tables:\n  - table: a\n    mode: incremental\n    cursor_column: u\n    cursor_lookback: 5 mins\n"
    message = only_error(text)
    assert message.startswith("tables.yaml:5: tables[0].cursor_lookback: invalid interval '5 mins'")


def test_primary_key_must_be_among_columns():
    text = "tables:\n  - table: a\n    columns: [id, name]\n    primary_key: [id, tenant]\n"
    message = only_error(text)
    assert message.startswith("tables.yaml:4: tables[0].primary_key: 'tenant' not in columns")


def test_cursor_column_must_be_among_columns():
    text = yaml_text("""
        tables:
          - table: a
            mode: incremental
            columns: [id, name]
            cursor_column: updated_at
        """)
    message = only_error(text)
    assert message.startswith("tables.yaml:5: tables[0].cursor_column: 'updated_at' is not in columns")


@pytest.mark.parametrize(
    ("line", "key"),
    [
        ("table: my table", "tables[0].table"),
        ("table: 'public.x;drop'", "tables[0].table"),
        ("table: '\"Quoted\"'", "tables[0].table"),
        ("table: a.b.c", "tables[0].table"),
        ("columns: [id, 'first name']", "tables[0].columns[1]"),
        ("columns: [id, 'x;y']", "tables[0].columns[1]"),
        ('primary_key: ["it\'s"]', "tables[0].primary_key[0]"),
        ("destination_table: 'my table'", "tables[0].destination_table"),
        ("destination_table: x.y", "tables[0].destination_table"),
    ],
)
def test_bad_names_are_rejected(line, key):
    text = f"tables:\n  - {line}\n" if line.startswith("table:") else f"tables:\n  - table: a\n    {line}\n"
    message = only_error(text)
    expected_line = 2 if line.startswith("table:") else 3
    assert message.startswith(f"tables.yaml:{expected_line}: {key}: invalid ")
    assert "[A-Za-z_][A-Za-z0-9_$]*" in message


def test_bad_cursor_column_name():
    text = "tables:\n  - table: a\n    mode: incremental\n    cursor_column: 'updated at'\n"
    assert "tables.yaml:4: tables[0].cursor_column: invalid column name 'updated at'" in only_error(text)


@pytest.mark.parametrize("slot", ["Events_Slot", "events-slot", "x" * 64, "'a b'"])
def test_bad_slot_names(slot):
    message = only_error(f"tables:\n  - table: a\n    slot: {slot}\n")
    assert message.startswith("tables.yaml:3: tables[0].slot: invalid slot name")
    assert "[a-z0-9_]{1,63}" in message


def test_bad_dataset_name():
    message = only_error("destination:\n  dataset: my data\ntables: []\n")
    assert message.startswith("tables.yaml:2: destination.dataset: invalid dataset name 'my data'")


def test_min_lag_above_max_lag():
    message = only_error("defaults:\n  min_lag_bytes: 100\n  max_lag_bytes: 10\ntables: []\n")
    assert message == "tables.yaml:2: defaults.min_lag_bytes: 100 is above max_lag_bytes (10)"


def test_credentials_and_conn_id_are_exclusive():
    text = "destination:\n  type: postgres\n  credentials: postgresql://u@h/db\n  conn_id: dw\ntables: []\n"
    assert only_error(text) == "tables.yaml:4: destination.conn_id: set either credentials or conn_id, not both"


# --- duplicates ----------------------------------------------------------------------------------


def test_duplicate_tables():
    text = yaml_text("""
        tables:
          - table: customers
          - table: orders
          - table: public.customers
        """)
    message = only_error(text)
    assert message.startswith("tables.yaml:4: tables[2].table: table 'public.customers' is already used by tables[0]")


def test_duplicate_destination_tables():
    text = yaml_text("""
        tables:
          - table: sales.events
          - table: public.events_copy
            destination_table: sales__events
        """)
    message = only_error(text)
    assert message.startswith("tables.yaml:4: tables[1].destination_table: destination table 'sales__events' ")
    assert "tables[0] (sales.events)" in message


def test_destination_tables_differing_only_in_case_collide():
    text = "tables:\n  - table: a\n    destination_table: Orders\n  - table: b\n    destination_table: orders\n"
    assert only_error(text).startswith("tables.yaml:5: tables[1].destination_table: destination table 'orders'")


def test_duplicate_explicit_slots():
    text = yaml_text("""
        tables:
          - table: a
            slot: shared
          - table: b
            slot: shared
        """)
    message = only_error(text)
    assert message.startswith("tables.yaml:5: tables[1].slot: replication slot 'shared' is already used by tables[0]")


def test_tables_of_a_group_share_its_slot_and_dedicated_slots_are_one_tables():
    text = "tables:\n  - table: public.orders\n  - table: public.Orders\n    destination_table: orders_upper\n"
    registry = parse_registry(text)
    assert [registry.names_of(t).slot for t in registry.tables] == ["pgrepl_default", "pgrepl_default"]
    shared = text + "    slot: mine\n  - table: c\n    slot: mine\n"
    message = only_error(shared)
    assert message.startswith("tables.yaml:7: tables[2].slot: replication slot 'mine' is already used by tables[1]")
    assert "a dedicated slot is one table's" in message


def test_a_dedicated_slot_may_not_be_a_groups_slot():
    text = "tables:\n  - table: a\n  - table: b\n    slot: pgrepl_default\n"
    assert only_error(text).startswith(
        "tables.yaml:4: tables[1].slot: replication slot 'pgrepl_default' is slot group 'default''s"
    )


def test_duplicate_yaml_keys_are_reported():
    text = "tables:\n  - table: a\n    mode: cdc\n    mode: full_refresh\n"
    assert only_error(text) == "tables.yaml:4: tables[0].mode: key appears twice; keep only one"


# --- credentials never in YAML -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "line", "key"),
    [
        ("source:\n  conn_id: pg\n  password: hunter2\ntables: []\n", 3, "source.password"),
        ("destination:\n  type: postgres\n  password: x\ntables: []\n", 3, "destination.password"),
        ("tables:\n  - table: a\n    password: x\n", 3, "tables[0].password"),
        ("tables:\n  - table: a\n    db_passwd: x\n", 3, "tables[0].db_passwd"),
        ("defaults:\n  api_key: x\ntables: []\n", 2, "defaults.api_key"),
        ("destination:\n  secret: {a: 1}\ntables: []\n", 2, "destination.secret"),
        ("extra:\n  nested:\n    Password: x\ntables: []\n", 3, "extra.nested.Password"),
    ],
)
def test_password_keys_are_rejected(text, line, key):
    error = errors_of(text)
    matching = [e for e in error.errors if e.key == key]
    assert len(matching) == 1, str(error)
    assert matching[0].line == line
    assert "conn_id" in matching[0].message and "environment variable" in matching[0].message
    assert f"tables.yaml:{line}: {key}: credentials must not be written in the registry" in str(error)


@pytest.mark.parametrize(
    "credentials",
    [
        "postgresql://loader:s3cret@dw:5432/dw",
        "'md:dw?motherduck_token=s3cret'",
        "'host=dw user=loader password=s3cret'",
        "'postgresql://dw/db?sslmode=require&password=s3cret'",
    ],
)
def test_credentials_with_password_or_token_are_rejected(credentials):
    text = f"destination:\n  type: postgres\n  credentials: {credentials}\ntables: []\n"
    message = only_error(text)
    assert message.startswith("tables.yaml:3: destination.credentials: this value contains a password or token")
    assert "conn_id" in message and "environment variable" in message
    assert "s3cret" not in message


# --- broken files --------------------------------------------------------------------------------


def test_invalid_yaml_names_file_and_line():
    text = "tables:\n  - table: a\n    columns: [id, name\n  - table: b\n"
    message = only_error(text)
    assert message.startswith("tables.yaml:4: invalid YAML: ")


def test_unquoted_at_sign_suggests_quotes():
    message = only_error("tables:\n  - table: a\n    schedule: @hourly\n")
    assert message.startswith("tables.yaml:3: invalid YAML: ")
    assert 'quote the value, e.g. schedule: "@hourly"' in message


@pytest.mark.parametrize("text", ["", "\n", "# only a comment\n"])
def test_empty_file(text):
    assert only_error(text) == "tables.yaml: the registry is empty; it needs at least a 'tables:' list"


@pytest.mark.parametrize(("text", "kind"), [("- table: a\n", "list"), ("just text\n", "str"), ("42\n", "int")])
def test_root_must_be_a_mapping(text, kind):
    message = only_error(text)
    assert message.startswith("tables.yaml:1: the registry must be a mapping with keys source, destination")
    assert message.endswith(f"found a {kind}")


def test_missing_tables_key():
    message = only_error("source:\n  conn_id: pg\n")
    assert message.startswith("tables.yaml:1: tables: required key is missing")


def test_tables_not_a_list():
    message = only_error("tables:\n  table: a\n")
    assert message.startswith("tables.yaml:1: tables: not a list; it must be a list of entries")


def test_table_entry_not_a_mapping():
    message = only_error("tables:\n  - table: a\n  - public.orders\n")
    assert message.startswith("tables.yaml:3: tables[1]: each entry must be a mapping")


def test_all_errors_are_collected_and_sorted_by_line():
    text = yaml_text("""
        source:
          conn: pg
        defaults:
          mode: cdcc
        tables:
          - table: 'bad name'
          - table: ok
            primay_key: [id]
          - table: events
            mode: incremental
        """)
    error = errors_of(text)
    assert [(e.line, e.key) for e in error.errors] == [
        (2, "source.conn"),
        (4, "defaults.mode"),
        (6, "tables[0].table"),
        (8, "tables[1].primay_key"),
        (10, "tables[2].mode"),
    ]
    assert all(e.file == "tables.yaml" for e in error.errors)
    message = str(error)
    assert message.startswith("5 problems:\n")
    for e in error.errors:
        assert str(e) in message
    assert isinstance(error, ValueError)


# --- loading from files --------------------------------------------------------------------------


def test_load_registry_reads_the_file(tmp_path):
    path = tmp_path / "tables.yaml"
    path.write_text(DESIGN_EXAMPLE)
    registry = load_registry(path)
    assert len(registry.tables) == 4
    assert load_registry(str(path)) == registry


def test_load_registry_error_names_the_file(tmp_path):
    path = tmp_path / "tables.yaml"
    path.write_text("tables:\n  - table: a\n    mod: cdc\n")
    with pytest.raises(RegistryError) as excinfo:
        load_registry(path)
    assert str(excinfo.value) == f"{path}:3: tables[0].mod: unknown key; did you mean 'mode'?"
    assert excinfo.value.errors[0].file == str(path)


def test_load_registry_missing_file(tmp_path):
    path = tmp_path / "nope.yaml"
    with pytest.raises(RegistryError, match="cannot read the registry file"):
        load_registry(path)


# --- the tolerant loader for the DAG factory -----------------------------------------------------


TOLERANT_EXAMPLE = yaml_text("""
    tables:
      - table: public.customers
      - table: public.orders
        primay_key: [id]
      - table: sales.events
        mode: incremental
        cursor_column: updated_at
      - table: 'bad name'
      - public.loose_string
      - table: public.customers
    """)


def test_tolerant_loader_keeps_good_tables_and_reports_bad_ones(tmp_path):
    path = tmp_path / "tables.yaml"
    path.write_text(TOLERANT_EXAMPLE)
    registry, broken = load_registry_tolerant(path)

    assert isinstance(registry, Registry)
    assert [t.dag_id for t in registry.tables] == ["pg_replication__public__customers", "pg_replication__sales__events"]
    assert [(e.index, e.table, e.dag_id) for e in broken] == [
        (1, "public.orders", "pg_replication__public__orders"),
        (3, "bad name", None),
        (4, None, None),
        (5, "public.customers", "pg_replication__public__customers"),
    ]
    assert all(isinstance(e, TableError) and isinstance(e, RegistryError) for e in broken)
    assert str(broken[0]) == f"{path}:4: tables[1].primay_key: unknown key; did you mean 'primary_key'?"
    assert broken[1].errors[0].line == 8
    assert broken[2].errors[0].key == "tables[4]"
    assert "already used by tables[0]" in str(broken[3])


def test_tolerant_parser_with_no_broken_tables():
    registry, broken = parse_registry_tolerant(DESIGN_EXAMPLE)
    assert broken == []
    assert registry == parse_registry(DESIGN_EXAMPLE)


def test_strict_parser_reports_every_broken_table():
    error = errors_of(TOLERANT_EXAMPLE)
    assert [e.key for e in error.errors] == [
        "tables[1].primay_key",
        "tables[3].table",
        "tables[4]",
        "tables[5].table",
    ]


def test_tolerant_parser_still_raises_for_registry_level_errors():
    text = "destination:\n  tpye: duckdb\ntables:\n  - table: a\n  - table: 'b c'\n"
    with pytest.raises(RegistryError) as excinfo:
        parse_registry_tolerant(text, "tables.yaml")
    assert [(e.line, e.key) for e in excinfo.value.errors] == [(2, "destination.tpye"), (5, "tables[1].table")]


def test_tolerant_parser_raises_for_invalid_yaml():
    with pytest.raises(RegistryError, match="invalid YAML"):
        parse_registry_tolerant("tables: [\n", "tables.yaml")


# --- no I/O --------------------------------------------------------------------------------------


def test_parsing_opens_no_socket(monkeypatch, tmp_path):
    def no_network(*args, **kwargs):
        raise AssertionError("the registry must not touch the network")

    monkeypatch.setattr(socket, "socket", no_network)
    monkeypatch.setattr(socket, "create_connection", no_network)
    monkeypatch.setattr(socket, "getaddrinfo", no_network)
    path = tmp_path / "tables.yaml"
    path.write_text(DESIGN_EXAMPLE)
    assert len(load_registry(path).tables) == 4
    assert len(load_registry_tolerant(path)[0].tables) == 4
    with pytest.raises(RegistryError):
        parse_registry(DESIGN_EXAMPLE.replace("primary_key", "primay_key"))


# --- models used directly from Python ------------------------------------------------------------


def test_registry_built_in_python_merges_defaults_into_table_dicts():
    registry = Registry(
        defaults={"mode": "full_refresh", "verify": True}, tables=[{"table": "a"}, {"table": "b", "verify": False}]
    )
    assert [(t.mode, t.verify) for t in registry.tables] == [("full_refresh", True), ("full_refresh", False)]
    registry = Registry(defaults=TableDefaults(deletes="soft"), tables=[{"table": "a"}])
    assert registry.tables[0].deletes == "soft"


def test_registry_built_in_python_rejects_duplicates():
    with pytest.raises(pydantic.ValidationError, match="already used by tables"):
        Registry(tables=[{"table": "a"}, {"table": "public.a"}])


def test_registry_lookups():
    registry = parse_registry(DESIGN_EXAMPLE)
    assert registry.table("customers").qualified_name == "public.customers"
    assert registry.names_of(registry.table("audit_log")).slot == "audit_slot"
    with pytest.raises(KeyError, match=r"public\.nope"):
        registry.table("nope")
    assert list(registry.by_dag_id()) == [
        "pg_replication__public__customers",
        "pg_replication__public__orders",
        "pg_replication__sales__events",
        "pg_replication__public__audit_log",
    ]


def test_models_reject_unknown_keys_and_are_frozen():
    with pytest.raises(pydantic.ValidationError):
        TableConfig(table="a", primay_key=["id"])
    config = TableConfig(table="a")
    with pytest.raises(pydantic.ValidationError):
        config.mode = "full_refresh"


def test_table_config_in_python_is_lax_about_number_types():
    config = TableConfig(table="a", max_batch_changes="10", columns=("id", "x"))
    assert config.max_batch_changes == 10
    assert config.columns == ["id", "x"]


def test_non_public_table_lands_in_schema_prefixed_destination():
    registry = parse_registry("tables:\n  - table: sales.events\n")
    assert registry.tables[0].destination_table_name == "sales__events"
    assert registry.names_of(registry.tables[0]).slot == "pgrepl_default"
    assert registry.tables[0].names.slot == "pgrepl_sales_events"  # its per-table slot before slot groups


def test_long_table_names_get_bounded_distinct_slots():
    long_a = "events_" + "x" * 60 + "_a"
    long_b = "events_" + "x" * 60 + "_b"
    registry = parse_registry(f"tables:\n  - table: {long_a}\n  - table: {long_b}\n")
    slots = [t.names.slot for t in registry.tables]  # their per-table slots before slot groups
    assert slots[0] != slots[1]
    assert all(len(s.encode()) <= 63 for s in slots)
    assert [t.names.publication for t in registry.tables] == slots


def test_snapshot_parallelism_is_a_positive_count():
    registry = parse_registry(
        yaml_text(
            """
            source: {conn_id: pg_source}
            defaults: {snapshot_parallelism: 3}
            tables:
              - table: public.big
                snapshot_parallelism: 2
              - table: public.other
            """
        ),
        "tables.yaml",
    )
    assert [t.snapshot_parallelism for t in registry.tables] == [2, 3]
    assert "snapshot_parallelism" in only_error(
        yaml_text(
            """
            source: {conn_id: pg_source}
            tables:
              - table: public.big
                snapshot_parallelism: 0
            """
        )
    )
