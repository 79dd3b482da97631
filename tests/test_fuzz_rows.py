"""Fuzzing the import (issue 21): hostile rows of every kind never raise, they are accepted or named.

Hypothesis builds case files (JSON Lines and CSV) from valid rows of every kind, then replaces,
drops and adds fields with hostile values: NaN, ±inf, 1e309, huge and negative numbers,
numbers as strings, bools, epoch integers, lists and objects, dates in year 1 or 9999 or
outside the crisis window, lone surrogates, control characters, and files with invalid
UTF-8 bytes. For every file the import either accepts valid data (finite numbers, dates in
bounds and in the window, strict JSON on the way out) or reports problems that each name
file:line: field; it never raises. Fast lane: a few seconds.
"""

from __future__ import annotations

import csv
import datetime as dt
import io
import json
import math

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from forecast import ingest, store, store_schema, window_rules
from forecast.schema import FIRST_DAY, KINDS, LAST_DAY

from conftest import example_rows

THEATER = {"kind": "theater", "id": "fuzz-2025", "name": "Fuzz", "actor": "A", "target": "B",
           "start": "2025-01-01", "source": "Test Gazette", "garrison": 1000, "garrison_source": "G"}
VALID = example_rows(2025, "S")
assert set(VALID) == set(KINDS)

HOSTILE = st.one_of(
    st.none(), st.booleans(),
    st.integers(min_value=-10**20, max_value=10**20),
    st.sampled_from([10**400, -1, 0, 1738540800, 50_000_001, 2**63]),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([float("inf"), float("-inf"), float("nan"), 1e309, -1e309, 5e-324, -0.0]),
    st.sampled_from(["1000", "true", "false", "yes", "1", "inf", "-inf", "NaN", "Infinity", "1e309", "", " ",
                     "2025-01-10", "2025-02-30", "0001-01-01", "9999-12-31", "1899-12-31", "2101-01-01",
                     "2024-06-01", "2025-12-31", "10/01/2025", "\ud800", "a\x00b", "\x1b[31m", "<script>", "`",
                     "media", "arrive", "medical", "withdrawal", "theater", "fuzz-2025", "russia-ukraine-2022"]),
    st.text(max_size=12),
    st.dates(min_value=dt.date(1, 1, 1), max_value=dt.date(9999, 12, 31)).map(str),
    st.dates(min_value=dt.date(2024, 1, 1), max_value=dt.date(2025, 6, 1)).map(str),
    st.lists(st.integers(), max_size=2),
    st.dictionaries(st.text(max_size=3), st.integers(), max_size=2),
)
FIELDS = sorted({f for row in [THEATER, *VALID.values()] for f in row} | {"reported", "date_precision", "notes",
                                                                          "url", "theater", "colour"})


@st.composite
def hostile_row(draw, template: dict) -> dict:
    row = dict(template)
    for name in draw(st.lists(st.sampled_from(FIELDS), max_size=4, unique=True)):
        action = draw(st.sampled_from(["replace", "replace", "replace", "drop"]))
        if action == "drop":
            row.pop(name, None)
        else:
            row[name] = draw(HOSTILE)
    return row


@st.composite
def case_file(draw) -> tuple[str, bytes]:
    """(suffix, file bytes) of a hostile case file."""
    theater = draw(st.one_of(st.just(dict(THEATER)), hostile_row(THEATER)))
    kinds = draw(st.lists(st.sampled_from([*KINDS, "theater", "rumour"]), min_size=0, max_size=6))
    rows = [theater]
    for kind in kinds:
        template = THEATER if kind == "theater" else VALID.get(kind, {**VALID["sign"], "kind": kind})
        rows.append(draw(st.one_of(st.just(dict(template)), st.just(dict(template)), hostile_row(template))))
    suffix = draw(st.sampled_from([".jsonl", ".jsonl", ".csv"]))
    if suffix == ".jsonl":
        text = "\n".join(json.dumps(r, ensure_ascii=draw(st.booleans())) for r in rows) + "\n"
    else:
        text = _as_csv(rows, draw(st.booleans()))
    data = text.encode("utf-8", "surrogatepass")  # a lone surrogate becomes invalid UTF-8, as from a bad editor
    if draw(st.integers(0, 9)) == 0:
        at = draw(st.integers(0, len(data)))
        data = data[:at] + draw(st.sampled_from([b"\xff", b"\xe2\x82", b"\xc0\xaf", b"\x00"])) + data[at:]
    return suffix, data


def _as_csv(rows: list[dict], duplicate_header: bool) -> str:
    columns = sorted({k for r in rows for k in r})
    if duplicate_header and columns:
        columns.append(columns[0])
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(columns)
    for r in rows:
        writer.writerow(["" if r.get(c) is None else str(r[c]).lower() if isinstance(r.get(c), bool) else str(r[c])
                         for c in columns])
    return out.getvalue()


def _check(parsed: ingest.Parsed, path) -> None:
    for problem in parsed.problems + parsed.warnings:
        assert problem.file == str(path)
        assert isinstance(problem.line, int) and problem.line >= 0
        assert isinstance(problem.field, str) and problem.field
        assert isinstance(problem.reason, str) and problem.reason
        str(problem).encode("utf-8")  # printable on any terminal
    if parsed.problems:
        return
    theaters = {t.id: t for t in parsed.theaters}
    outcomes = {r.theater: r for r in parsed.evidence if r.kind == "outcome"}
    for row in parsed.evidence:
        doc = row.model_dump(mode="json")
        json.dumps(doc, allow_nan=False)  # strict JSON out
        for name in ("estimate", "low", "high", "distance_km"):
            if doc.get(name) is not None:
                assert math.isfinite(doc[name]) and not isinstance(doc[name], bool)
        for name in ("date", "reported", "start", "end"):
            if doc.get(name) is not None:
                assert FIRST_DAY <= dt.date.fromisoformat(doc[name]) <= LAST_DAY
        assert window_rules.window_problems(row, theaters[row.theater], outcomes.get(row.theater)) == []


FAST = settings(max_examples=int(__import__("os").environ.get("FUZZ_EXAMPLES", 250)), deadline=None, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return tmp_path_factory.mktemp("fuzz")


@FAST
@given(case_file())
def test_hostile_files_never_raise(folder, file):
    suffix, data = file
    path = folder / f"fuzz-2025{suffix}"
    path.write_bytes(data)
    parsed = ingest.read_paths([path], set())
    event("refused" if parsed.problems else f"accepted {len(parsed.evidence)} evidence row(s)")
    _check(parsed, path)


@pytest.fixture(scope="module")
def fuzz_store(tmp_path_factory):
    url = f"sqlite:///{tmp_path_factory.mktemp('fuzz-store') / 'forecast.db'}"
    eng = store.engine(url)
    store_schema.upgrade(eng)
    yield eng
    eng.dispose()


@settings(FAST, max_examples=int(__import__("os").environ.get("FUZZ_STORE_EXAMPLES", 60)))
@given(case_file())
def test_hostile_files_through_the_store(folder, fuzz_store, file):
    """What validates also writes and reads back; what does not is refused without a write."""
    suffix, data = file
    path = folder / f"fuzz-2025{suffix}"
    path.write_bytes(data)
    before = store.evidence_counts(fuzz_store)
    try:
        ingest.import_files(fuzz_store, [path], "fuzz")
        event("written")
    except ingest.InvalidInput as err:
        event("refused")
        assert err.problems
        assert store.evidence_counts(fuzz_store) == before
    for row in store.load_evidence(fuzz_store):
        json.dumps(row.model_dump(mode="json"), allow_nan=False)
