"""Validated, all-or-nothing import (DESIGN §4; issue 2 item 3), through the CLI and the store."""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path

import pytest

from forecast import ingest, store, store_schema

from conftest import all_counts, case_file, example_rows

FLAGSHIP = "russia-ukraine-2022"


def _lines(path: Path) -> list[str]:
    return path.read_text(encoding="utf-8").splitlines()


def _evidence_line_count(path: Path) -> int:
    return sum(1 for line in _lines(path)[1:] if line.strip() and not line.lstrip().startswith("//"))


def _edit_line(lines: list[str], number: int, **changes) -> None:
    """Change fields of the JSON object on 1-based line `number` (None deletes a field)."""
    record = json.loads(lines[number - 1])
    for key, value in changes.items():
        if value is None:
            record.pop(key, None)
        else:
            record[key] = value
    lines[number - 1] = json.dumps(record, ensure_ascii=False)


def _first_line(lines: list[str], predicate) -> int:
    for number, line in enumerate(lines, start=1):
        if line.strip() and not line.lstrip().startswith("//") and predicate(json.loads(line)):
            return number
    raise AssertionError("no such line")


def _write(path: Path, lines: list[str]) -> Path:
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def _bad_rows(stderr: str) -> list[tuple[str, int, str]]:
    """(file, line, field) of every problem the CLI printed (`file:line: field: reason`)."""
    return [(m[1], int(m[2]), m[3]) for m in re.finditer(r"^\s+(.+?):(\d+): ([\w ]+): ", stderr, re.M)]


# --- good and repeated imports ----------------------------------------------------------


def test_good_file_imports(cli_any):
    cli_any.ok("init")  # creates the store and loads everything
    path = case_file(FLAGSHIP)
    evidence = cli_any.json("evidence", FLAGSHIP)
    assert len(evidence) == _evidence_line_count(path)


def test_good_file_into_empty_store(cli_any):
    eng = cli_any.engine()
    store_schema.upgrade(eng)
    eng.dispose()
    path = case_file(FLAGSHIP)
    result = cli_any.json("import", path)
    assert result == {"inserted": 1 + _evidence_line_count(path), "updated": 0, "unchanged": 0}
    theaters = cli_any.json("theaters")
    assert [t["id"] for t in theaters] == [FLAGSHIP]
    assert sum(theaters[0]["evidence"].values()) == _evidence_line_count(path)


def test_same_file_again_changes_nothing(initialised_cli):
    before = all_counts(initialised_cli.db_url)
    path = case_file(FLAGSHIP)
    result = initialised_cli.json("import", path)
    assert result == {"inserted": 0, "updated": 0, "unchanged": 1 + _evidence_line_count(path)}
    assert all_counts(initialised_cli.db_url) == before
    # and twice more, for good measure, the whole data folder
    assert initialised_cli.json("import", path.parent)["inserted"] == 0
    assert all_counts(initialised_cli.db_url) == before


def test_changed_row_is_updated_and_recorded(initialised_cli, tmp_path):
    before = all_counts(initialised_cli.db_url)
    lines = _lines(case_file(FLAGSHIP))
    number = _first_line(lines, lambda r: r.get("kind") == "troops")
    old = json.loads(lines[number - 1])
    _edit_line(lines, number, estimate=old["estimate"] + 1234, notes="revised by a test")
    path = _write(tmp_path / f"{FLAGSHIP}.jsonl", lines)

    result = initialised_cli.json("import", path)
    assert result["inserted"] == 0 and result["updated"] == 1
    after = all_counts(initialised_cli.db_url)
    assert after["theaters"] == before["theaters"]  # updated in place, not duplicated
    assert after["changes"] == before["changes"] + 1

    troops = initialised_cli.json("evidence", FLAGSHIP, "--kind", "troops")
    revised = [r for r in troops if r["date"] == old["date"] and r["source"] == old["source"]]
    assert [r["estimate"] for r in revised] == [old["estimate"] + 1234]
    assert revised[0]["notes"] == "revised by a test"

    import sqlalchemy as sa

    eng = initialised_cli.engine()
    with eng.connect() as conn:
        change = conn.execute(sa.select(store_schema.evidence_changes).order_by(store_schema.evidence_changes.c.id.desc())
                              ).mappings().first()
    eng.dispose()
    assert change["table_name"] == "ev_troops"
    assert change["origin"] == str(path)
    assert json.loads(change["old"])["estimate"] == old["estimate"]
    assert json.loads(change["new"])["estimate"] == old["estimate"] + 1234

    # importing the revised file once more changes nothing further
    assert initialised_cli.json("import", path)["updated"] == 0
    assert all_counts(initialised_cli.db_url) == after


# --- the acceptance case: an impossible date ------------------------------------


def test_impossible_date_rejects_file_and_changes_nothing(initialised_cli, tmp_path):
    before = all_counts(initialised_cli.db_url)
    lines = _lines(case_file(FLAGSHIP))
    number = _first_line(lines, lambda r: r.get("kind") != "theater" and r["date"].startswith("2022-02-"))
    lines[number - 1] = re.sub(r'"date": "2022-02-\d\d"', '"date": "2022-02-31"', lines[number - 1], count=1)
    assert '"2022-02-31"' in lines[number - 1]
    # also change a good row, so a partial write would be visible
    other = _first_line(lines, lambda r: r.get("kind") == "troops")
    _edit_line(lines, other, notes="this edit must not land")
    path = _write(tmp_path / f"{FLAGSHIP}.jsonl", lines)

    result = initialised_cli("import", path)
    assert result.exit_code == 2
    assert result.stdout == ""
    assert _bad_rows(result.stderr) == [(str(path), number, "date")]
    assert f"{path}:{number}: date:" in result.stderr
    assert "nothing was written" in result.stderr
    assert all_counts(initialised_cli.db_url) == before
    troops = initialised_cli.json("evidence", FLAGSHIP, "--kind", "troops")
    assert all(r["notes"] != "this edit must not land" for r in troops)


def test_impossible_date_via_installed_console_script(run_console, tmp_path):
    """End to end through the installed `forecast` script: init, then the bad file."""
    init = run_console("init", "--json")
    assert init.returncode == 0, init.stderr
    before = run_console("theaters", "--json")
    assert before.returncode == 0, before.stderr

    lines = _lines(case_file(FLAGSHIP))
    number = _first_line(lines, lambda r: r.get("kind") == "sign" and r["date"].startswith("2022-02-"))
    _edit_line(lines, number, date="2022-02-31")
    path = _write(tmp_path / "bad.jsonl", lines)
    bad = run_console("import", path)
    assert bad.returncode == 2, (bad.stdout, bad.stderr)
    assert f"{path}:{number}: date:" in bad.stderr
    assert "Traceback" not in bad.stderr
    after = run_console("theaters", "--json")
    assert json.loads(after.stdout) == json.loads(before.stdout)


def test_several_bad_rows_are_all_listed(initialised_cli, tmp_path):
    before = all_counts(initialised_cli.db_url)
    lines = _lines(case_file(FLAGSHIP))
    troops = [n for n, line in enumerate(lines, start=1) if '"kind": "troops"' in line]
    signs = [n for n, line in enumerate(lines, start=1) if '"kind": "sign"' in line]
    _edit_line(lines, troops[0], date="2021-13-01")
    _edit_line(lines, troops[1], estimate=-100)
    _edit_line(lines, signs[0], category="rumour")
    _edit_line(lines, signs[1], source=None)
    lines.insert(len(lines), "{not json")
    path = _write(tmp_path / "several.jsonl", lines)

    result = initialised_cli("import", path)
    assert result.exit_code == 2
    listed = _bad_rows(result.stderr)
    assert listed == [
        (str(path), troops[0], "date"),
        (str(path), troops[1], "estimate"),
        (str(path), signs[0], "category"),
        (str(path), signs[1], "source"),
        (str(path), len(lines), "line"),
    ]
    assert "5 bad row(s)" in result.stderr
    assert all_counts(initialised_cli.db_url) == before


def test_bad_file_in_a_folder_rejects_the_whole_batch(initialised_cli, tmp_path):
    """A folder import is one batch: a good file next to a bad one is not written either."""
    folder = tmp_path / "batch"
    folder.mkdir()
    good = _lines(case_file(FLAGSHIP))
    _edit_line(good, _first_line(good, lambda r: r.get("kind") == "troops"), notes="must not land")
    _write(folder / "a-good.jsonl", good)
    _write(folder / "b-bad.jsonl", [
        json.dumps({"kind": "troops", "theater": FLAGSHIP, "date": "2022-02-30", "estimate": 1,
                    "source": "x", "source_type": "media"})])
    before = all_counts(initialised_cli.db_url)
    result = initialised_cli("import", folder)
    assert result.exit_code == 2
    assert _bad_rows(result.stderr) == [(str(folder / "b-bad.jsonl"), 1, "date")]
    assert all_counts(initialised_cli.db_url) == before


# --- each validation rule names its field -----------------------------------------------

THEATER_LINE = {"kind": "theater", "id": "testland-2024", "name": "Testland", "actor": "A", "target": "B",
                "start": "2024-01-01", "source": "Test Gazette"}
GOOD_ROWS = example_rows(2024, "Test Gazette")

BAD_CASES = {
    # id: (row, field the error must name)
    "impossible-date": ({**GOOD_ROWS["troops"], "date": "2022-02-31"}, "date"),
    "not-a-date": ({**GOOD_ROWS["sign"], "date": "last Tuesday"}, "date"),
    "negative-estimate": ({**GOOD_ROWS["troops"], "estimate": -5000, "low": None, "high": None}, "estimate"),
    "zero-estimate": ({**GOOD_ROWS["troops"], "estimate": 0, "low": None, "high": None}, "estimate"),
    "negative-low": ({**GOOD_ROWS["troops"], "low": -1}, "low"),
    "negative-distance": ({**GOOD_ROWS["unit_move"], "distance_km": -800}, "distance_km"),
    "low-above-estimate": ({**GOOD_ROWS["troops"], "low": 5500}, "low"),
    "high-below-estimate": ({**GOOD_ROWS["troops"], "high": 4500}, "high"),
    "exercise-end-before-start": ({**GOOD_ROWS["exercise"], "end": "2024-01-19"}, "end"),
    "unknown-kind": ({**GOOD_ROWS["sign"], "kind": "rumour"}, "kind"),
    "missing-kind": ({k: v for k, v in GOOD_ROWS["sign"].items() if k != "kind"}, "kind"),
    "unknown-sign-category": ({**GOOD_ROWS["sign"], "category": "horoscope"}, "category"),
    "unknown-source-type": ({**GOOD_ROWS["troops"], "source_type": "rumour"}, "source_type"),
    "unknown-claim-type": ({**GOOD_ROWS["claim"], "claim_type": "surrender"}, "claim_type"),
    "unknown-direction": ({**GOOD_ROWS["unit_move"], "direction": "sideways"}, "direction"),
    "unknown-field": ({**GOOD_ROWS["sign"], "colour": "red"}, "colour"),
    "empty-source": ({**GOOD_ROWS["sign"], "source": ""}, "source"),
    "missing-source": ({k: v for k, v in GOOD_ROWS["sign"].items() if k != "source"}, "source"),
    "reported-before-date": ({**GOOD_ROWS["sign"], "reported": "2024-01-01"}, "reported"),
    "unknown-theater": ({**GOOD_ROWS["sign"], "theater": "atlantis-1999"}, "theater"),
}


@pytest.mark.parametrize("case", list(BAD_CASES))
def test_bad_row_is_rejected_with_its_field(cli, tmp_path, case):
    row, field = BAD_CASES[case]
    row = {k: v for k, v in row.items() if v is not None}
    cli.ok("init")
    before = all_counts(cli.db_url)
    lines = [json.dumps(THEATER_LINE), *(json.dumps(r) for r in GOOD_ROWS.values()), json.dumps(row)]
    path = _write(tmp_path / "case.jsonl", lines)

    result = cli("import", path)
    assert result.exit_code == 2, result.stdout
    assert _bad_rows(result.stderr) == [(str(path), len(lines), field)], result.stderr
    assert all_counts(cli.db_url) == before
    assert "testland-2024" not in {t["id"] for t in cli.json("theaters")}


def test_good_rows_of_every_kind_import(cli, tmp_path):
    """The control for the bad cases above: the same file without the bad row imports."""
    cli.ok("init")
    lines = [json.dumps(THEATER_LINE), *(json.dumps(r) for r in GOOD_ROWS.values())]
    result = cli.json("import", _write(tmp_path / "case.jsonl", lines))
    assert result == {"inserted": 1 + len(GOOD_ROWS), "updated": 0, "unchanged": 0}
    (theater,) = [t for t in cli.json("theaters") if t["id"] == "testland-2024"]
    assert theater["evidence"] == {k: 1 for k in GOOD_ROWS}
    assert theater["outcome"] == "none"


def test_unknown_theater_in_store_import(initialised_cli, tmp_path):
    """A row for a theater neither in the store nor declared in the file is refused."""
    path = _write(tmp_path / "orphan.jsonl", [json.dumps({**GOOD_ROWS["troops"], "theater": "atlantis-1999"})])
    result = initialised_cli("import", path)
    assert result.exit_code == 2
    assert _bad_rows(result.stderr) == [(str(path), 1, "theater")]
    assert "atlantis-1999" in result.stderr


def test_evidence_for_a_theater_already_in_the_store(initialised_cli, tmp_path):
    """A file without a theater line may add rows to a theater the store knows."""
    row = {**GOOD_ROWS["sign"], "theater": FLAGSHIP, "date": "2022-02-20", "description": "a test sign"}
    path = _write(tmp_path / "extra.jsonl", [json.dumps(row)])
    assert initialised_cli.json("import", path)["inserted"] == 1


def test_missing_path_and_wrong_suffix(initialised_cli, tmp_path):
    missing = initialised_cli("import", tmp_path / "nope.jsonl")
    assert missing.exit_code == 2 and "nope.jsonl" in missing.stderr
    other = tmp_path / "notes.txt"
    other.write_text("hello\n")
    wrong = initialised_cli("import", other)
    assert wrong.exit_code == 2 and "notes.txt" in wrong.stderr


def test_import_needs_an_initialised_store(cli):
    result = cli("import", case_file(FLAGSHIP))
    assert result.exit_code != 0
    assert "forecast init" in result.stderr


def test_read_file_collects_problems_without_raising(tmp_path):
    lines = [json.dumps(THEATER_LINE), json.dumps(BAD_CASES["impossible-date"][0]),
             json.dumps(BAD_CASES["exercise-end-before-start"][0])]
    parsed = ingest.read_file(_write(tmp_path / "x.jsonl", lines), set())
    assert [(p.line, p.field) for p in parsed.problems] == [(2, "date"), (3, "end")]
    assert all(p.file == str(tmp_path / "x.jsonl") for p in parsed.problems)
    eng = store.engine()
    store_schema.upgrade(eng)
    with pytest.raises(ingest.InvalidInput) as err:
        ingest.import_files(eng, [tmp_path / "x.jsonl"], "test")
    assert len(err.value.problems) == 2
    assert store.theater_ids(eng) == set()
    eng.dispose()


# --- CSV ----------------------------------------------------------------------------------

CSV_COLUMNS = ["kind", "theater", "id", "name", "actor", "target", "start", "end", "date", "reported",
               "source", "source_type", "estimate", "low", "high", "unit", "direction", "home_district",
               "distance_km", "category", "description", "claim_type", "verified", "verified_by",
               "announced_by", "escalated", "notes"]


def _write_csv(path: Path, rows: list[dict]) -> Path:
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=CSV_COLUMNS)
        writer.writeheader()
        for row in rows:
            writer.writerow({k: ("" if v is None else str(v).lower() if isinstance(v, bool) else v)
                             for k, v in row.items()})
    return path


def _csv_rows() -> list[dict]:
    """A spreadsheet export: a new theater and one row of every kind, every cell a string."""
    theater = dict(THEATER_LINE, id="csvland-2024", name="CSV land")
    rows = [{**r, "theater": "csvland-2024"} for r in GOOD_ROWS.values()]
    return [theater, *rows]


def test_csv_import(cli_any, tmp_path):
    cli_any.ok("init")
    path = _write_csv(tmp_path / "sheet.csv", _csv_rows())
    result = cli_any.json("import", path)
    assert result == {"inserted": 1 + len(GOOD_ROWS), "updated": 0, "unchanged": 0}

    (theater,) = [t for t in cli_any.json("theaters") if t["id"] == "csvland-2024"]
    assert theater["evidence"] == {k: 1 for k in GOOD_ROWS}
    rows = {r["kind"]: r for r in cli_any.json("evidence", "csvland-2024")}
    assert rows["troops"]["estimate"] == 5000 and rows["troops"]["low"] == 4000
    assert rows["claim"]["verified"] is False
    assert rows["outcome"]["escalated"] is False
    assert rows["exercise"]["end"] == "2024-01-30"
    assert rows["unit_move"]["distance_km"] == 800
    assert rows["sign"]["reported"] is None  # an empty cell is "not given"

    again = cli_any.json("import", path)
    assert again == {"inserted": 0, "updated": 0, "unchanged": 1 + len(GOOD_ROWS)}


def test_csv_rows_without_theater_cell_belong_to_the_files_theater(cli, tmp_path):
    cli.ok("init")
    rows = _csv_rows()
    for row in rows[1:]:
        row.pop("theater")
    path = _write_csv(tmp_path / "sheet.csv", rows)
    assert cli.json("import", path)["inserted"] == 1 + len(GOOD_ROWS)
    assert len(cli.json("evidence", "csvland-2024")) == len(GOOD_ROWS)


def test_csv_same_facts_as_jsonl_match(cli, tmp_path):
    """A CSV export of rows already imported from a case file is recognised as the same rows."""
    cli.ok("init")
    jsonl = [json.dumps(THEATER_LINE), *(json.dumps(r) for r in GOOD_ROWS.values())]
    cli.ok("import", _write(tmp_path / "a.jsonl", jsonl))
    rows = [THEATER_LINE, *({**r, "theater": "testland-2024"} for r in GOOD_ROWS.values())]
    result = cli.json("import", _write_csv(tmp_path / "a.csv", rows))
    assert result == {"inserted": 0, "updated": 0, "unchanged": 1 + len(GOOD_ROWS)}


def test_bad_csv_names_line_and_field(initialised_cli, tmp_path):
    before = all_counts(initialised_cli.db_url)
    rows = _csv_rows()
    rows[1]["estimate"] = "lots"  # troops (line 3 of the file: header, theater, troops)
    rows[3]["end"] = "2024-01-01"  # exercise end < start (line 5)
    path = _write_csv(tmp_path / "sheet.csv", rows)
    result = initialised_cli("import", path)
    assert result.exit_code == 2
    assert _bad_rows(result.stderr) == [(str(path), 3, "estimate"), (str(path), 5, "end")]
    assert all_counts(initialised_cli.db_url) == before
