"""Writing automation documents for tests: JSON or YAML by the file's suffix."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml


def write(path: Path, document: Any) -> Path:
    path.write_text(json.dumps(document) if path.suffix == ".json" else yaml.safe_dump(document))
    return path
