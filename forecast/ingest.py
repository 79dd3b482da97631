"""Read case files (JSON Lines) and spreadsheet exports (CSV) into validated rows.

Validation is complete before anything is written: a file either yields all
its rows or a list of every problem as (file, line, field, reason).

Besides each row's own schema (forecast.schema: strict types, finite numbers,
dates within FIRST_DAY..LAST_DAY), a batch is checked as a whole (issue 21):

- file level: valid UTF-8; a regular file; a CSV header names each column once;
  a JSON object names each key once; a .jsonl file declares at most one theater,
  on its first line; a case file (`forecast init`, data/cases) must declare its
  theater on line 1 with the id of its file name;
- batch level: a theater is declared once (or identically), an evidence row
  appears once, a theater has one outcome;
- window rules against the theater (declared in the batch or already stored):
  see `window_problems`; and an outcome already stored is never replaced by a
  different one: it must be retracted first (`forecast retract`).
"""

from __future__ import annotations

import csv
import datetime as dt
import io
import json
from dataclasses import dataclass, field
from pathlib import Path

from pydantic import ValidationError

from forecast.schema import EVIDENCE_ADAPTER, MODEL_BY_KIND, Evidence, Theater
from forecast.window_rules import window_problems

NUMBER_FIELDS = {name for model in (*MODEL_BY_KIND.values(), Theater) for name, f in model.model_fields.items()
                 if "float" in str(f.annotation)}
BOOL_FIELDS = {name for model in MODEL_BY_KIND.values() for name, f in model.model_fields.items()
               if f.annotation is bool}


def _printable(text) -> str:
    """Text safe to print on any terminal (lone surrogates from bad paths or JSON escapes)."""
    return str(text).encode("utf-8", "backslashreplace").decode("utf-8")


@dataclass(frozen=True)
class Problem:
    file: str
    line: int
    field: str
    reason: str

    def __str__(self) -> str:
        return _printable(f"{self.file}:{self.line}: {self.field}: {self.reason}")


@dataclass
class Parsed:
    theaters: list[Theater] = field(default_factory=list)
    evidence: list[Evidence] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)
    warnings: list[Problem] = field(default_factory=list)
    where: list[tuple[str, int]] = field(default_factory=list)  # (file, line) of each evidence row
    theater_where: list[tuple[str, int]] = field(default_factory=list)  # (file, line) of each theater row


class InvalidInput(Exception):
    """Raised with every problem found; the CLI prints them and exits 2."""

    def __init__(self, problems: list[Problem]):
        self.problems = problems
        super().__init__("\n".join(map(str, problems)))


def read_file(path: Path, known_theaters, case_file: bool = False) -> Parsed:
    """Parse and validate one file; never raises for bad rows, collects them.

    `case_file`: hold the file to data/FORMAT.md's case-file rules (line 1 declares the
    theater, whose id is the file name).
    """
    path = Path(path)
    name = str(path)
    if path.suffix not in (".jsonl", ".csv"):
        return Parsed(problems=[Problem(name, 0, "file", "expected a .jsonl or .csv file")])
    if path.is_dir():
        return Parsed(problems=[Problem(name, 0, "file", "is a folder, not a case file")])
    if not path.is_file():
        return Parsed(problems=[Problem(name, 0, "file", "is not a regular file" if path.exists()
                                        else "no such file")])
    try:
        data = path.read_bytes()
    except OSError as err:
        return Parsed(problems=[Problem(name, 0, "file", f"cannot be read: {err.strerror or err}")])
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        line = data.count(b"\n", 0, err.start) + 1
        return Parsed(problems=[Problem(name, line, "file", f"not valid UTF-8 (byte {err.start} of the file); "
                                        "save it as UTF-8")])
    if path.suffix == ".jsonl":
        records = _jsonl_records(text)
    else:
        records = _csv_records(text)
    return _validate(name, records, known_theaters, jsonl=path.suffix == ".jsonl",
                     case_file=case_file, stem=path.stem)


def _no_duplicate_keys(pairs):
    out = {}
    for key, value in pairs:
        if key in out:
            raise ValueError(f"key {key!r} appears twice in one object")
        out[key] = value
    return out


def _jsonl_records(text: str):
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip() or line.lstrip().startswith("//"):
            continue
        try:
            record = json.loads(line, object_pairs_hook=_no_duplicate_keys)
        except json.JSONDecodeError as err:
            yield number, None, f"not valid JSON: {err.msg} at column {err.colno}"
            continue
        except (ValueError, RecursionError) as err:  # duplicate key, a number of > 4300 digits, deep nesting
            yield number, None, f"not valid JSON: {str(err)[:200] or type(err).__name__}"
            continue
        if not isinstance(record, dict):
            yield number, None, "a line must be one JSON object"
            continue
        yield number, record, None


_NUMBER_CHARS = set("0123456789+-.eE")


def _csv_value(name: str, value: str):
    """A spreadsheet cell as the JSON value it stands for: numbers and true/false by their field."""
    cell = value.strip()
    if name in NUMBER_FIELDS and cell and set(cell) <= _NUMBER_CHARS:
        try:
            return float(cell)  # "1e309" gives inf, which the schema refuses by name
        except ValueError:
            return cell
    if name in BOOL_FIELDS and cell.lower() in ("true", "false"):
        return cell.lower() == "true"
    return cell


def _csv_records(text: str):
    reader = csv.reader(io.StringIO(text, newline=""))
    try:
        header = next(reader, None)
        if header is None:
            return
        names = [h.strip() for h in header]
        repeated = sorted({n for n in names if names.count(n) > 1})
        if repeated:
            yield reader.line_num, None, (f"column(s) {', '.join(map(repr, repeated))} appear more than once in the "
                                          "header; each field is one column")
            return
        for cells in reader:
            line = reader.line_num
            if not any(c.strip() for c in cells):
                continue
            if len(cells) > len(names):
                yield line, None, "more cells than header columns"
                continue
            # Spreadsheet rows carry every column; an empty cell means "not given".
            yield line, {k: _csv_value(k, v) for k, v in zip(names, cells) if v.strip()}, None
    except csv.Error as err:
        yield reader.line_num, None, f"not valid CSV: {err}"


def _validate(file: str, records, known_theaters, jsonl: bool = False, case_file: bool = False,
              stem: str = "") -> Parsed:
    parsed = Parsed()
    file_theater: str | None = None
    declared: dict[str, int] = {}
    seen: dict[tuple, int] = {}
    first = True
    for line, record, error in records:
        is_first, first = first, False
        if error:
            parsed.problems.append(Problem(file, line, "line", error))
            continue
        kind = record.get("kind")
        if case_file and is_first and kind != "theater":
            parsed.problems.append(Problem(file, line, "kind", "line 1 of a case file declares the theater "
                                           "(data/FORMAT.md)"))
        try:
            if kind == "theater":
                theater = Theater.model_validate(record)
                if theater.id in declared:
                    parsed.problems.append(Problem(file, line, "id", f"theater {theater.id!r} is already declared "
                                                   f"on line {declared[theater.id]}"))
                    continue
                if jsonl and declared:
                    parsed.problems.append(Problem(file, line, "kind", f"a .jsonl case file declares one theater "
                                                   f"(line {next(iter(declared.values()))} did)"))
                    continue
                if jsonl and not is_first:
                    parsed.problems.append(Problem(file, line, "kind", "the theater must be declared on the file's "
                                                   "first line (data/FORMAT.md)"))
                    continue
                if jsonl and theater.id != stem:
                    message = f"{theater.id!r} is not the file name ({stem}.jsonl); FORMAT.md: id equals the file name"
                    # a problem for a case file (the batch is refused), a warning for an import
                    (parsed.problems if case_file else parsed.warnings).append(Problem(file, line, "id", message))
                declared[theater.id] = line
                parsed.theaters.append(theater)
                parsed.theater_where.append((file, line))
                file_theater = theater.id
                continue
            record = dict(record)
            record.setdefault("theater", file_theater)
            row = EVIDENCE_ADAPTER.validate_python(record)
        except ValidationError as err:
            parsed.problems.extend(_problems(file, line, err))
            continue
        except (TypeError, ValueError) as err:  # pragma: no cover - a value pydantic itself cannot handle
            parsed.problems.append(Problem(file, line, "row", f"cannot be read: {err}"))
            continue
        if row.theater not in set(known_theaters) | {t.id for t in parsed.theaters}:
            parsed.problems.append(Problem(file, line, "theater", f"unknown theater {row.theater!r}"))
            continue
        if row.key() in seen:
            parsed.problems.append(
                Problem(file, line, "row", f"duplicates line {seen[row.key()]} ({row.kind} {row.key()[2:]})")
            )
            continue
        seen[row.key()] = line
        parsed.evidence.append(row)
        parsed.where.append((file, line))
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
        if e["type"] == "value_error" and ": " in reason and reason.split(": ", 1)[0].isidentifier():
            field_name, reason = reason.split(": ", 1)  # cross-field checks name their field
        if e["type"] == "extra_forbidden":
            reason = "unknown field"
        out.append(Problem(file, line, field_name, reason))
    return out


# --- batch checks ---------------------------------------------------------------------------


def _batch_problems(total: Parsed, theaters: dict[str, Theater], stored_outcomes: dict, today) -> list[Problem]:
    """Checks across the files of a batch and against the store (see the module docstring)."""
    problems: list[Problem] = []
    first_decl: dict[str, tuple[Theater, tuple[str, int]]] = {}
    for theater, (file, line) in zip(total.theaters, total.theater_where):
        if theater.id in first_decl and first_decl[theater.id][0] != theater:
            other = first_decl[theater.id][1]
            problems.append(Problem(file, line, "id", f"theater {theater.id!r} is declared differently in "
                                    f"{other[0]}:{other[1]}"))
        first_decl.setdefault(theater.id, (theater, (file, line)))
    seen: dict[tuple, tuple[str, int]] = {}
    outcomes: dict[str, tuple[Evidence, tuple[str, int]]] = {}
    for row, (file, line) in zip(total.evidence, total.where):
        if row.key() in seen and seen[row.key()][0] != file:
            other = seen[row.key()]
            problems.append(Problem(file, line, "row", f"duplicates {other[0]}:{other[1]} ({row.kind})"))
        seen.setdefault(row.key(), (file, line))
        if row.kind == "outcome":
            if row.theater in outcomes and outcomes[row.theater][1][0] != file:
                other = outcomes[row.theater][1]
                problems.append(Problem(file, line, "outcome", f"theater {row.theater!r} already has an outcome in "
                                        f"{other[0]}:{other[1]}"))
            outcomes.setdefault(row.theater, (row, (file, line)))
    known = {**theaters, **{t: d[0] for t, d in first_decl.items()}}
    for theater_id, (row, (file, line)) in outcomes.items():
        stored = stored_outcomes.get(theater_id)
        if stored is not None and (stored[1].date, stored[1].escalated) != (row.date, row.escalated):
            what = "escalated" if stored[1].escalated else "ended"
            problems.append(Problem(file, line, "outcome", (
                f"{theater_id} already has an outcome ({what} on {stored[1].date}); a file does not replace it: "
                f"withdraw it first with `forecast retract {theater_id} {stored[0]} --reason ...`")))
    for row, (file, line) in zip(total.evidence, total.where):
        theater = known.get(row.theater)
        if theater is None:
            continue  # an unknown theater is reported by its file
        outcome = outcomes.get(row.theater, (None,))[0]
        if outcome is None and row.theater in stored_outcomes:
            outcome = stored_outcomes[row.theater][1]
        problems += [Problem(file, line, name, reason) for name, reason in window_problems(row, theater, outcome, today)]
    return problems


def read_paths(paths: list[Path], known_theaters, stored_outcomes: dict | None = None,
               case_files: bool = False, today: dt.date | None = None) -> Parsed:
    """Validate many files as one batch: theaters declared in any file are known to all.

    `known_theaters`: ids of the theaters already stored, or a dict id -> Theater (then rows
    for stored theaters are held to their windows as well). `stored_outcomes`: theater id ->
    (row id, outcome row) of the outcomes already stored (an import never replaces one).
    """
    stored = known_theaters if isinstance(known_theaters, dict) else {}
    total = Parsed()
    for path in paths:
        one = read_file(path, set(known_theaters) | {t.id for t in total.theaters}, case_file=case_files)
        total.theaters += one.theaters
        total.evidence += one.evidence
        total.problems += one.problems
        total.warnings += one.warnings
        total.where += one.where
        total.theater_where += one.theater_where
    total.problems += _batch_problems(total, stored, stored_outcomes or {}, today)
    return total


def case_files(root: Path) -> list[Path]:
    """The curated case files under data/, in a stable order."""
    return sorted((root / "cases").glob("*.jsonl"))


def _stored_row_problems(eng, parsed: Parsed, theaters: dict, outcomes: dict) -> list[Problem]:
    """A new outcome or a moved start must not leave rows already stored outside the window."""
    from forecast import store

    changed: dict[str, tuple[str, int]] = {}  # theater id -> where the batch changes its window
    for theater, where in zip(parsed.theaters, parsed.theater_where):
        if theater.id in theaters and theaters[theater.id].start != theater.start:
            changed.setdefault(theater.id, where)
    for row, where in zip(parsed.evidence, parsed.where):
        if row.kind == "outcome" and row.theater not in outcomes:
            changed.setdefault(row.theater, where)
    if not changed:
        return []
    declared = {t.id: t for t in parsed.theaters}
    new_outcomes = {r.theater: r for r in parsed.evidence if r.kind == "outcome"}
    in_batch = {r.key() for r in parsed.evidence}
    problems = []
    for theater_id, (file, line) in changed.items():
        theater = declared.get(theater_id, theaters.get(theater_id))
        outcome = new_outcomes.get(theater_id) or outcomes.get(theater_id, (None, None))[1]
        stored = [r for r in store.load_evidence(eng, theater_id) if r.key() not in in_batch]
        for row in stored:
            if row.kind == "outcome" and theater_id in new_outcomes:
                continue
            for name, reason in window_problems(row, theater, outcome):
                problems.append(Problem(file, line, "window", f"the stored {row.kind} row {store.row_id(row)} "
                                        f"would fall outside the new window ({name}: {reason}); retract it first"))
    return problems


def import_files(eng, paths: list[Path], origin: str, case_files: bool = False, warn=None):
    """Validate every file, then write all rows in one transaction or nothing.

    `warn`: called with each warning (a Problem that does not stop the import).
    """
    from forecast import store

    theaters = {t.id: t for t in store.load_theaters(eng)}
    outcomes = store.current_outcomes(eng)
    return _write_checked(eng, read_paths(paths, theaters, outcomes, case_files=case_files), theaters, outcomes,
                          origin, warn)


def read_records(label: str, records: list[dict], known_theaters, stored_outcomes: dict | None = None,
                 today: dt.date | None = None) -> Parsed:
    """Rows given as dicts (the page's form, `forecast add`, a what-if `--row`), validated exactly as the
    lines of a file: problems name `label`, the record's number and the field."""
    stored = known_theaters if isinstance(known_theaters, dict) else {}
    parsed = _validate(label, [(i, record, None) for i, record in enumerate(records, start=1)], set(known_theaters))
    parsed.problems += _batch_problems(parsed, stored, stored_outcomes or {}, today)
    return parsed


def import_records(eng, label: str, records: list[dict], origin: str, retractions: tuple = (), warn=None):
    """Validate rows given as dicts like a file's lines, then write them (and withdraw `retractions`) in one
    transaction, or nothing."""
    from forecast import store

    theaters = {t.id: t for t in store.load_theaters(eng)}
    outcomes = store.current_outcomes(eng)
    return _write_checked(eng, read_records(label, records, theaters, outcomes), theaters, outcomes, origin, warn,
                          retractions, log_inserts=True)


def _write_checked(eng, parsed: Parsed, theaters: dict, outcomes: dict, origin: str, warn=None,
                   retractions: tuple = (), log_inserts: bool = False):
    from forecast import store

    if not parsed.problems:
        parsed.problems += _stored_row_problems(eng, parsed, theaters, outcomes)
    if parsed.problems:
        raise InvalidInput(parsed.problems)
    for problem in parsed.warnings:
        if warn is not None:
            warn(problem)
    return store.write(eng, parsed.theaters, parsed.evidence, origin, retractions, log_inserts)
