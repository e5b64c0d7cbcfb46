"""The YAML table registry (design.md, Contract 1): validated models, derived names, errors with file:line:key."""

from airflow_pg_replication.registry.diagnostics import RegistryError, RegistryIssue, TableError
from airflow_pg_replication.registry.models import (
    DestinationConfig,
    Registry,
    SourceConfig,
    TableConfig,
    TableDefaults,
    load_registry,
    load_registry_tolerant,
    parse_registry,
    parse_registry_tolerant,
)

__all__ = [
    "DestinationConfig",
    "Registry",
    "RegistryError",
    "RegistryIssue",
    "SourceConfig",
    "TableConfig",
    "TableDefaults",
    "TableError",
    "load_registry",
    "load_registry_tolerant",
    "parse_registry",
    "parse_registry_tolerant",
]
