"""Named what-if scenarios of a theater: hypothetical evidence rows that are never stored as evidence.

Saved as `$FORECAST_RUNS_DIR/.scenarios/<theater>.json` ({name: [row, ...]}), written atomically
(`forecast.safe_write`); the hidden folder keeps them apart from the run folders. Each row is
validated like an import row when it is added (`forecast.ingest.read_records`) and again when a
scenario is loaded, so a scenario saved before the theater's evidence changed is checked anew.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from forecast import config, safe_write

NAME = re.compile(r"^[\w][\w .,'()-]{0,79}$")


class ScenarioError(ValueError):
    """A scenario name or file that cannot be used."""


def _path(theater: str) -> Path:
    return config.runs_dir() / ".scenarios" / f"{theater}.json"


def load_all(theater: str) -> dict[str, list[dict]]:
    path = _path(theater)
    if not path.is_file():
        return {}
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ScenarioError(f"{path}: unreadable scenarios file ({err})") from None
    if not isinstance(doc, dict) or not all(isinstance(v, list) for v in doc.values()):
        raise ScenarioError(f"{path}: expected {{name: [row, ...]}}")
    return doc


def save(theater: str, name: str, rows: list[dict]) -> Path:
    name = name.strip()
    if not NAME.match(name):
        raise ScenarioError(f"{name!r}: a scenario name is 1-80 letters, digits, spaces and . , ' ( ) -")
    if not rows:
        raise ScenarioError("a scenario needs at least one hypothetical row")
    doc = {**load_all(theater), name: rows}
    path = _path(theater)
    path.parent.mkdir(parents=True, exist_ok=True)
    return safe_write.write_text(path, json.dumps(doc, indent=2, default=str) + "\n")


def delete(theater: str, name: str) -> None:
    doc = load_all(theater)
    if doc.pop(name, None) is not None:
        safe_write.write_text(_path(theater), json.dumps(doc, indent=2, default=str) + "\n")
