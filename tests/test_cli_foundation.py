"""The `forecast` command's foundation commands and their JSON contract (DESIGN §6)."""

from __future__ import annotations

import datetime as dt
import json

from forecast.schema import KINDS

from conftest import CASES_DIR, all_counts

FLAGSHIP = "russia-ukraine-2022"
BUNDLED = sorted(p.stem for p in CASES_DIR.glob("*.jsonl"))


def _is_iso_date(value) -> bool:
    try:
        return isinstance(value, str) and dt.date.fromisoformat(value).isoformat() == value
    except ValueError:
        return False


def test_init_twice_is_idempotent(cli_any):
    first = cli_any.json("init")
    assert first["schema_from"] == 0 and first["schema_to"] >= 2
    assert first["files"] == len(BUNDLED)
    assert first["inserted"] > 0 and first["updated"] == 0
    counts = all_counts(cli_any.db_url)

    second = cli_any.json("init")
    assert second["schema_from"] == second["schema_to"] == first["schema_to"]
    assert second["inserted"] == 0 and second["updated"] == 0
    assert second["unchanged"] == first["inserted"]
    assert all_counts(cli_any.db_url) == counts


def test_init_text_output(cli):
    out = cli.ok("init").stdout
    assert "inserted" in out and "case files" in out


def test_theaters_json_shape(initialised_cli):
    theaters = initialised_cli.json("theaters")
    assert isinstance(theaters, list)
    assert len(theaters) >= 22
    assert sorted(t["id"] for t in theaters) == BUNDLED
    for t in theaters:
        assert {"id", "name", "outcome", "escalation_date", "evidence"} <= set(t), t
        assert isinstance(t["id"], str) and isinstance(t["name"], str) and t["name"]
        assert t["outcome"] in ("escalated", "none", "open"), t
        if t["outcome"] == "escalated":
            assert _is_iso_date(t["escalation_date"]), t
        else:
            assert t["escalation_date"] is None, t
        assert set(t["evidence"]) == set(KINDS), t
        assert all(isinstance(n, int) and n >= 0 for n in t["evidence"].values()), t
        assert t["evidence"]["outcome"] <= 1

    by_id = {t["id"]: t for t in theaters}
    flagship = by_id[FLAGSHIP]
    assert flagship["outcome"] == "escalated" and flagship["escalation_date"] == "2022-02-24"
    assert flagship["evidence"]["troops"] >= 10
    outcomes = {t["outcome"] for t in theaters}
    assert {"escalated", "none"} <= outcomes  # the reference class has both


def test_theaters_text_lists_every_theater(initialised_cli):
    out = initialised_cli.ok("theaters").stdout
    for theater in BUNDLED:
        assert theater in out


def test_evidence_troops_json(initialised_cli):
    rows = initialised_cli.json("evidence", FLAGSHIP, "--kind", "troops")
    theaters = {t["id"]: t for t in initialised_cli.json("theaters")}
    assert len(rows) == theaters[FLAGSHIP]["evidence"]["troops"] > 0
    for row in rows:
        assert row["kind"] == "troops"
        assert _is_iso_date(row["date"])
        assert isinstance(row["source"], str) and row["source"]
        assert isinstance(row["estimate"], (int, float)) and row["estimate"] > 0
        assert row["source_type"] in ("official", "government", "osint", "media")
        if row.get("low") is not None:
            assert row["low"] <= row["estimate"]
        if row.get("high") is not None:
            assert row["high"] >= row["estimate"]
    assert [r["date"] for r in rows] == sorted(r["date"] for r in rows)


def test_evidence_all_kinds_json(initialised_cli):
    rows = initialised_cli.json("evidence", FLAGSHIP)
    theaters = {t["id"]: t for t in initialised_cli.json("theaters")}
    assert len(rows) == sum(theaters[FLAGSHIP]["evidence"].values())
    assert {r["kind"] for r in rows} == set(KINDS)
    for row in rows:
        assert {"kind", "date", "source"} <= set(row)
        assert row["theater"] == FLAGSHIP
    fields = {"unit_move": "unit", "exercise": "end", "sign": "category", "claim": "verified",
              "outcome": "escalated"}
    for kind, name in fields.items():
        assert all(name in r for r in rows if r["kind"] == kind), kind


def test_evidence_text(initialised_cli):
    from forecast import store

    out = initialised_cli.ok("evidence", FLAGSHIP, "--kind", "sign").stdout
    rows = store.load_evidence(initialised_cli.engine(), FLAGSHIP, "sign")
    assert len(out.splitlines()) == len(rows)
    for line, row in zip(out.splitlines(), rows):  # date, kind, what the row records (schema's describe), source
        assert line == f"{row.date}  sign       {row.describe()}  [{row.source}]"
    assert "evacuation: " in out


def test_unknown_theater_exits_2(initialised_cli):
    result = initialised_cli("evidence", "atlantis-1999", "--json")
    assert result.exit_code == 2
    assert result.stdout == ""
    assert "unknown theater" in result.stderr and "atlantis-1999" in result.stderr


def test_unknown_kind_exits_2(initialised_cli):
    result = initialised_cli("evidence", FLAGSHIP, "--kind", "rumour", "--json")
    assert result.exit_code == 2
    assert "rumour" in result.stderr and "troops" in result.stderr  # names the allowed kinds


def test_commands_on_a_missing_store_say_run_init(cli):
    for args in (["theaters", "--json"], ["evidence", FLAGSHIP, "--json"]):
        result = cli(*args)
        assert result.exit_code != 0, args
        assert "forecast init" in result.stderr, args
        assert result.stdout == "", args


def test_help_lists_foundation_commands(cli):
    out = cli.ok("--help").stdout
    for command in ("init", "import", "theaters", "evidence"):
        assert command in out


def test_installed_console_script_end_to_end(run_console):
    """The `forecast` entry point that pip installed, in a real subprocess."""
    init = run_console("init", "--json")
    assert init.returncode == 0, init.stderr
    assert json.loads(init.stdout)["inserted"] > 0
    theaters = run_console("theaters", "--json")
    assert theaters.returncode == 0, theaters.stderr
    assert sorted(t["id"] for t in json.loads(theaters.stdout)) == BUNDLED
    evidence = run_console("evidence", FLAGSHIP, "--kind", "troops", "--json")
    assert evidence.returncode == 0, evidence.stderr
    assert all(r["kind"] == "troops" for r in json.loads(evidence.stdout))
    unknown = run_console("evidence", "atlantis-1999")
    assert unknown.returncode == 2 and "atlantis-1999" in unknown.stderr
