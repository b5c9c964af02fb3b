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

Reading a document is ``automations.documents``, pydantic errors become messages in
``automations.field_errors``, and Python files are imported by ``automations.python_files``;
this module collects what they give and checks across files.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Collection, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError

from actions.models import Action
from actions.targets import KnownBlocks
from actions.templating import TemplateEngine
from automations.action_targets import (
    action_errors,
    actions_of,
    automation_suffix,
    block_refs,
    join_path,
    valid_actions,
)
from automations.documents import JSON_SUFFIXES, YAML_SUFFIXES, read_document
from automations.errors import InvalidAutomation, InvalidAutomations
from automations.field_errors import validation_errors
from automations.models import Automation
from automations.python_files import PY_SUFFIXES, collect, import_module

DOCUMENT_KEY = "automations"
SCHEMA_KEY = "$schema"  # editors' schema hint, allowed beside "automations"
EXTENSION_PREFIX = "x-"  # beside "automations": free keys, e.g. YAML anchors to merge from

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
        document, problem = read_document(path, suffix)
        if problem is not None:
            found.errors.append(problem)
        else:
            _from_document(document, file, found)


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
    namespace, problems = import_module(path)
    if namespace is None:
        found.errors.extend(problems)
        return
    defined = collect(namespace)
    if not defined and required:
        found.errors.append(InvalidAutomation("defines no Automation objects", file=file))
    engine = TemplateEngine()
    valid = [found.check_actions(actions_of(a), file=file, prefix=name, name=a.name,
                                 engine=engine) for name, a in defined]
    found.seen.extend(_seen(a, file, name) for name, a in defined)
    if all(valid):
        found.loaded.extend(Loaded(a, file, name) for name, a in defined)


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
