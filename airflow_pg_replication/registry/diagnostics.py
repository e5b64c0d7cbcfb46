"""Problems in a registry file: its exceptions, and collecting every problem with its file, line and key."""

from __future__ import annotations

import difflib
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from airflow_pg_replication.registry import names as naming

CREDENTIALS_HINT = (
    "credentials must not be written in the registry; store them in an Airflow connection and "
    "reference it with conn_id, or pass them through an environment variable"
)
_SECRET_KEY_RE = re.compile(r"passw(or)?d|secret|token|api_?key|private_?key|access_?key|^(pass|pwd)$", re.I)

_KeyPath = tuple  # e.g. ("tables", 1, "mode"), shown as tables[1].mode
_Found = list[tuple[_KeyPath, str]]  # (key path, message) problems
#: (table configs by index, validated sections) -> (index, key, message) problems across tables
Duplicates = Callable[[dict[int, Any], dict[str, Any]], list[tuple[int, str, str]]]


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


class KeyedProblems(ValueError):
    """Cross-field problems raised by a model, each tied to the key it is about (so errors point at its line)."""

    def __init__(self, problems: list[tuple[str, str]]):
        super().__init__("; ".join(f"{key}: {message}" for key, message in problems))
        self.problems = problems


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


def _compose(text: str, file: str, root_keys: list[str]) -> tuple[dict, yaml.Node]:
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
        message = f"the registry must be a mapping with keys {', '.join(root_keys)}; found a {type(data).__name__}"
        raise RegistryError([RegistryIssue(file, node.start_mark.line + 1, "", message)])
    return data, node


def _unknown_key(key: Any, valid: list[str]) -> str:
    close = difflib.get_close_matches(str(key), valid, n=1)
    return f"unknown key; did you mean {close[0]!r}?" if close else f"unknown key; valid keys: {', '.join(valid)}"


def _model_at(model: type[BaseModel], path: _KeyPath) -> type[BaseModel]:
    """The model that validates the mapping at ``path`` inside ``model`` (through fields and mapping values)."""
    import typing

    for part in path:
        fields = model.model_fields
        field = fields["root"] if "root" in fields else fields.get(str(part))
        annotation: Any = field.annotation if field is not None else None
        if annotation is None:
            return model
        args = [a for a in typing.get_args(annotation) if isinstance(a, type) and issubclass(a, BaseModel)]
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            args = [annotation]
        if not args:
            return model
        model = args[-1]
    return model


def _validate(model: type[BaseModel], data: Any) -> tuple[Any, _Found]:
    """Validate strictly (YAML gives real types): the model, or None and the (key path, message) problems."""
    try:
        return model.model_validate(data, strict=True), []
    except ValidationError as exc:
        errors = exc.errors(include_url=False)
    problems: _Found = []
    for err in errors:
        loc, kind, value, cause = tuple(err["loc"]), err["type"], err.get("input"), err.get("ctx", {}).get("error")
        if isinstance(cause, KeyedProblems):
            problems += [((*loc, key), message) for key, message in cause.problems]
        elif kind == "extra_forbidden":
            problems.append((loc, _unknown_key(loc[-1], list(_model_at(model, loc[:-1]).model_fields))))
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
        return [
            p
            for k, v in data.items()
            for p in ([(*path, k)] if isinstance(k, str) and _SECRET_KEY_RE.search(k) else _secret_paths(v, (*path, k)))
        ]
    if isinstance(data, list):
        return [p for i, v in enumerate(data) for p in _secret_paths(v, (*path, i))]
    return []


def _repeated_keys(node: yaml.Node, path: _KeyPath = ()) -> list[tuple[_KeyPath, int, str]]:
    """Keys written twice in one mapping (YAML would silently keep the last)."""
    if isinstance(node, yaml.SequenceNode):
        return [p for i, item in enumerate(node.value) for p in _repeated_keys(item, (*path, i))]
    found, seen = [], set()
    for key, value in node.value if isinstance(node, yaml.MappingNode) else []:
        if key.value in seen:
            found.append(((*path, key.value), key.start_mark.line + 1, "key appears twice; keep only one"))
        seen.add(key.value)
        found += _repeated_keys(value, (*path, key.value))
    return found


def _table_index(path: _KeyPath) -> int | None:
    """The index of the table entry a key path is inside, or None for registry-level paths."""
    return path[1] if len(path) > 1 and path[0] == "tables" and isinstance(path[1], int) else None


def check_document(
    text: str, file: str, sections: dict[str, type[BaseModel]], table_model: type[BaseModel], duplicates: Duplicates
) -> tuple[dict[str, Any] | None, list[Any], list[RegistryIssue], list[TableError]]:
    """Validate a registry document against the given models, collecting every problem.

    Returns the validated sections (None if the registry itself is broken), the valid table configs in
    file order, the registry-level issues and one TableError per broken table entry. ``sections`` maps
    each top-level key besides ``tables`` to its model; ``defaults`` is merged into every table entry.
    """
    root_keys = [*sections, "tables"]
    data, root = _compose(text, file, root_keys)
    secrets = _secret_paths(data)
    problems: list[tuple[_KeyPath, int | None, str]] = [(p, None, CREDENTIALS_HINT) for p in secrets]
    problems += _repeated_keys(root)

    def add(prefix: _KeyPath, found: _Found) -> None:
        problems.extend(
            (prefix + p, None, m) for p, m in found if not any((prefix + p)[: len(s)] == s for s in secrets)
        )

    add((), [((key,), _unknown_key(key, root_keys)) for key in data if key not in root_keys])
    validated = {}
    for key, model in sections.items():
        validated[key], found = _validate(model, {} if data.get(key) is None else data[key])
        add((key,), found)
    bad_defaults = {p[1] for p, _, _ in problems if p[:1] == ("defaults",) and len(p) > 1}
    raw_defaults = data["defaults"] if isinstance(data.get("defaults"), dict) else {}
    defaults = {k: v for k, v in raw_defaults.items() if k not in bad_defaults}

    items = data.get("tables")
    if not isinstance(items, list):
        what = "required key is missing" if "tables" not in data else "is empty" if items is None else "not a list"
        add(("tables",), [((), f"{what}; it must be a list of entries like '- table: public.customers'")])
        items = []
    configs: dict[int, Any] = {}
    for index, item in enumerate(items):
        if not isinstance(item, dict):
            add(("tables", index), [((), "each entry must be a mapping like '- table: public.customers'")])
            continue
        merge = getattr(table_model, "merged_with_defaults", None)
        cfg, found = _validate(table_model, merge(defaults, item) if merge else {**defaults, **item})
        inherited = defaults.keys() - item.keys()
        add(
            ("tables", index),
            [(p, f"{m} ({p[0]} is set in defaults)" if p and p[0] in inherited else m) for p, m in found],
        )
        if cfg is not None:
            configs[index] = cfg
    broken = {i for i in (_table_index(p) for p, _, _ in problems) if i is not None}
    for index, key, message in duplicates({i: cfg for i, cfg in configs.items() if i not in broken}, validated):
        problems.append((("tables", index, key), None, message))
        broken.add(index)

    issues = [RegistryIssue(file, line or _line(root, p), _key_path(p), m) for p, line, m in problems]
    registry_issues = [issue for issue, (p, _, _) in zip(issues, problems) if _table_index(p) is None]
    table_errors = []
    for index in sorted(broken):
        name = items[index].get("table") if isinstance(items[index], dict) else None
        name = name if isinstance(name, str) else None
        try:
            dag_id = naming.dag_id(*naming.parse_table_name(name)) if name is not None else None
        except ValueError:
            dag_id = None
        table_issues = [issue for issue, (p, _, _) in zip(issues, problems) if _table_index(p) == index]
        table_errors.append(TableError(index, name, dag_id, table_issues))
    if registry_issues or None in validated.values():
        return None, [], registry_issues, table_errors
    return validated, [configs[i] for i in sorted(configs) if i not in broken], [], table_errors
