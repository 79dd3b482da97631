"""Hostile input (issue 21): every reproduction of the issue, as a regression test.

Nothing here samples a posterior: runs are synthetic folders written the way `runs.save`
writes them (a forecast document from `predict.summarise` of made-up draws), and item 1 is
checked where it failed, at `features.data_hash`, on a store holding the bad case.
"""

from __future__ import annotations

import csv
import datetime as dt
import json
import os
import stat
from pathlib import Path

import numpy as np
import pytest
import sqlalchemy as sa

from forecast import ingest, priors, runs, safe_write, schedule, store, store_schema
from forecast.schema import MODEL_BY_KIND, Theater

from conftest import CASES_DIR, FLAGSHIP, all_counts, case_file

THEATER = {"kind": "theater", "id": "probe-2025", "name": "Probe", "actor": "A", "target": "B",
           "start": "2025-01-01", "source": "Test Gazette"}
TROOPS = {"kind": "troops", "date": "2025-01-10", "estimate": 5000, "source_type": "media", "source": "Test Gazette"}
OUTCOME = {"kind": "outcome", "date": "2025-03-01", "escalated": False, "source": "Test Gazette"}


def _jsonl(path: Path, *rows, raw: list[str] | None = None) -> Path:
    lines = [r if isinstance(r, str) else json.dumps(r) for r in rows] + (raw or [])
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def _problems(stderr: str) -> list[tuple[int, str]]:
    """(line, field) of every `file:line: field: reason` the CLI printed."""
    import re

    return [(int(m[1]), m[2]) for m in re.finditer(r"^\s+.+?:(\d+): ([\w ]+): ", stderr, re.M)]


def _no_traceback(result) -> None:
    assert "Traceback" not in result.stderr and "Traceback" not in result.stdout, result.stderr
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)


def _refused(result, code: int = 2) -> None:
    _no_traceback(result)
    assert result.exit_code == code, (result.exit_code, result.stdout, result.stderr)
    assert result.stderr.strip(), "a refusal says why"


@pytest.fixture
def no_fit(monkeypatch):
    """Fail the test if anything starts a fit (the checks must come first)."""
    from forecast import model

    def refuse(*args, **kwargs):
        raise AssertionError("a fit was started")

    monkeypatch.setattr(model, "fit", refuse)


# --- item 1: one bad outcome breaks every refit -----------------------------------------------


def test_outcome_before_start_is_refused_at_import(initialised_cli, tmp_path):
    before = all_counts(initialised_cli.db_url)
    path = _jsonl(tmp_path / "probe-closed.jsonl", {**THEATER, "id": "probe-closed"},
                  {**OUTCOME, "date": "2024-06-01", "escalated": True})
    result = initialised_cli("import", path)
    _refused(result)
    assert _problems(result.stderr) == [(2, "date")]
    assert "before probe-closed starts" in result.stderr
    assert all_counts(initialised_cli.db_url) == before


def test_a_stored_outcome_before_start_breaks_no_other_fit(initialised_store):
    """A store written before the rule (here: by store.write directly) still assembles and hashes every fit."""
    from forecast import dataset
    from forecast.features import data_hash

    eng = store.engine(initialised_store)
    bad = Theater.model_validate({**THEATER, "id": "probe-closed"})
    outcome = MODEL_BY_KIND["outcome"].model_validate({**OUTCOME, "theater": "probe-closed", "date": "2024-06-01",
                                                       "escalated": True})
    store.write(eng, [bad], [outcome], "written before the window rules")
    panels, _ = dataset.from_store(eng, FLAGSHIP, dt.date(2022, 2, 15))
    assert "probe-closed" in [p.id for p in panels]  # it joins the reference class ...
    assert len(next(p for p in panels if p.id == "probe-closed").days) == 0
    assert len(data_hash(panels)) == 16  # ... and no longer raises IndexError


# --- item 2: report -o never replaces what is not a regular file ------------------------------


def _fake_draws(as_of: str, seed: int = 0):
    import xarray as xr

    from forecast.features import INDICATORS

    rng = np.random.default_rng(seed)
    n, start = 40, np.datetime64(as_of, "D")
    days = start + np.arange(1, 91)
    history = start - 7 * np.arange(4)[::-1]
    return xr.Dataset(
        {"cumulative": (("draw", "day"), np.sort(rng.uniform(0, 0.4, (n, 90)), axis=1)),
         "baseline": (("draw",), rng.normal(-6, 0.3, n)),
         "contribution": (("draw", "indicator"), rng.normal(0, 0.2, (n, len(INDICATORS)))),
         "indicator_value": (("draw", "indicator"), rng.uniform(0, 1, (n, len(INDICATORS)))),
         "history_30": (("draw", "history_date"), rng.uniform(0, 0.3, (n, len(history))))},
        coords={"day": days, "indicator": list(INDICATORS), "history_date": history}, attrs={"as_of": as_of})


def fake_run(runs_dir: Path, theater: str = FLAGSHIP, run_id: str = "20260101T000000-aaaaaa",
             as_of: str = "2022-02-15", status: str = "published") -> Path:
    """A run folder as runs.save leaves it (no posterior files: show, runs and report do not read them)."""
    from forecast import predict

    folder = runs_dir / theater / run_id
    folder.mkdir(parents=True)
    profile = priors.load("default")
    manifest = {"run_id": run_id, "theater": theater, "as_of": as_of, "created_at": run_id[:15],
                "status": status, "reason": None if status == "published" else "max R-hat 1.2 > 1.01",
                "prior_profile": profile.name, "prior_hash": profile.hash, "data_hash": "0" * 16,
                "code_version": "test", "reference_class": [], "sampler": {},
                "diagnostics": {"r_hat_max": 1.0, "ess_bulk_min": 900.0, "divergences": 0,
                                "sampling_seconds": 1.0}}
    (folder / "forecast.json").write_text(json.dumps(predict.summarise(_fake_draws(as_of))), encoding="utf-8")
    (folder / "profile.toml").write_text(profile.text, encoding="utf-8")
    (folder / runs.MANIFEST).write_text(json.dumps(manifest), encoding="utf-8")
    return folder


@pytest.fixture
def published(initialised_cli, runs_dir):
    fake_run(runs_dir)
    return initialised_cli


def _special_targets(tmp_path: Path) -> dict[str, Path]:
    victim = tmp_path / "victim.txt"
    victim.write_text("not the report's", encoding="utf-8")
    targets = {"fifo": tmp_path / "fifo", "symlink": tmp_path / "link.html", "folder": tmp_path / "folder.html"}
    os.mkfifo(targets["fifo"])
    targets["symlink"].symlink_to(victim)
    targets["folder"].mkdir()
    if os.geteuid() == 0:  # a character device like /dev/full (1, 7), made in tmp
        targets["device"] = tmp_path / "full"
        os.mknod(targets["device"], stat.S_IFCHR | 0o600, os.makedev(1, 7))
    return targets


def _kind(path: Path) -> int:
    return stat.S_IFMT(os.lstat(path).st_mode)


def test_report_refuses_to_replace_a_device_fifo_symlink_or_folder(published, tmp_path):
    targets = _special_targets(tmp_path)
    for name, path in targets.items():
        kind = _kind(path)
        result = published("report", FLAGSHIP, "--format", "json", "-o", path)
        _refused(result)
        assert str(path) in result.stderr, name
        assert _kind(path) == kind, f"{name} was replaced"
    assert (tmp_path / "victim.txt").read_text(encoding="utf-8") == "not the report's"
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]
    # the control: a regular file is replaced, atomically
    regular = tmp_path / "report.json"
    regular.write_text("old", encoding="utf-8")
    published.ok("report", FLAGSHIP, "--format", "json", "-o", regular)
    assert json.loads(regular.read_text(encoding="utf-8"))["run"]["run_id"] == "20260101T000000-aaaaaa"


def test_safe_write_refuses_special_files_and_profiles_use_it(tmp_path, monkeypatch):
    for path in _special_targets(tmp_path).values():
        with pytest.raises(safe_write.UnsafeTarget, match="refusing"):
            safe_write.write_text(path, "x")
    safe_write.write_text(tmp_path / "new.txt", "x")
    assert (tmp_path / "new.txt").read_text() == "x"
    profile = priors.parse(priors.load("default").text.replace('name = "default"', 'name = "mine"'))
    monkeypatch.setenv("FORECAST_PRIORS_DIR", str(tmp_path))
    (tmp_path / "mine.toml").symlink_to(tmp_path / "victim.txt")
    with pytest.raises(safe_write.UnsafeTarget):
        priors.save(profile, overwrite=True)
    assert (tmp_path / "victim.txt").read_text(encoding="utf-8") == "not the report's"
    with pytest.raises(safe_write.UnsafeTarget, match="already exists"):
        safe_write.check_absent(tmp_path / "new.txt")


# --- item 3: non-finite and coerced numbers -----------------------------------------------------

BAD_VALUES = {
    # id: (row, field named)
    "Infinity": ('{"kind": "troops", "date": "2025-01-10", "estimate": Infinity, "source_type": "media", '
                 '"source": "S"}', "estimate"),
    "1e309": ('{"kind": "troops", "date": "2025-01-10", "estimate": 1e309, "source_type": "media", "source": "S"}',
              "estimate"),
    "NaN": ('{"kind": "troops", "date": "2025-01-10", "estimate": NaN, "source_type": "media", "source": "S"}',
            "estimate"),
    "huge-int": ('{"kind": "troops", "date": "2025-01-10", "estimate": 1' + "0" * 400 + ', "source_type": "media", '
                 '"source": "S"}', "estimate"),
    "absurd-personnel": ({**TROOPS, "estimate": 1e12}, "estimate"),
    "string-number": ({**TROOPS, "estimate": "1000"}, "estimate"),
    "bool-number": ({**TROOPS, "estimate": True}, "estimate"),
    "string-bool": ({"kind": "claim", "date": "2025-01-11", "claim_type": "withdrawal", "verified": "yes",
                     "source": "S"}, "verified"),
    "int-bool": ({"kind": "claim", "date": "2025-01-11", "claim_type": "withdrawal", "verified": 1,
                  "source": "S"}, "verified"),
    "epoch-date": ({**TROOPS, "date": 1738540800}, "date"),
    "inf-distance": ('{"kind": "unit_move", "date": "2025-01-11", "unit": "U", "direction": "arrive", '
                     '"distance_km": -Infinity, "source": "S"}', "distance_km"),
    "lone-surrogate": ('{"kind": "sign", "date": "2025-01-11", "category": "medical", "description": "\\ud800", '
                       '"source": "S"}', "description"),
    "nul-character": ({"kind": "sign", "date": "2025-01-11", "category": "medical", "description": "a\u0000b",
                       "source": "S"}, "description"),
    "duplicate-key": ('{"kind": "troops", "date": "2025-01-10", "estimate": 1, "estimate": 2, "source_type": "media", '
                      '"source": "S"}', "line"),
}


@pytest.mark.parametrize("case", list(BAD_VALUES))
def test_non_finite_and_coerced_values_are_refused(initialised_cli, tmp_path, case):
    row, field = BAD_VALUES[case]
    before = all_counts(initialised_cli.db_url)
    path = _jsonl(tmp_path / "probe-2025.jsonl", THEATER, TROOPS, row)
    result = initialised_cli("import", path)
    _refused(result)
    assert _problems(result.stderr) == [(3, field)], result.stderr
    assert all_counts(initialised_cli.db_url) == before


def _csv(path: Path, header: list[str], *rows: list) -> Path:
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows(rows)
    return path


CSV_HEADER = ["kind", "id", "name", "actor", "target", "start", "date", "source", "estimate", "source_type",
              "claim_type", "verified"]
CSV_THEATER = ["theater", "probe-2025", "Probe", "A", "B", "2025-01-01", "", "Test Gazette", "", "", "", ""]


@pytest.mark.parametrize("cell,column", [("inf", "estimate"), ("1e309", "estimate"), ("nan", "estimate"),
                                         ("5,000", "estimate"), ("yes", "verified"), ("1", "verified")])
def test_csv_non_finite_and_non_boolean_cells_are_refused(initialised_cli, tmp_path, cell, column):
    troops = ["troops", "", "", "", "", "", "2025-01-10", "S", "5000", "media", "", ""]
    claim = ["claim", "", "", "", "", "", "2025-01-11", "S", "", "", "withdrawal", "false"]
    row = troops if column == "estimate" else claim
    row[CSV_HEADER.index(column)] = cell
    result = initialised_cli("import", _csv(tmp_path / "sheet.csv", CSV_HEADER, CSV_THEATER, row))
    _refused(result)
    assert _problems(result.stderr) == [(3, column)], result.stderr


def test_evidence_json_is_strict_json(initialised_cli, tmp_path):
    """What imports prints back as standard JSON (no Infinity/NaN) with a row id for each row."""
    initialised_cli.ok("import", _jsonl(tmp_path / "probe-2025.jsonl", THEATER, TROOPS, OUTCOME))
    out = initialised_cli.ok("evidence", "probe-2025", "--json").stdout

    def refuse(name):
        raise AssertionError(f"{name} is not JSON")

    rows = json.loads(out, parse_constant=refuse)
    assert [r["kind"] for r in rows] == ["troops", "outcome"]
    assert all(len(r["row_id"]) == store.ROW_ID_LENGTH for r in rows)


PROFILE_EDITS = {
    "range-inf": ("range = [0.8, 2.5]", "range = [0.8, inf]"),
    "value-inf": ("value = 1.5", "value = inf"),
    "value-nan": ("value = 1.5", "value = nan"),
    "value-true": ("value = 1.5", "value = true"),
    "spread-inf": ("[theater_spread]\nvalue = 3", "[theater_spread]\nvalue = inf"),
    "spread-true": ("[theater_spread]\nvalue = 3", "[theater_spread]\nvalue = true"),
    "backtick-name": ('name = "default"', 'name = "evil` <b>x</b> `"'),
}


@pytest.mark.parametrize("case", list(PROFILE_EDITS))
def test_prior_profile_refuses_non_finite_and_bool_values(case):
    text = priors.load("default").text
    old, new = PROFILE_EDITS[case]
    if old not in text:  # find a real line of that shape in the default profile
        key = old.split(" = ")[0] if "\n" not in old else None
        pytest.skip(f"the default profile has no line {old!r} (key {key})")
    with pytest.raises(priors.ProfileError):
        priors.parse(text.replace(old, new, 1), "edited")


def test_prior_profile_edits_hit_real_lines():
    """Guard for the cases above: each edit changes the default profile (no silent skips)."""
    text = priors.load("default").text
    assert all(old in text for old, _ in PROFILE_EDITS.values()), [k for k, (o, _) in PROFILE_EDITS.items()
                                                                   if o not in text]


# --- item 4: one damaged run breaks nothing else -----------------------------------------------

DAMAGES = {
    "manifest-list": lambda f: (f / runs.MANIFEST).write_text("[]", encoding="utf-8"),
    "no-status": lambda f: _drop_key(f, "status"),
    "no-diagnostics": lambda f: _drop_key(f, "diagnostics"),
    "invalid-utf8": lambda f: (f / runs.MANIFEST).write_bytes(b'{"run_id": "\xff\xfe"}'),
    "truncated": lambda f: (f / runs.MANIFEST).write_text((f / runs.MANIFEST).read_text()[:40]),
    "no-manifest": lambda f: (f / runs.MANIFEST).unlink(),
    "no-profile": lambda f: (f / "profile.toml").unlink(),
    "no-forecast": lambda f: (f / "forecast.json").unlink(),
    "bad-profile": lambda f: (f / "profile.toml").write_text("value = = 1\n", encoding="utf-8"),
}


def _drop_key(folder: Path, key: str) -> None:
    manifest = json.loads((folder / runs.MANIFEST).read_text())
    del manifest[key]
    (folder / runs.MANIFEST).write_text(json.dumps(manifest))


@pytest.mark.parametrize("damage", list(DAMAGES))
def test_a_damaged_run_is_reported_and_skipped(initialised_cli, runs_dir, tmp_path, damage):
    good = fake_run(runs_dir, run_id="20260101T000000-aaaaaa")
    bad = fake_run(runs_dir, run_id="20260102T000000-bbbbbb")  # newer: it would be the current one
    DAMAGES[damage](bad)
    for args in (["show", FLAGSHIP, "--json"], ["runs", FLAGSHIP, "--json"],
                 ["report", FLAGSHIP, "-f", "json", "-o", tmp_path / "r.json"]):
        result = initialised_cli(*args)
        _no_traceback(result)
        assert result.exit_code == 0, (args, result.stderr)
        assert bad.name in result.stderr and "damaged" in result.stderr, (args, result.stderr)
    assert initialised_cli.json("show", FLAGSHIP)["run_id"] == good.name
    assert [r["run_id"] for r in initialised_cli.json("runs", FLAGSHIP)] == [good.name]


def test_only_damaged_runs_say_so_not_no_runs_yet(initialised_cli, runs_dir):
    bad = fake_run(runs_dir)
    DAMAGES["truncated"](bad)
    result = initialised_cli("runs", FLAGSHIP)
    assert result.exit_code == 0 and bad.name in result.stderr
    shown = initialised_cli("show", FLAGSHIP)
    _refused(shown, 1)
    assert bad.name in shown.stderr


def test_refit_all_retention_survives_damaged_runs(initialised_cli, runs_dir, monkeypatch):
    monkeypatch.setenv("FORECAST_KEEP_RUNS", "1")
    kept = [fake_run(runs_dir, run_id=f"2026010{i}T000000-aaaaa{i}") for i in range(1, 4)]
    damaged = []
    for i, damage in enumerate(DAMAGES):
        folder = fake_run(runs_dir, run_id=f"2025010{i}T000000-dddd0{i}")
        DAMAGES[damage](folder)
        damaged.append(folder)
    result = initialised_cli("refit", "--all", "--json")  # every bundled theater is closed: retention only
    _no_traceback(result)
    assert result.exit_code == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["pruned"] == [f"{FLAGSHIP}/{k.name}" for k in kept[:2]]
    assert all(f.is_dir() and f.name in result.stderr for f in damaged)  # reported, never deleted


def test_refit_all_logs_a_rust_backtrace_as_one_line(initialised_store, monkeypatch):
    panic = "PanicException: index out of bounds\n" + "\n".join(f"  {i}: nutpie::frame{i}" for i in range(16))
    monkeypatch.setattr(schedule, "open_theaters", lambda eng: ["probe-2025"])

    def crash(*args, **kwargs):
        raise RuntimeError(panic)

    monkeypatch.setattr(schedule, "refit_theater", crash)
    lines = []
    summary = schedule.refit_all(store.engine(initialised_store), keep=10, log=lines.append)
    assert len(lines) == 1 and "\n" not in lines[0]
    assert "index out of bounds" in lines[0] and "16 more lines" in lines[0]
    assert summary["exit_code"] == schedule.EXIT_FAILED
    assert panic in summary["theaters"][0]["traceback"]  # the whole backtrace stays in the summary


# --- item 5: dates outside the window, and retraction -------------------------------------------

WINDOW_CASES = {
    "year-1": ({**TROOPS, "date": "0001-01-01"}, "date"),
    "year-9999": ({**TROOPS, "date": "9999-12-31"}, "date"),
    "future": ({**TROOPS, "date": "2099-01-01"}, "date"),
    "reported-future": ({**TROOPS, "reported": "2099-01-01"}, "reported"),
    "before-start": ({**TROOPS, "date": "2024-12-31"}, "date"),
    "reported-before-start": ({**TROOPS, "date": "2024-12-20", "reported": "2024-12-30"}, "date"),
    "held-years-before-start": ({**TROOPS, "date": "2022-12-20", "reported": "2025-01-05"}, "date"),
    "sign-after-outcome": ({"kind": "sign", "date": "2025-03-02", "category": "medical", "description": "d",
                            "source": "S"}, "date"),
    "troops-long-after-outcome": ({**TROOPS, "date": "2025-04-15"}, "date"),
    "exercise-announced-years-before": ({"kind": "exercise", "date": "2023-01-01", "name": "E",
                                         "start": "2025-01-05", "end": "2025-01-20", "source": "S"}, "date"),
    "exercise-a-decade-long": ({"kind": "exercise", "date": "2025-01-02", "name": "E", "start": "2025-01-05",
                                "end": "2035-01-20", "source": "S"}, "end"),
}


@pytest.mark.parametrize("case", list(WINDOW_CASES))
def test_window_rules(initialised_cli, tmp_path, case):
    row, field = WINDOW_CASES[case]
    before = all_counts(initialised_cli.db_url)
    result = initialised_cli("import", _jsonl(tmp_path / "probe-2025.jsonl", THEATER, OUTCOME, row))
    _refused(result)
    assert set(_problems(result.stderr)) == {(3, field)}, result.stderr
    assert all_counts(initialised_cli.db_url) == before


def test_window_allows_what_the_bundled_cases_hold(initialised_cli, tmp_path):
    """Exercise schedules before the start, troop rows shortly after the outcome, a fact that held before
    the start but was first reported in the window (data/README.md "Evidence outside the window")."""
    rows = [{"kind": "exercise", "date": "2024-06-02", "name": "Early", "start": "2024-09-10", "end": "2025-03-20",
             "source": "S"}, {**TROOPS, "date": "2025-03-11"},
            {"kind": "unit_move", "date": "2024-12-24", "reported": "2025-01-01", "unit": "U", "direction": "arrive",
             "source": "S"}]
    assert initialised_cli.json("import", _jsonl(tmp_path / "probe-2025.jsonl", THEATER, OUTCOME, *rows))["inserted"] == 5


def test_window_rules_apply_to_theaters_already_stored(initialised_cli, tmp_path):
    """A later file of rows for a stored theater is held to that theater's window and outcome."""
    row = {"kind": "sign", "theater": FLAGSHIP, "date": "2022-03-01", "category": "medical", "description": "late",
           "source": "S"}
    result = initialised_cli("import", _jsonl(tmp_path / "extra.jsonl", row))
    _refused(result)
    assert _problems(result.stderr) == [(1, "date")] and "after the outcome" in result.stderr


def test_bundled_case_files_pass_the_case_file_rules():
    parsed = ingest.read_paths(ingest.case_files(CASES_DIR.parent), set(), case_files=True)
    assert parsed.problems == [] and parsed.warnings == []
    assert len(parsed.theaters) == len(list(CASES_DIR.glob("*.jsonl")))


def _outcome_row_id(cli, theater: str) -> str:
    (row,) = cli.json("evidence", theater, "--kind", "outcome")
    return row["row_id"]


def test_a_second_file_does_not_replace_an_outcome_until_it_is_retracted(initialised_cli, tmp_path):
    theater = "zapad-2017"
    lines = case_file(theater).read_text(encoding="utf-8").splitlines()
    changed = [line.replace('"date": "2017-09-30"', '"date": "2017-09-29"') if '"outcome"' in line else line
               for line in lines]
    path = tmp_path / f"{theater}.jsonl"
    path.write_text("\n".join(changed) + "\n", encoding="utf-8")
    before = all_counts(initialised_cli.db_url)
    refused = initialised_cli("import", path)
    _refused(refused)
    row_id = _outcome_row_id(initialised_cli, theater)
    assert "already has an outcome" in refused.stderr and f"forecast retract {theater} {row_id}" in refused.stderr
    assert all_counts(initialised_cli.db_url) == before

    initialised_cli.ok("retract", theater, row_id, "--reason", "end date was the announcement, not the pullback")
    assert {t["id"]: t for t in initialised_cli.json("theaters")}[theater]["outcome"] == "open"
    assert initialised_cli.json("import", path)["updated"] == 1  # the corrected outcome replaces the retracted one
    (outcome,) = initialised_cli.json("evidence", theater, "--kind", "outcome")
    assert outcome["date"] == "2017-09-29" and "retracted" not in outcome
    assert all_counts(initialised_cli.db_url)["changes"] == before["changes"] + 2  # retraction + correction


def test_retract_keeps_history_and_leaves_the_row_out_of_fits(initialised_cli, tmp_path):
    from forecast import dataset
    from forecast.features import data_hash

    wrong = {"kind": "troops", "theater": FLAGSHIP, "date": "2022-02-10", "estimate": 9_999_999,
             "source_type": "media", "source": "Typo Gazette"}
    as_of = dt.date(2022, 2, 15)
    eng = initialised_cli.engine()
    clean_hash = data_hash(dataset.from_store(eng, FLAGSHIP, as_of)[0])
    initialised_cli.ok("import", _jsonl(tmp_path / "typo.jsonl", wrong))
    assert data_hash(dataset.from_store(eng, FLAGSHIP, as_of)[0]) != clean_hash
    (row,) = [r for r in initialised_cli.json("evidence", FLAGSHIP, "--kind", "troops") if r["source"] == "Typo Gazette"]
    before = all_counts(initialised_cli.db_url)

    done = initialised_cli.json("retract", FLAGSHIP, row["row_id"], "--reason", "typo: 99,999", "--by", "analyst")
    assert done["row_id"] == row["row_id"] and done["retracted"]["by"] == "analyst"
    after = all_counts(initialised_cli.db_url)
    assert after["theaters"][FLAGSHIP]["troops"] == before["theaters"][FLAGSHIP]["troops"] - 1
    assert after["changes"] == before["changes"] + 1
    assert data_hash(dataset.from_store(eng, FLAGSHIP, as_of)[0]) == clean_hash  # fits no longer see it
    assert row["row_id"] not in {r["row_id"] for r in initialised_cli.json("evidence", FLAGSHIP)}
    listed = {r["row_id"]: r for r in initialised_cli.json("evidence", FLAGSHIP, "--retracted")}
    assert listed[row["row_id"]]["retracted"]["reason"] == "typo: 99,999"
    with eng.connect() as conn:
        change = conn.execute(sa.select(store_schema.evidence_changes).order_by(store_schema.evidence_changes.c.id.desc())).first()
    assert json.loads(change.old)["estimate"] == 9_999_999
    assert json.loads(change.new)["retracted"]["reason"] == "typo: 99,999"

    # the same file again leaves it retracted; retracting twice, unknown rows and no reason are refused
    assert initialised_cli.json("import", tmp_path / "typo.jsonl")["unchanged"] == 1
    assert row["row_id"] not in {r["row_id"] for r in initialised_cli.json("evidence", FLAGSHIP)}
    for args in ([FLAGSHIP, row["row_id"], "--reason", "again"], [FLAGSHIP, "deadbeefdeadbeef", "--reason", "x"],
                 [FLAGSHIP, "not-hex", "--reason", "x"], ["atlantis-1999", row["row_id"], "--reason", "x"],
                 [FLAGSHIP, row["row_id"], "--reason", "  "]):
        _refused(initialised_cli("retract", *args))
    eng.dispose()


def test_retraction_upgrades_an_old_store(db_url, cli_any):
    from test_store import _make_v1_store

    _make_v1_store(db_url)
    assert cli_any.json("init")["schema_to"] == store_schema.SCHEMA_VERSION == 6
    (sign, *_) = [r for r in cli_any.json("evidence", "testland-2024", "--kind", "sign")]
    cli_any.ok("retract", "testland-2024", sign["row_id"], "--reason", "test")
    assert len(cli_any.json("evidence", "testland-2024", "--kind", "sign")) == 1


# --- item 6: tracebacks become one clear line and an exit code ---------------------------------


def test_invalid_utf8_import_file(initialised_cli, tmp_path):
    path = tmp_path / "probe-2025.jsonl"
    path.write_bytes(json.dumps(THEATER).encode() + b"\n" + json.dumps(TROOPS).encode()[:-1] + b', "notes": "\xff"}\n')
    result = initialised_cli("import", path)
    _refused(result)
    assert _problems(result.stderr) == [(2, "file")] and "UTF-8" in result.stderr


def test_invalid_utf8_and_folder_profiles(initialised_cli, tmp_path, no_fit):
    bad = tmp_path / "bad.toml"
    bad.write_bytes(priors.load("default").text.encode() + b'\n# \xff\n')
    folder = tmp_path / "folder.toml"
    folder.mkdir()
    for path in (bad, folder):
        result = initialised_cli("refit", FLAGSHIP, "--priors", path)
        _refused(result)
        assert str(path) in result.stderr


def test_sub_folders_and_other_files_in_an_imported_folder_are_named(initialised_cli, tmp_path):
    folder = tmp_path / "batch"
    (folder / "nested.jsonl").mkdir(parents=True)
    (folder / "readme.txt").write_text("hello", encoding="utf-8")
    _jsonl(folder / "probe-2025.jsonl", THEATER, TROOPS)
    result = initialised_cli("import", folder)
    assert result.exit_code == 0, result.stderr
    assert "nested.jsonl: skipped: a sub-folder" in result.stderr and "readme.txt: skipped" in result.stderr
    only_dirs = tmp_path / "empty"
    (only_dirs / "x.csv").mkdir(parents=True)
    _refused(initialised_cli("import", only_dirs))
    # read directly, a folder named like a case file is a problem, not a traceback
    parsed = ingest.read_file(folder / "nested.jsonl", set())
    assert [(p.line, p.field) for p in parsed.problems] == [(0, "file")]


@pytest.mark.parametrize("url", ["sqlite:////nonexistent-folder-21/x.db", "garbage://", "not a url",
                                 "postgresql+psycopg://u:secret@127.0.0.1:1/db", "mysql://x/y", "NOT-SQLITE"])
@pytest.mark.parametrize("command", [["init"], ["theaters"], ["import", "FILE"]])
def test_bad_store_urls(cli, tmp_path, url, command):
    if url == "NOT-SQLITE":
        (tmp_path / "notes.db").write_text("this is not a database\n" * 100, encoding="utf-8")
        url = f"sqlite:///{tmp_path / 'notes.db'}"
    args = [str(_jsonl(tmp_path / "probe-2025.jsonl", THEATER)) if a == "FILE" else a for a in command]
    result = cli(*args, env={"FORECAST_DB_URL": url})
    _refused(result, 1)
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert "secret" not in result.stderr


@pytest.mark.parametrize("url", ["sqlite://", "sqlite:///", "sqlite:///:memory:"])
def test_in_memory_store_is_refused_for_writes(cli, tmp_path, url):
    for args in (["init"], ["import", _jsonl(tmp_path / "probe-2025.jsonl", THEATER)],
                 ["retract", FLAGSHIP, "0123456789ab", "--reason", "x"]):
        result = cli(*args, env={"FORECAST_DB_URL": url})
        _refused(result, 1)
        assert "in-memory" in result.stderr


@pytest.mark.parametrize("flag,value", [("--draws", "0"), ("--chains", "0"), ("--tune", "-1"), ("--draws", "-5"),
                                        ("--chains", "100000")])
def test_sampler_settings_are_checked_before_any_fit(initialised_cli, no_fit, flag, value):
    for args in ([FLAGSHIP, "--as-of", "2022-02-15"], ["--all"]):
        result = initialised_cli("refit", *args, flag, value)
        _refused(result)
        assert flag in result.stderr


def test_unwritable_runs_folder_is_found_before_fitting(initialised_cli, tmp_path, no_fit):
    blocker = tmp_path / "a-file"
    blocker.write_text("", encoding="utf-8")
    for args in ([FLAGSHIP, "--as-of", "2022-02-15"], ["--all"]):
        result = initialised_cli("refit", *args, env={"FORECAST_RUNS_DIR": str(blocker / "runs")})
        _refused(result, 1)
        assert "not writable" in result.stderr


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_read_only_runs_folder_is_found_before_fitting(initialised_cli, runs_dir, no_fit):
    runs_dir.chmod(0o555)
    try:
        result = initialised_cli("refit", FLAGSHIP, "--as-of", "2022-02-15")
        _refused(result, 1)
    finally:
        runs_dir.chmod(0o755)


# --- item 7: silent surprises -----------------------------------------------------------------


def test_csv_duplicated_header_is_refused(initialised_cli, tmp_path):
    header = CSV_HEADER + ["estimate"]
    path = _csv(tmp_path / "sheet.csv", header, CSV_THEATER + [""],
                ["troops", "", "", "", "", "", "2025-01-10", "S", "5000", "media", "", "", "6000"])
    result = initialised_cli("import", path)
    _refused(result)
    assert _problems(result.stderr) == [(1, "line")] and "'estimate'" in result.stderr


def test_two_theater_lines_for_one_id_are_refused(initialised_cli, tmp_path):
    for name, rows in {"probe-2025.jsonl": [THEATER, TROOPS, {**THEATER, "name": "Other"}],
                       "probe-2025.csv": None}.items():
        if rows is None:
            path = _csv(tmp_path / name, CSV_HEADER, CSV_THEATER, [*CSV_THEATER[:2], "Other", *CSV_THEATER[3:]])
            expected = [(3, "id")]
        else:
            path = _jsonl(tmp_path / name, *rows)
            expected = [(3, "id")]
        result = initialised_cli("import", path)
        _refused(result)
        assert _problems(result.stderr) == expected, result.stderr


def test_the_theater_line_comes_first(initialised_cli, tmp_path):
    result = initialised_cli("import", _jsonl(tmp_path / "probe-2025.jsonl", {**TROOPS, "theater": FLAGSHIP,
                                                                             "date": "2022-01-10"}, THEATER))
    _refused(result)
    assert _problems(result.stderr) == [(2, "kind")]


def test_two_files_declaring_one_theater_differently_are_refused(initialised_cli, tmp_path):
    folder = tmp_path / "batch"
    folder.mkdir()
    _jsonl(folder / "a.jsonl", THEATER)
    _jsonl(folder / "b.jsonl", {**THEATER, "start": "2025-01-02"})
    result = initialised_cli("import", folder)
    _refused(result)
    assert "declared differently" in result.stderr


def test_case_files_are_held_to_format_in_init(cli, tmp_path):
    data = tmp_path / "data"
    (data / "cases").mkdir(parents=True)
    _jsonl(data / "cases" / "wrong-name.jsonl", THEATER, TROOPS)
    result = cli("init", env={"FORECAST_DATA_DIR": str(data)})
    _refused(result)
    assert _problems(result.stderr) == [(1, "id")] and "file name" in result.stderr
    (data / "cases" / "wrong-name.jsonl").unlink()
    _jsonl(data / "cases" / "probe-2025.jsonl", "// a comment", {**TROOPS, "theater": "probe-2025"}, THEATER)
    result = cli("init", env={"FORECAST_DATA_DIR": str(data)})
    _refused(result)
    assert (2, "kind") in _problems(result.stderr)
    # and `forecast import` only warns about a file name that is not the id
    cli.ok("init")
    imported = cli("import", _jsonl(tmp_path / "other-name.jsonl", THEATER, TROOPS))
    assert imported.exit_code == 0 and "is not the file name" in imported.stderr


def test_concurrent_declaration_of_one_new_theater_is_retried(initialised_cli, tmp_path, monkeypatch):
    """Two imports declaring the same new theater: the loser's IntegrityError is retried, then it succeeds."""
    path = _jsonl(tmp_path / "probe-2025.jsonl", THEATER, TROOPS)
    real = store._write_once
    calls = []

    def collide_once(eng, *args):
        calls.append(1)
        if len(calls) == 1:  # the other import commits the theater first
            real(eng, [Theater.model_validate(THEATER)], [], "the other import")
            raise sa.exc.IntegrityError("INSERT INTO theaters", {}, Exception("UNIQUE constraint failed: theaters.id"))
        return real(eng, *args)

    monkeypatch.setattr(store, "_write_once", collide_once)
    assert initialised_cli.json("import", path) == {"inserted": 1, "updated": 0, "unchanged": 1}
    assert len(calls) == 2


def test_endless_collisions_say_try_again(initialised_cli, tmp_path, monkeypatch):
    def always(*args):
        raise sa.exc.IntegrityError("INSERT INTO theaters", {}, Exception("UNIQUE constraint failed: theaters.id"))

    monkeypatch.setattr(store, "_write_once", always)
    result = initialised_cli("import", _jsonl(tmp_path / "probe-2025.jsonl", THEATER))
    _refused(result, 1)
    assert "try again" in result.stderr


def test_dashboard_escapes_the_profile_unit(fitted_store, no_fit):
    """A run's profile.toml `unit` reaches the page through allow_html: it must arrive as text."""
    from streamlit.testing.v1 import AppTest

    from conftest import REPO

    run = runs.require_published(FLAGSHIP)
    text = (run.path / "profile.toml").read_text(encoding="utf-8")
    payload = '<img src=x onerror="alert(1)"><script>alert(2)</script>'
    line = 'unit = "while a scheduled exercise is under way"'  # models/priors/default.toml, [indicators.exercise]
    assert text.count(line) == 1
    text = text.replace(line, f"unit = '{payload}'")
    (run.path / "profile.toml").write_text(text, encoding="utf-8")
    at = AppTest.from_file(str(REPO / "dashboards" / "app.py"), default_timeout=120)
    at.run()
    at.session_state["tab"] = "Priors"
    at.run()
    assert not at.exception, [e.message for e in at.exception]
    bodies = [m.body for m in at.markdown if "<small>" in m.body]
    assert bodies and all("<img" not in b and "<script" not in b for b in bodies)
    assert any("&lt;img" in b for b in bodies)
    assert "`" not in "".join(b for b in bodies)  # no code span to break out of either


def test_a_new_outcome_may_not_strand_stored_rows(initialised_cli, tmp_path):
    """An open theater's rows are stored; a later outcome dated before some of them is refused, naming them."""
    initialised_cli.ok("import", _jsonl(tmp_path / "probe-2025.jsonl", THEATER, TROOPS,
                                        {"kind": "sign", "date": "2025-02-20", "category": "medical",
                                         "description": "late", "source": "S"}))
    before = all_counts(initialised_cli.db_url)
    early = {**OUTCOME, "theater": "probe-2025", "date": "2025-02-01"}
    result = initialised_cli("import", _jsonl(tmp_path / "outcome.jsonl", early))
    _refused(result)
    assert _problems(result.stderr) == [(1, "window")] and "stored sign row" in result.stderr
    assert all_counts(initialised_cli.db_url) == before
    moved = initialised_cli("import", _jsonl(tmp_path / "probe-2025.jsonl", {**THEATER, "start": "2025-01-15"}))
    _refused(moved)
    assert "stored troops row" in moved.stderr
    initialised_cli.ok("import", _jsonl(tmp_path / "outcome.jsonl", {**early, "date": "2025-02-21"}))


@pytest.mark.parametrize("raw", ["abc", "0", "-3", "1e3"])
def test_dashboard_sampler_settings_are_checked(monkeypatch, raw):
    from forecast import config

    monkeypatch.setenv("FORECAST_DASHBOARD_DRAWS", raw)
    with pytest.raises(config.SettingsError, match="FORECAST_DASHBOARD_DRAWS"):
        config.dashboard_refit_settings()


def test_a_v3_store_upgrades_to_v4_in_place(db_url, cli_any):
    """The v3 -> v4 step alone: retraction columns are added, rows are kept, nothing is retracted."""
    from test_store import _make_v1_store

    rows = _make_v1_store(db_url)
    eng = store.engine(db_url)
    with eng.begin() as conn:  # bring it to v3 exactly as a v3 build would have
        store_schema.UPGRADES[1](conn)
        store_schema.UPGRADES[2](conn)
        conn.execute(store_schema.schema_version.update().values(version=3))
    with eng.connect() as conn:
        columns = {c["name"] for c in sa.inspect(conn).get_columns("ev_troops")}
    assert not set(store_schema.RETRACTION_COLUMNS) & columns
    assert store_schema.upgrade(eng) == (3, store_schema.SCHEMA_VERSION)
    with eng.connect() as conn:
        columns = {c["name"] for c in sa.inspect(conn).get_columns("ev_troops")}
    assert set(store_schema.RETRACTION_COLUMNS) <= columns
    assert len(store.load_evidence(eng, "testland-2024")) == len(rows)
    troops = cli_any.json("evidence", "testland-2024", "--kind", "troops")
    cli_any.ok("retract", "testland-2024", troops[0]["row_id"], "--reason", "after the upgrade")
    assert len(store.load_evidence(eng, "testland-2024")) == len(rows) - 1
    eng.dispose()
