"""Read case files (JSON Lines) and spreadsheet exports (CSV) into validated rows.

Validation is complete before anything is written: a file either yields all
its rows or a list of every problem as (file, line, field, reason).
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass, field
from pathlib import Path

from pydantic import ValidationError

from forecast.schema import EVIDENCE_ADAPTER, Evidence, Theater


@dataclass(frozen=True)
class Problem:
    file: str
    line: int
    field: str
    reason: str

    def __str__(self) -> str:
        return f"{self.file}:{self.line}: {self.field}: {self.reason}"


@dataclass
class Parsed:
    theaters: list[Theater] = field(default_factory=list)
    evidence: list[Evidence] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)


class InvalidInput(Exception):
    """Raised with every problem found; the CLI prints them and exits 2."""

    def __init__(self, problems: list[Problem]):
        self.problems = problems
        super().__init__("\n".join(map(str, problems)))


def read_file(path: Path, known_theaters: set[str]) -> Parsed:
    """Parse and validate one file; never raises for bad rows, collects them."""
    path = Path(path)
    if path.suffix == ".jsonl":
        records = _jsonl_records(path)
    elif path.suffix == ".csv":
        records = _csv_records(path)
    else:
        return Parsed(problems=[Problem(str(path), 0, "file", "expected a .jsonl or .csv file")])
    return _validate(str(path), records, known_theaters)


def _jsonl_records(path: Path):
    text = path.read_text(encoding="utf-8")
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip() or line.lstrip().startswith("//"):
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as err:
            yield number, None, f"not valid JSON: {err.msg} at column {err.colno}"
            continue
        if not isinstance(record, dict):
            yield number, None, "a line must be one JSON object"
            continue
        yield number, record, None


def _csv_records(path: Path):
    with path.open(newline="", encoding="utf-8-sig") as handle:
        reader = csv.DictReader(handle)
        for record in reader:
            line = reader.line_num
            if None in record:
                yield line, None, "more cells than header columns"
                continue
            # Spreadsheet rows carry every column; an empty cell means "not given".
            yield line, {k.strip(): v for k, v in record.items() if v is not None and v.strip()}, None


def _validate(file: str, records, known_theaters: set[str]) -> Parsed:
    parsed = Parsed()
    file_theater: str | None = None
    seen: dict[tuple, int] = {}
    for line, record, error in records:
        if error:
            parsed.problems.append(Problem(file, line, "line", error))
            continue
        kind = record.get("kind")
        try:
            if kind == "theater":
                theater = Theater.model_validate(record)
                parsed.theaters.append(theater)
                file_theater = theater.id
                continue
            record = dict(record)
            record.setdefault("theater", file_theater)
            row = EVIDENCE_ADAPTER.validate_python(record)
        except ValidationError as err:
            parsed.problems.extend(_problems(file, line, err))
            continue
        if row.theater not in known_theaters | {t.id for t in parsed.theaters}:
            parsed.problems.append(Problem(file, line, "theater", f"unknown theater {row.theater!r}"))
            continue
        if row.key() in seen:
            parsed.problems.append(
                Problem(file, line, "row", f"duplicates line {seen[row.key()]} ({row.kind} {row.key()[2:]})")
            )
            continue
        seen[row.key()] = line
        parsed.evidence.append(row)
    parsed.problems.extend(_outcome_problems(file, parsed))
    return parsed


def _outcome_problems(file: str, parsed: Parsed) -> list[Problem]:
    theaters = [o.theater for o in parsed.evidence if o.kind == "outcome"]
    return [Problem(file, 0, "outcome", f"theater {t!r} has more than one outcome row")
            for t in sorted({t for t in theaters if theaters.count(t) > 1})]


def _problems(file: str, line: int, err: ValidationError) -> list[Problem]:
    out = []
    for e in err.errors():
        names = [str(p) for p in e["loc"] if isinstance(p, str)]
        # The discriminator puts the kind first in the location; the field is last.
        field_name = names[-1] if names else "row"
        if e["type"] == "union_tag_invalid" or e["type"] == "union_tag_not_found":
            field_name = "kind"
        reason = e["msg"].removeprefix("Value error, ")
        if e["type"] == "value_error" and ": " in reason:  # cross-field checks name their field
            field_name, reason = reason.split(": ", 1)
        if e["type"] == "extra_forbidden":
            reason = "unknown field"
        out.append(Problem(file, line, field_name, reason))
    return out


def read_paths(paths: list[Path], known_theaters: set[str]) -> Parsed:
    """Validate many files as one batch: theaters declared in any file are known to all."""
    total = Parsed()
    for path in paths:
        one = read_file(path, known_theaters | {t.id for t in total.theaters})
        total.theaters += one.theaters
        total.evidence += one.evidence
        total.problems += one.problems
    return total


def case_files(root: Path) -> list[Path]:
    """The curated case files under data/, in a stable order."""
    return sorted((root / "cases").glob("*.jsonl"))


def import_files(eng, paths: list[Path], origin: str):
    """Validate every file, then write all rows in one transaction or nothing."""
    from forecast import store

    parsed = read_paths(paths, store.theater_ids(eng))
    if parsed.problems:
        raise InvalidInput(parsed.problems)
    return store.write(eng, parsed.theaters, parsed.evidence, origin)
