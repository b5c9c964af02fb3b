"""Automations from files: JSON, YAML or Python, every error reported at once.

A JSON or YAML document holds one automation, a list of them, or ``{"automations": [...]}``
(Prefect 3's ``prefect automation inspect --json`` output loads unchanged). A Python module is
imported and every ``Automation`` it defines at module level (alone, or in a list, tuple or
dict) is collected. Each error names the file, the field path inside the document
(``[1].trigger.triggers[0].within``) and what is wrong; a directory stands for the files
directly inside it. Names and explicit ids must be unique
across all files loaded together. Nothing is returned unless everything is valid.

One mistake hides no other: templates and targets (``automations.action_targets``: Apprise
URLs and webhook URLs) are checked on every action that validates, even when another part of its
automation does not, and an invalid automation's name still counts against duplicates. Block
names are checked when the caller gives a ``BlockCheck`` (it reads the known names from Redis,
and is asked only when some action names a block).
"""

from __future__ import annotations

import importlib.util
import json
import re
import sys
import traceback
import uuid
from collections.abc import Callable, Collection, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
import yaml
from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError

from actions.models import Action
from actions.targets import KnownBlocks
from actions.templating import TemplateEngine
from automations.action_targets import (
    ACTION_LISTS,
    action_errors,
    actions_of,
    automation_suffix,
    block_refs,
    join_path,
    template_problems,
    valid_actions,
)
from automations.errors import InvalidAutomation, InvalidAutomations
from automations.models import LOOP_ERROR, Automation

JSON_SUFFIXES = frozenset({".json"})
YAML_SUFFIXES = frozenset({".yaml", ".yml"})
PY_SUFFIXES = frozenset({".py"})
TRIGGER_TAGS = frozenset({"event", "compound", "sequence"})
MEMBER_LABEL = re.compile(r"^(str|int|float|bool|(list|dict|set|union|function-\w+)\[.*\])$")
DOCUMENT_KEY = "automations"
SCHEMA_KEY = "$schema"  # editors' schema hint, allowed beside "automations"
EXTENSION_PREFIX = "x-"  # beside "automations": free keys, e.g. YAML anchors to merge from
MERGE_TAG = "tag:yaml.org,2002:merge"

BlockCheck = Callable[[Collection[str]], KnownBlocks | None]
"""Given the block names the actions use, the known blocks (None: they cannot be checked)."""


@dataclass(frozen=True, slots=True)
class Loaded:
    """One valid automation and where it came from (``file`` and its path in the document)."""

    automation: Automation
    file: str
    path: str


@dataclass(frozen=True, slots=True)
class _Seen:
    """An automation's name and explicit id, valid or not (for the duplicate check)."""

    name: str
    id: uuid.UUID | None
    file: str
    path: str


@dataclass(frozen=True, slots=True)
class _BlockRef:
    """An action's block name, where it is, and whose it is (checked at the end)."""

    name: str
    file: str
    path: str
    suffix: str


@dataclass(slots=True)
class _Collected:
    """What loading found so far: valid automations, every error, every name seen."""

    loaded: list[Loaded] = field(default_factory=list)
    errors: list[InvalidAutomation] = field(default_factory=list)
    seen: list[_Seen] = field(default_factory=list)
    blocks: list[_BlockRef] = field(default_factory=list)

    def check_actions(self, actions: Sequence[tuple[str, Action]], *, file: str, prefix: str,
                      name: Any, engine: TemplateEngine) -> bool:
        """Template and target errors of ``actions`` (block names kept for later); True when
        there is none."""
        problems = action_errors(actions, file=file, prefix=prefix, name=name, engine=engine)
        self.errors.extend(problems)
        suffix = automation_suffix(name)
        self.blocks.extend(_BlockRef(block, file, join_path(prefix, f"{where}.{path}"), suffix)
                           for where, action in actions for path, block in block_refs(action))
        return not problems

    def finish(self, check_blocks: BlockCheck | None) -> list[Loaded]:
        errors = self.errors + self._block_errors(check_blocks) + _duplicates(self.seen)
        if errors:
            raise InvalidAutomations(errors)
        return self.loaded

    def _block_errors(self, check_blocks: BlockCheck | None) -> list[InvalidAutomation]:
        if check_blocks is None or not self.blocks:
            return []
        known = check_blocks(sorted({ref.name for ref in self.blocks}))
        if known is None:
            return []
        return [InvalidAutomation(problem + ref.suffix, file=ref.file, field_path=ref.path)
                for ref in self.blocks if (problem := known.block_problem(ref.name))]


def load_files(paths: Iterable[str | Path], *,
               check_blocks: BlockCheck | None = None) -> list[Automation]:
    """Every automation of every file, or ``InvalidAutomations`` listing every error. Block
    names are checked only with ``check_blocks``."""
    return [item.automation for item in load_sources(paths, check_blocks=check_blocks)]


def load_sources(paths: Iterable[str | Path], *,
                 check_blocks: BlockCheck | None = None) -> list[Loaded]:
    """Like ``load_files`` but keeps where each automation came from."""
    found = _Collected()
    for given in paths:
        path = Path(given)
        in_directory = path.is_dir()
        for file in _directory_files(path) if in_directory else [path]:
            _load_one(file, found, in_directory=in_directory)
    return found.finish(check_blocks)


def parse_document(document: Any, *, file: str = "<input>",
                   check_blocks: BlockCheck | None = None) -> list[Automation]:
    """Automations from an already decoded JSON/YAML document (raises on any error)."""
    found = _Collected()
    _from_document(document, file, found)
    return [item.automation for item in found.finish(check_blocks)]


def _directory_files(directory: Path) -> list[Path]:
    """The automation files directly inside ``directory`` (hidden and ``_*`` files skipped)."""
    suffixes = JSON_SUFFIXES | YAML_SUFFIXES | PY_SUFFIXES
    return sorted(p for p in directory.iterdir() if p.is_file() and p.suffix.lower() in suffixes
                  and not p.name.startswith((".", "_")))


def _load_one(path: Path, found: _Collected, *, in_directory: bool = False) -> None:
    file = str(path)
    suffix = path.suffix.lower()
    if suffix not in JSON_SUFFIXES | YAML_SUFFIXES | PY_SUFFIXES:
        found.errors.append(InvalidAutomation(
            "unsupported file type; use .json, .yaml, .yml or .py", file=file))
    elif not path.is_file():
        found.errors.append(InvalidAutomation("no such file", file=file))
    elif suffix in PY_SUFFIXES:
        _from_module(path, found, required=not in_directory)
    else:
        document, problem = _read_document(path, suffix)
        if problem is not None:
            found.errors.append(problem)
        else:
            _from_document(document, file, found)


def _read_document(path: Path, suffix: str) -> tuple[Any, InvalidAutomation | None]:
    """The decoded JSON/YAML document, or the reason it cannot be read."""
    file = str(path)
    try:
        raw = path.read_bytes()
        if suffix in JSON_SUFFIXES:
            document = json.loads(raw, object_pairs_hook=_unique_keys)
        else:
            document = yaml.load(raw, Loader=_UniqueKeyLoader)  # a SafeLoader subclass
    except json.JSONDecodeError as exc:
        return None, InvalidAutomation(f"invalid JSON: {exc}", file=file)
    except DuplicateKey as exc:
        return None, InvalidAutomation(f"invalid JSON: {exc}", file=file)
    except yaml.YAMLError as exc:
        return None, InvalidAutomation(f"invalid YAML: {_yaml_problem(exc)}", file=file)
    except (OSError, UnicodeDecodeError) as exc:
        return None, InvalidAutomation(f"cannot read: {exc}", file=file)
    return document, None


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


def _from_document(document: Any, file: str, found: _Collected) -> None:
    if isinstance(document, dict) and _document_keys(document) == {DOCUMENT_KEY}:
        entries, prefix = document[DOCUMENT_KEY], DOCUMENT_KEY
        if not isinstance(entries, list):
            found.errors.append(InvalidAutomation("must be a list of automations", file=file,
                                                  field_path=DOCUMENT_KEY))
            return
    elif isinstance(document, list):
        entries, prefix = document, ""
    elif isinstance(document, dict):
        entries, prefix = [document], None
    else:
        kind = "empty" if document is None else f"a {type(document).__name__}"
        found.errors.append(InvalidAutomation(
            f"expected an automation, a list of them or {{\"automations\": [...]}}; got {kind}",
            file=file))
        return
    _validate_each([(entry, "" if prefix is None else f"{prefix}[{i}]")
                    for i, entry in enumerate(entries)], file, found)


def _document_keys(document: dict[Any, Any]) -> set[Any]:
    return {k for k in document if k != SCHEMA_KEY
            and not (isinstance(k, str) and k.startswith(EXTENSION_PREFIX))}


def _validate_each(entries: Sequence[tuple[Any, str]], file: str, found: _Collected) -> None:
    templates = TemplateEngine()
    for entry, path in entries:
        if not isinstance(entry, dict):
            found.errors.append(InvalidAutomation(
                f"expected an automation (a mapping), got {type(entry).__name__}",
                file=file, field_path=path))
            continue
        name = entry.get("name")
        try:
            automation = Automation.model_validate(entry)
        except ValidationError as exc:
            found.errors.extend(validation_errors(exc, file=file, prefix=path, name=name))
            # the actions that do validate may hold more mistakes: report them now too
            found.check_actions(valid_actions(entry), file=file, prefix=path, name=name,
                                engine=templates)
            if isinstance(name, str):
                found.seen.append(_Seen(name, _explicit_id(entry), file, path))
            continue
        found.seen.append(_seen(automation, file, path))
        if found.check_actions(actions_of(automation), file=file, prefix=path,
                               name=automation.name, engine=templates):
            found.loaded.append(Loaded(automation, file, path))


def _explicit_id(entry: dict[Any, Any]) -> uuid.UUID | None:
    try:
        return uuid.UUID(str(entry["id"])) if "id" in entry else None
    except ValueError:
        return None


def _seen(automation: Automation, file: str, path: str) -> _Seen:
    explicit = automation.id if "id" in automation.model_fields_set else None
    return _Seen(automation.name, explicit, file, path)


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
    return [InvalidAutomation(message, file=file, field_path=join_path(prefix, f"{where}.{path}"))
            for where, action in actions_of(automation)
            for path, message in template_problems(action, engine)]


def validation_errors(
    exc: ValidationError, *, file: str | None = None, prefix: str = "", name: Any = None
) -> list[InvalidAutomation]:
    """One ``InvalidAutomation`` per pydantic error, with a readable field path."""
    by_path: dict[str, list[str]] = {}
    suffix = automation_suffix(name)
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


def _duplicates(seen: Sequence[_Seen]) -> list[InvalidAutomation]:
    errors: list[InvalidAutomation] = []
    names: dict[str, _Seen] = {}
    ids: dict[uuid.UUID, _Seen] = {}
    for item in seen:
        first = names.setdefault(item.name, item)
        if first is not item:
            errors.append(InvalidAutomation(
                f"duplicate name {item.name!r} (also at {_where(first)}); "
                "names must be unique", file=item.file, field_path=join_path(item.path, "name")))
        if item.id is not None:
            other = ids.setdefault(item.id, item)
            if other is not item:
                errors.append(InvalidAutomation(
                    f"duplicate id {item.id} (also at {_where(other)})",
                    file=item.file, field_path=join_path(item.path, "id")))
    return errors


def _where(item: _Seen) -> str:
    return f"{item.file}:{item.path}" if item.path else item.file


def _from_module(path: Path, found: _Collected, *, required: bool = True) -> None:
    """Import ``path`` as a throwaway module and collect its ``Automation`` objects (a helper
    module found in a directory may define none)."""
    file = str(path)
    namespace, problems = _import_module(path)
    if namespace is None:
        found.errors.extend(problems)
        return
    defined = _collect(namespace)
    if not defined and required:
        found.errors.append(InvalidAutomation("defines no Automation objects", file=file))
    engine = TemplateEngine()
    valid = [found.check_actions(actions_of(a), file=file, prefix=name, name=a.name,
                                 engine=engine) for name, a in defined]
    found.seen.extend(_seen(a, file, name) for name, a in defined)
    if all(valid):
        found.loaded.extend(Loaded(a, file, name) for name, a in defined)


def _import_module(path: Path) -> tuple[dict[str, Any] | None, list[InvalidAutomation]]:
    """The module's namespace, or None and why it could not be imported."""
    file = str(path)
    module_name = f"_automations_file_{uuid.uuid4().hex}"
    spec = importlib.util.spec_from_file_location(module_name, path)
    if spec is None or spec.loader is None:
        return None, [InvalidAutomation("cannot import this file", file=file)]
    module = importlib.util.module_from_spec(spec)
    directory = str(path.resolve().parent)
    sys.path.insert(0, directory)
    sys.modules[module_name] = module
    try:
        spec.loader.exec_module(module)
    except ValidationError as exc:
        return None, validation_errors(exc, file=_failing_line(exc, path))
    except SystemExit as exc:  # exit() in a user's module must not end the CLI
        return None, [InvalidAutomation(
            f"the file raised SystemExit({exc.code!r}) while loading (sys.exit() or exit()); "
            "an automations file must define automations, not exit",
            file=_failing_line(exc, path))]
    except Exception as exc:  # a user's module can raise anything; report it, do not crash
        return None, [InvalidAutomation(f"import failed: {type(exc).__name__}: {exc}",
                                        file=_failing_line(exc, path))]
    finally:
        sys.modules.pop(module_name, None)
        if directory in sys.path:
            sys.path.remove(directory)
    return vars(module), []


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
