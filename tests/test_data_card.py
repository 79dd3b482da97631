"""The data card (data/README.md) must describe the case files as they are.

The case table between the `case-table` markers and the totals line are
generated from data/cases/*.jsonl. These tests load the files through the real
import path (and into a real SQLite store) and check that the card still
matches. After editing a case file, regenerate the card's table with

    .venv/bin/python tests/test_data_card.py --write
"""

from __future__ import annotations

import json
import re
import sys
from collections import Counter
from pathlib import Path

import pytest

from forecast import ingest, store, store_schema
from forecast.schema import KINDS

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "data"
CARD = DATA / "README.md"
START, END = "<!-- case-table:start -->", "<!-- case-table:end -->"
HEADER = ("| id | name | outcome | start | outcome date | troops | unit_move | exercise | sign | claim | outcome "
          "| protocol | searches |")
ALIGN = "|---|---|---|---|---|--:|--:|--:|--:|--:|--:|---|--:|"
N_CELLS = 13
CARDS = DATA / "cards"
PROTOCOL_LINE = re.compile(r"^\*\*Protocol v1:\*\* (\d+) searches, (\d+) rows kept\.\s*$", re.M)
PROTOCOL_TOPICS = ("start", "outcome", "garrison", "troops", "units", "exercises", "medical", "bridging", "fuel_ammo",
                   "reserve_callup", "air_defence", "evacuation", "ultimatum", "claims")
TOTALS = re.compile(
    r"^\*\*Totals:\*\* (\d+) cases: (\d+) escalated, (\d+) not escalated\. "
    r"(\d+) evidence rows: " + ", ".join(rf"(\d+) {k}" for k in KINDS) + r"\.$",
    re.M,
)
FLAGSHIP = "russia-ukraine-2022"


# --- rendering (used by --write) and parsing the card --------------------------------


def load() -> ingest.Parsed:
    return ingest.read_paths(ingest.case_files(DATA), set())


def summarise(parsed: ingest.Parsed) -> dict[str, dict]:
    """id -> the card's view of a case: name, outcome, dates, evidence counts."""
    outcomes = {e.theater: e for e in parsed.evidence if e.kind == "outcome"}
    rows = {}
    for t in parsed.theaters:
        counts = Counter(e.kind for e in parsed.evidence if e.theater == t.id)
        o = outcomes.get(t.id)
        rows[t.id] = {
            "name": t.name,
            "outcome": "open" if o is None else ("escalated" if o.escalated else "none"),
            "start": t.start.isoformat(),
            "outcome_date": "" if o is None else o.date.isoformat(),
            "counts": {k: counts[k] for k in KINDS},
        }
    return rows


def protocol(tid: str) -> dict:
    """The recording protocol as the case's card states it: status, searches, rows kept, per-topic counts.

    status: "v1" (every topic searched), "partial" (a protocol table with topics not searched, or a card
    that says its re-recording is partial), "none" (not yet re-recorded to the protocol).
    """
    text = (CARDS / f"{tid}.md").read_text(encoding="utf-8")
    line = PROTOCOL_LINE.search(text)
    if line is None:
        partial = re.search(r"Re-recorded 2026-12-01 \(partial", text, re.I)
        return {"status": "partial" if partial else "none", "searches": None, "rows": None, "topics": {}}
    topics = {}
    for name, searches, rows in re.findall(r"^\| (\w+) \| (\d+) \| (\d+)\b[^|]*\|\s*$", text, re.M):
        topics[name] = (int(searches), int(rows))
    complete = set(topics) == set(PROTOCOL_TOPICS) and all(n > 0 for n, _ in topics.values())
    return {"status": "v1" if complete else "partial", "searches": int(line.group(1)), "rows": int(line.group(2)),
            "topics": topics}


def render_table(parsed: ingest.Parsed) -> str:
    lines = [HEADER, ALIGN]
    for tid, r in sorted(summarise(parsed).items()):
        p = protocol(tid)
        cells = [tid, r["name"].replace("|", "/"), r["outcome"], r["start"], r["outcome_date"]]
        cells += [str(r["counts"][k]) for k in KINDS]
        cells += [p["status"], "" if p["searches"] is None else str(p["searches"])]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def render_totals(parsed: ingest.Parsed) -> str:
    rows = summarise(parsed).values()
    escalated = sum(r["outcome"] == "escalated" for r in rows)
    none = sum(r["outcome"] == "none" for r in rows)
    by_kind = Counter(e.kind for e in parsed.evidence)
    return (f"**Totals:** {len(rows)} cases: {escalated} escalated, {none} not escalated. "
            f"{len(parsed.evidence)} evidence rows: " + ", ".join(f"{by_kind[k]} {k}" for k in KINDS) + ".")


def card_text() -> str:
    return CARD.read_text(encoding="utf-8")


def table_lines(text: str) -> list[str]:
    assert text.count(START) == 1 and text.count(END) == 1, "the card needs exactly one pair of case-table markers"
    body = text.split(START, 1)[1].split(END, 1)[0]
    return [line.strip() for line in body.strip().splitlines() if line.strip()]


def parse_table(text: str) -> dict[str, dict]:
    lines = table_lines(text)
    assert lines[0] == HEADER, f"header row must be exactly {HEADER!r}"
    assert re.fullmatch(r"\|(\s*:?-+:?\s*\|){%d}" % N_CELLS, lines[1]), "second line must be the alignment row"
    rows: dict[str, dict] = {}
    for line in lines[2:]:
        cells = [c.strip() for c in line.strip("|").split("|")]
        assert len(cells) == N_CELLS, f"expected {N_CELLS} cells: {line}"
        tid, name, outcome, start, outcome_date, *counts, status, searches = cells
        assert tid not in rows, f"duplicate table row for {tid}"
        rows[tid] = {
            "name": name,
            "outcome": outcome,
            "start": start,
            "outcome_date": outcome_date,
            "counts": dict(zip(KINDS, map(int, counts))),
            "protocol": status,
            "searches": int(searches) if searches else None,
        }
    return rows


# --- fixtures -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def parsed() -> ingest.Parsed:
    return load()


@pytest.fixture(scope="module")
def table() -> dict[str, dict]:
    return parse_table(card_text())


# --- the files load cleanly ------------------------------------------------------------


def test_every_case_file_imports_without_problems(parsed):
    assert ingest.case_files(DATA), "no case files found"
    assert parsed.problems == [], "\n".join(map(str, parsed.problems))


def test_one_theater_per_file_named_after_it(parsed):
    files = ingest.case_files(DATA)
    assert sorted(t.id for t in parsed.theaters) == sorted(p.stem for p in files)
    for path in files:
        first = json.loads(path.read_text(encoding="utf-8").splitlines()[0])
        assert first["kind"] == "theater" and first["id"] == path.stem, f"{path.name}: line 1 must declare its theater"


def test_every_row_has_a_source(parsed):
    for path in ingest.case_files(DATA):  # the raw lines, not only what the schema let through
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
            if not line.strip() or line.lstrip().startswith("//"):
                continue
            record = json.loads(line)
            assert isinstance(record.get("source"), str) and record["source"].strip(), f"{path.name}:{number}: no source"
    assert all(e.source.strip() for e in parsed.evidence)


def test_every_case_has_exactly_one_outcome(parsed):
    outcomes = Counter(e.theater for e in parsed.evidence if e.kind == "outcome")
    assert {t.id: outcomes[t.id] for t in parsed.theaters} == {t.id: 1 for t in parsed.theaters}


# --- the card's table matches the files ----------------------------------------------------


def test_table_ids_are_the_theater_ids(parsed, table):
    assert set(table) == {t.id for t in parsed.theaters}


def test_table_counts_per_kind_match_the_files(parsed, table):
    actual = summarise(parsed)
    for tid, row in table.items():
        assert row["counts"] == actual[tid]["counts"], f"{tid}: card {row['counts']} != files {actual[tid]['counts']}"


def test_table_outcomes_dates_and_names_match_the_files(parsed, table):
    actual = summarise(parsed)
    for tid, row in table.items():
        for key in ("outcome", "start", "outcome_date"):
            assert row[key] == actual[tid][key], f"{tid}: {key} is {row[key]!r} in the card, {actual[tid][key]!r} in the file"
        assert row["name"] == actual[tid]["name"].replace("|", "/")


def test_table_is_exactly_what_the_files_generate(parsed):
    assert "\n".join(table_lines(card_text())) == render_table(parsed), "regenerate: python tests/test_data_card.py --write"


def test_totals_line_matches(parsed, table):
    match = TOTALS.search(card_text())
    assert match, "the card needs a '**Totals:** N cases: ...' line"
    cases, escalated, none, rows, *per_kind = map(int, match.groups())
    assert cases == len(table) == len(parsed.theaters)
    assert escalated == sum(r["outcome"] == "escalated" for r in table.values())
    assert none == sum(r["outcome"] == "none" for r in table.values())
    assert escalated + none == cases
    assert rows == len(parsed.evidence)
    assert dict(zip(KINDS, per_kind)) == {k: sum(r["counts"][k] for r in table.values()) for k in KINDS}


def test_every_card_states_its_recording_protocol_and_its_counts_add_up(parsed):
    actual = summarise(parsed)
    for tid in actual:
        p = protocol(tid)
        if p["searches"] is None:
            continue  # not (fully) re-recorded yet: the table says so
        assert set(p["topics"]) == set(PROTOCOL_TOPICS), f"{tid}: the protocol table needs the 14 topics"
        assert sum(n for n, _ in p["topics"].values()) == p["searches"], f"{tid}: searches do not add up"
        kept = sum(rows for name, (_, rows) in p["topics"].items() if name != "start")  # start: the theater line
        assert kept == p["rows"], f"{tid}: rows kept do not add up ({kept} in the table, {p['rows']} stated)"
        assert p["rows"] == sum(actual[tid]["counts"].values()), f"{tid}: {p['rows']} rows kept, file has other"


# --- the reference class is big and balanced enough -------------------------------------------

RESERVED = ("us-iraq-2003", "turkey-syria-2019", "venezuela-us-2025", "russia-ukraine-border-2014", "zapad-2021",
            "zapad-2025", "taiwan-strait-2024", "taiwan-strait-2025", "israel-lebanon-2024", "israel-gaza-2023",
            "belarus-ukraine-2022", "serbia-kosovo-2022")


def test_reference_class_size_and_balance(table):
    outcomes = Counter(r["outcome"] for r in table.values())
    assert len(table) >= 55
    assert outcomes["escalated"] >= 24
    assert outcomes["none"] >= 24
    assert outcomes["open"] == 0, "every curated case must be closed"


def test_no_case_reserved_for_independent_evaluation(parsed):
    """Those crises score the engine elsewhere; none may be in the reference class (by id or by window)."""
    assert not set(RESERVED) & {t.id for t in parsed.theaters}
    reserved_windows = [  # (actor, target, years): the same crises under another id
        ("United States", "Iraq", {2002, 2003}), ("Turkey", "Syria", {2019}), ("United States", "Venezuela", {2025}),
        ("Russia", "Ukraine", {2014} - set()), ("Israel", "Lebanon", {2024}), ("Israel", "Gaza", {2023}),
        ("Belarus", "Ukraine", {2022, 2023}), ("Serbia", "Kosovo", {2022}), ("China", "Taiwan", {2024, 2025}),
    ]
    for t in parsed.theaters:
        if t.id == "crimea-2014":  # Crimea (Feb 2014) is in the class; the spring 2014 eastern build-up is not
            continue
        for actor, target, years in reserved_windows:
            assert not (actor in t.actor and target in t.target and t.start.year in years), f"{t.id}: reserved"
        assert not ("Zapad" in t.name and t.start.year in (2021, 2025)), f"{t.id}: reserved"


def test_flagship_has_many_troop_estimates_from_several_sources(parsed):
    troops = [e for e in parsed.evidence if e.theater == FLAGSHIP and e.kind == "troops"]
    assert len(troops) >= 15
    assert len({e.source for e in troops}) >= 4
    assert len({e.source_type for e in troops}) >= 3  # not all from one kind of source either


# --- the same numbers come out of a real store ------------------------------------------------


def _sqlite(tmp_path):
    eng = store.engine(f"sqlite:///{tmp_path / 'cards.db'}")
    store_schema.upgrade(eng)
    return eng


def test_store_import_matches_the_table(tmp_path, parsed, table):
    eng = _sqlite(tmp_path)
    files = ingest.case_files(DATA)
    result = ingest.import_files(eng, files, origin="test_data_card")
    assert result.as_dict() == {"inserted": len(parsed.theaters) + len(parsed.evidence), "updated": 0, "unchanged": 0}

    counts = store.evidence_counts(eng)
    assert set(counts) == set(table)
    for tid, row in table.items():
        assert {k: counts[tid][k] for k in KINDS} == row["counts"], tid

    summaries = {s["id"]: s for s in store.theater_summaries(eng)}
    assert set(summaries) == set(table)
    for tid, row in table.items():
        s = summaries[tid]
        assert s["outcome"] == row["outcome"], tid
        assert s["start"] == row["start"], tid
        assert (s["escalation_date"] or s["end_date"]) == row["outcome_date"], tid
        assert s["evidence"] == row["counts"], tid

    again = ingest.import_files(eng, files, origin="test_data_card")  # idempotent, as the card says
    assert again.as_dict() == {"inserted": 0, "updated": 0, "unchanged": result.inserted}


def test_forecast_init_loads_the_card_s_cases(tmp_path, monkeypatch, table):
    from typer.testing import CliRunner

    from forecast.cli import app

    monkeypatch.setenv("FORECAST_DB_URL", f"sqlite:///{tmp_path / 'init.db'}")
    monkeypatch.setenv("FORECAST_DATA_DIR", str(DATA))
    runner = CliRunner()
    init = runner.invoke(app, ["init", "--json"])
    assert init.exit_code == 0, init.output
    assert json.loads(init.stdout)["files"] == len(table)
    shown = runner.invoke(app, ["theaters", "--json"])
    assert shown.exit_code == 0, shown.output
    rows = {r["id"]: r for r in json.loads(shown.stdout)}
    assert {tid: (r["outcome"], r["start"], r["evidence"]) for tid, r in rows.items()} == {
        tid: (r["outcome"], r["start"], r["counts"]) for tid, r in table.items()
    }


# --- regenerate the card's table ---------------------------------------------------------------


def write_card() -> None:
    parsed = load()
    if parsed.problems:
        sys.exit("\n".join(map(str, parsed.problems)))
    text = card_text()
    head, rest = text.split(START, 1)
    _, tail = rest.split(END, 1)
    text = f"{head}{START}\n{render_table(parsed)}\n{END}{tail}"
    totals = render_totals(parsed)
    text, n = TOTALS.subn(totals, text)
    if n == 0:
        text, n = re.subn(r"^TOTALS_PLACEHOLDER$", totals, text, flags=re.M)
    if n != 1:
        sys.exit("expected exactly one totals line in the card")
    CARD.write_text(text, encoding="utf-8")


if __name__ == "__main__":
    if sys.argv[1:] == ["--write"]:
        write_card()
    else:
        print(render_table(load()))
        print()
        print(render_totals(load()))
