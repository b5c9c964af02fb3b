"""Automations from files: JSON, YAML or Python, every error reported at once.

A JSON or YAML document holds one automation, a list of them, or ``{"automations": [...]}``
(Prefect 3's ``prefect automation inspect --json`` output loads unchanged). A Python module is
imported and every ``Automation`` it defines at module level (alone, or in a list, tuple or
dict) is collected. Each error names the file, the field path inside the document
(``[1].trigger.triggers[0].within``) and what is wrong; a directory stands for the files
directly inside it. Names and explicit ids must be unique
across all files loaded together. Nothing is returned unless everything is valid.
"""

from __future__ import annotations

import importlib.util
import json
import re
import sys
import traceback
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import yaml
from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError

from actions.templating import TemplateEngine, check_templates
from automations.errors import InvalidAutomation, InvalidAutomations
from automations.models import LOOP_ERROR, Automation

JSON_SUFFIXES = frozenset({".json"})
YAML_SUFFIXES = frozenset({".yaml", ".yml"})
PY_SUFFIXES = frozenset({".py"})
TRIGGER_TAGS = frozenset({"event", "compound", "sequence"})
ACTION_LISTS = ("actions", "actions_on_trigger", "actions_on_resolve")
MEMBER_LABEL = re.compile(r"^(str|int|float|bool|(list|dict|set|union|function-\w+)\[.*\])$")
DOCUMENT_KEY = "automations"
SCHEMA_KEY = "$schema"  # editors' schema hint, allowed beside "automations"
EXTENSION_PREFIX = "x-"  # beside "automations": free keys, e.g. YAML anchors to merge from
MERGE_TAG = "tag:yaml.org,2002:merge"


@dataclass(frozen=True, slots=True)
class Loaded:
    """One valid automation and where it came from (``file`` and its path in the document)."""

    automation: Automation
    file: str
    path: str


def load_files(paths: Iterable[str | Path]) -> list[Automation]:
    """Every automation of every file, or ``InvalidAutomations`` listing every error."""
    return [item.automation for item in load_sources(paths)]


def load_sources(paths: Iterable[str | Path]) -> list[Loaded]:
    """Like ``load_files`` but keeps where each automation came from."""
    loaded: list[Loaded] = []
    errors: list[InvalidAutomation] = []
    for given in paths:
        path = Path(given)
        in_directory = path.is_dir()
        for file in _directory_files(path) if in_directory else [path]:
            items, problems = _load_one(file, in_directory=in_directory)
            loaded.extend(items)
            errors.extend(problems)
    errors.extend(_duplicates(loaded))
    if errors:
        raise InvalidAutomations(errors)
    return loaded


def parse_document(document: Any, *, file: str = "<input>") -> list[Automation]:
    """Automations from an already decoded JSON/YAML document (raises on any error)."""
    items, errors = _from_document(document, file)
    errors.extend(_duplicates(items))
    if errors:
        raise InvalidAutomations(errors)
    return [item.automation for item in items]


def _directory_files(directory: Path) -> list[Path]:
    """The automation files directly inside ``directory`` (hidden and ``_*`` files skipped)."""
    suffixes = JSON_SUFFIXES | YAML_SUFFIXES | PY_SUFFIXES
    return sorted(p for p in directory.iterdir() if p.is_file() and p.suffix.lower() in suffixes
                  and not p.name.startswith((".", "_")))


def _load_one(
    path: Path, *, in_directory: bool = False
) -> tuple[list[Loaded], list[InvalidAutomation]]:
    file = str(path)
    suffix = path.suffix.lower()
    if suffix not in JSON_SUFFIXES | YAML_SUFFIXES | PY_SUFFIXES:
        return [], [InvalidAutomation(
            "unsupported file type; use .json, .yaml, .yml or .py", file=file)]
    if not path.is_file():
        return [], [InvalidAutomation("no such file", file=file)]
    if suffix in PY_SUFFIXES:
        return _from_module(path, required=not in_directory)
    try:
        raw = path.read_bytes()
        if suffix in JSON_SUFFIXES:
            document = json.loads(raw, object_pairs_hook=_unique_keys)
        else:
            document = yaml.load(raw, Loader=_UniqueKeyLoader)  # a SafeLoader subclass
    except json.JSONDecodeError as exc:
        return [], [InvalidAutomation(f"invalid JSON: {exc}", file=file)]
    except DuplicateKey as exc:
        return [], [InvalidAutomation(f"invalid JSON: {exc}", file=file)]
    except yaml.YAMLError as exc:
        return [], [InvalidAutomation(f"invalid YAML: {_yaml_problem(exc)}", file=file)]
    except (OSError, UnicodeDecodeError) as exc:
        return [], [InvalidAutomation(f"cannot read: {exc}", file=file)]
    return _from_document(document, file)


class DuplicateKey(ValueError):
    """A mapping names the same key twice (the parsers would silently keep the last)."""


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            raise DuplicateKey(f"duplicate key {key!r}")
        result[key] = value
    return result


class _UniqueKeyLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that refuses a key given twice in one mapping, with its line."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            if key_node.tag == MERGE_TAG:
                continue  # ``<<: *anchor`` merges are resolved by SafeLoader
            key = self.construct_object(key_node, deep=deep)
            if not isinstance(key, str | int | float | bool):
                continue  # an unhashable key: SafeLoader reports it itself
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key {key!r}", key_node.start_mark)
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def _yaml_problem(exc: yaml.YAMLError) -> str:
    mark = getattr(exc, "problem_mark", None)
    problem = getattr(exc, "problem", None) or str(exc)
    if mark is None:
        return str(problem)
    return f"line {mark.line + 1}, column {mark.column + 1}: {problem}"


def _from_document(document: Any, file: str) -> tuple[list[Loaded], list[InvalidAutomation]]:
    if isinstance(document, dict) and _document_keys(document) == {DOCUMENT_KEY}:
        entries, prefix = document[DOCUMENT_KEY], DOCUMENT_KEY
        if not isinstance(entries, list):
            return [], [InvalidAutomation("must be a list of automations", file=file,
                                          field_path=DOCUMENT_KEY)]
    elif isinstance(document, list):
        entries, prefix = document, ""
    elif isinstance(document, dict):
        return _validate_each([(document, "")], file)
    else:
        kind = "empty" if document is None else f"a {type(document).__name__}"
        return [], [InvalidAutomation(
            f"expected an automation, a list of them or {{\"automations\": [...]}}; got {kind}",
            file=file)]
    return _validate_each([(entry, f"{prefix}[{i}]") for i, entry in enumerate(entries)], file)


def _document_keys(document: dict[Any, Any]) -> set[Any]:
    return {k for k in document if k != SCHEMA_KEY
            and not (isinstance(k, str) and k.startswith(EXTENSION_PREFIX))}


def _validate_each(
    entries: Sequence[tuple[Any, str]], file: str
) -> tuple[list[Loaded], list[InvalidAutomation]]:
    loaded: list[Loaded] = []
    errors: list[InvalidAutomation] = []
    templates = TemplateEngine()
    for entry, path in entries:
        if not isinstance(entry, dict):
            errors.append(InvalidAutomation(
                f"expected an automation (a mapping), got {type(entry).__name__}",
                file=file, field_path=path))
            continue
        try:
            automation = Automation.model_validate(entry)
        except ValidationError as exc:
            errors.extend(validation_errors(exc, file=file, prefix=path, name=entry.get("name")))
            continue
        problems = template_errors(automation, file=file, prefix=path, engine=templates)
        errors.extend(problems)
        if not problems:
            loaded.append(Loaded(automation, file, path))
    return loaded, errors


def template_errors(
    automation: Automation,
    *,
    file: str | None = None,
    prefix: str = "",
    engine: TemplateEngine | None = None,
) -> list[InvalidAutomation]:
    """Templates of the automation's actions that could never render (``actions.templating``
    parse and limits), each with its field path."""
    engine = engine or TemplateEngine()
    errors: list[InvalidAutomation] = []
    for field in ACTION_LISTS:
        for i, action in enumerate(getattr(automation, field)):
            for problem in check_templates(action, engine):
                path, _, message = problem.partition(": ")
                message = message.splitlines()[0] if message else problem
                errors.append(InvalidAutomation(
                    f"template error: {message}", file=file,
                    field_path=_join(prefix, f"{field}[{i}].{path}")))
    return errors


def validation_errors(
    exc: ValidationError, *, file: str | None = None, prefix: str = "", name: Any = None
) -> list[InvalidAutomation]:
    """One ``InvalidAutomation`` per pydantic error, with a readable field path."""
    by_path: dict[str, list[str]] = {}
    suffix = f" (automation {name!r})" if isinstance(name, str) and name else ""
    for error in exc.errors(include_url=False):
        ctx = error.get("ctx") or {}
        if error["type"] == LOOP_ERROR:
            path, message = str(ctx.get("path", "")), str(ctx.get("message", error["msg"]))
        else:
            path, message = field_path(error["loc"]), _message(error)
        full = ".".join(p for p in (prefix, path) if p).replace(".[", "[")
        by_path.setdefault(full, []).append(message)  # a union's members fail at one path
    return [InvalidAutomation(" or ".join(dict.fromkeys(messages)) + suffix, file=file,
                              field_path=path) for path, messages in by_path.items()]


def _message(error: Any) -> str:
    message = str(error["msg"]).removeprefix("Value error, ").removeprefix("Assertion failed, ")
    if error["type"] == "extra_forbidden":
        return "unknown key (not allowed here)"
    return message


def field_path(loc: Sequence[int | str]) -> str:
    """A pydantic location as ``trigger.triggers[1].within``: union tags removed, list
    indexes in brackets, dict keys that are not identifiers quoted."""
    parts: list[str] = []
    previous: list[int | str] = []
    for item in loc:
        tag = isinstance(item, str) and _is_union_tag(item, previous)
        previous.append(item)
        if tag:
            continue
        if isinstance(item, int):
            parts.append(f"[{item}]")
        elif item.isidentifier():
            parts.append(f".{item}" if parts else item)
        else:
            parts.append(f"[{orjson.dumps(item).decode()}]")
    return "".join(parts)


def _is_union_tag(item: str, previous: Sequence[int | str]) -> bool:
    """Pydantic puts the chosen union member's tag into locations; we strip it."""
    if MEMBER_LABEL.match(item):
        return True
    if previous and previous[-1] == "trigger" and len(previous) == 1:
        return item in TRIGGER_TAGS
    if len(previous) >= 2 and isinstance(previous[-1], int):
        owner = previous[-2]
        if owner == "triggers":
            return item in TRIGGER_TAGS
        if owner in ACTION_LISTS and len(previous) == 2:
            return True
    return False


def _duplicates(loaded: Sequence[Loaded]) -> list[InvalidAutomation]:
    errors: list[InvalidAutomation] = []
    names: dict[str, Loaded] = {}
    ids: dict[uuid.UUID, Loaded] = {}
    for item in loaded:
        automation = item.automation
        first = names.setdefault(automation.name, item)
        if first is not item:
            errors.append(InvalidAutomation(
                f"duplicate name {automation.name!r} (also at {_where(first)}); "
                "names must be unique", file=item.file, field_path=_join(item.path, "name")))
        if "id" in automation.model_fields_set:
            other = ids.setdefault(automation.id, item)
            if other is not item:
                errors.append(InvalidAutomation(
                    f"duplicate id {automation.id} (also at {_where(other)})",
                    file=item.file, field_path=_join(item.path, "id")))
    return errors


def _join(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix else name


def _where(item: Loaded) -> str:
    return f"{item.file}:{item.path}" if item.path else item.file


def _from_module(
    path: Path, *, required: bool = True
) -> tuple[list[Loaded], list[InvalidAutomation]]:
    """Import ``path`` as a throwaway module and collect its ``Automation`` objects (a helper
    module found in a directory may define none)."""
    file = str(path)
    module_name = f"_automations_file_{uuid.uuid4().hex}"
    spec = importlib.util.spec_from_file_location(module_name, path)
    if spec is None or spec.loader is None:
        return [], [InvalidAutomation("cannot import this file", file=file)]
    module = importlib.util.module_from_spec(spec)
    directory = str(path.resolve().parent)
    sys.path.insert(0, directory)
    sys.modules[module_name] = module
    try:
        spec.loader.exec_module(module)
    except ValidationError as exc:
        return [], validation_errors(exc, file=_failing_line(exc, path))
    except Exception as exc:  # a user's module can raise anything; report it, do not crash
        return [], [InvalidAutomation(f"import failed: {type(exc).__name__}: {exc}",
                                      file=_failing_line(exc, path))]
    finally:
        sys.modules.pop(module_name, None)
        if directory in sys.path:
            sys.path.remove(directory)
    found = _collect(vars(module))
    if not found:
        return [], [InvalidAutomation("defines no Automation objects", file=file)] \
            if required else []
    engine = TemplateEngine()
    errors = [e for name, a in found
              for e in template_errors(a, file=file, prefix=name, engine=engine)]
    return ([] if errors else [Loaded(a, file, name) for name, a in found]), errors


def _failing_line(exc: BaseException, path: Path) -> str:
    """``file:line`` of the deepest frame in ``path`` (where the user's mistake is)."""
    target = str(path.resolve())
    line = None
    for frame in traceback.extract_tb(exc.__traceback__):
        if str(Path(frame.filename).resolve()) == target:
            line = frame.lineno
    return f"{path}:{line}" if line else str(path)


def _collect(namespace: dict[str, Any]) -> list[tuple[str, Automation]]:
    """Module-level automations: plain names, and the items of lists, tuples and dicts."""
    found: dict[int, tuple[str, Automation]] = {}
    for name, value in namespace.items():
        if name.startswith("__"):
            continue
        if isinstance(value, Automation):
            found.setdefault(id(value), (name, value))
        elif isinstance(value, list | tuple):
            for i, item in enumerate(value):
                if isinstance(item, Automation):
                    found.setdefault(id(item), (f"{name}[{i}]", item))
        elif isinstance(value, dict):
            for key, item in value.items():
                if isinstance(item, Automation):
                    found.setdefault(id(item), (f"{name}[{key!r}]", item))
    return list(found.values())


class AutomationsDocument(BaseModel):
    """The ``{"automations": [...]}`` form of a file (``$schema`` allowed for editors, and
    ``x-*`` keys for YAML anchors)."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True,
                              json_schema_extra={"patternProperties": {"^x-": {}}})

    schema_: str | None = Field(None, alias=SCHEMA_KEY, description="JSON Schema URL/path.")
    automations: list[Automation]


def file_schema() -> dict[str, Any]:
    """JSON Schema of an automations file: one automation, a list, or the document form."""
    adapter: TypeAdapter[Any] = TypeAdapter(Automation | list[Automation] | AutomationsDocument)
    schema = adapter.json_schema(mode="validation")
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "automations file"
    return schema
