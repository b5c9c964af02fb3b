"""JSON and YAML automation documents, read strictly.

Both parsers silently keep the last of two equal keys in a mapping, which would hide a mistake
in an automation file; here a repeated key is an error (with its line, for YAML). The loader
reads automation files here; ``automations test`` files share the YAML loader and its messages.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml

from automations.errors import InvalidAutomation

JSON_SUFFIXES = frozenset({".json"})
YAML_SUFFIXES = frozenset({".yaml", ".yml"})
MERGE_TAG = "tag:yaml.org,2002:merge"


def read_document(path: Path, suffix: str) -> tuple[Any, InvalidAutomation | None]:
    """The decoded JSON/YAML document, or the reason it cannot be read."""
    file = str(path)
    try:
        raw = path.read_bytes()
        if suffix in JSON_SUFFIXES:
            document = json.loads(raw, object_pairs_hook=_unique_keys)
        else:
            document = yaml.load(raw, Loader=UniqueKeyLoader)  # a SafeLoader subclass
    except json.JSONDecodeError as exc:
        return None, InvalidAutomation(f"invalid JSON: {exc}", file=file)
    except DuplicateKey as exc:
        return None, InvalidAutomation(f"invalid JSON: {exc}", file=file)
    except yaml.YAMLError as exc:
        return None, InvalidAutomation(f"invalid YAML: {yaml_problem(exc)}", file=file)
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


class UniqueKeyLoader(yaml.SafeLoader):
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


def yaml_problem(exc: yaml.YAMLError) -> str:
    mark = getattr(exc, "problem_mark", None)
    problem = getattr(exc, "problem", None) or str(exc)
    if mark is None:
        return str(problem)
    return f"line {mark.line + 1}, column {mark.column + 1}: {problem}"

