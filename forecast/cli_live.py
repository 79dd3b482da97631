"""The live-loop commands of `forecast`: record evidence as it arrives, ask "what if", rehearse on a closed case.

- `forecast add THEATER --kind KIND --date D --source S [field options]`: one row, validated exactly as
  an import (schema, window rules, messages), written in one transaction with who and why in the change
  log; `--replaces ROW_ID` corrects a row (the old one retracted in the same transaction).
- `forecast whatif THEATER --row JSON [--row JSON ...]`: the published forecast beside the forecast with
  hypothetical rows added (`forecast.live`: the stored draws reweighted, no sampling); writes nothing.
- `forecast replay THEATER --until DATE [--id NEW_ID]`: an open copy of a closed case, cut at DATE.

Registered on the `forecast` app by `forecast.cli`.
"""

from __future__ import annotations

import datetime as dt
import json
from typing import Optional

import typer

from forecast import ingest, runs, store, wording
from forecast.cli import _engine, _user, app, emit, fail, forecast_text
from forecast.schema import KINDS


def _refuse(err: ingest.InvalidInput, options: bool = False) -> None:
    """Every problem on stderr (as `--field: reason` for command options), nothing written, exit 2."""
    typer.echo(f"error: {len(err.problems)} problem(s); nothing was written:", err=True)
    for p in err.problems:
        typer.echo(f"  --{p.field.replace('_', '-')}: {p.reason}" if options else f"  {p}", err=True)
    raise typer.Exit(2)


@app.command()
def add(theater: str = typer.Argument(..., help="theater id"),
        kind: str = typer.Option(..., "--kind", help="one of " + ", ".join(KINDS)),
        date: str = typer.Option(..., "--date", help="YYYY-MM-DD: the day the fact held"),
        source: str = typer.Option(..., "--source", help="publication or agency and its date"),
        url: Optional[str] = typer.Option(None), reported: Optional[str] = typer.Option(None, help="YYYY-MM-DD"),
        notes: Optional[str] = typer.Option(None), date_precision: Optional[str] = typer.Option(None),
        estimate: Optional[float] = typer.Option(None, help="troops: personnel"),
        low: Optional[float] = typer.Option(None), high: Optional[float] = typer.Option(None),
        source_type: Optional[str] = typer.Option(None, help="troops: official, government, osint, media"),
        unit: Optional[str] = typer.Option(None, help="unit_move: the unit"),
        direction: Optional[str] = typer.Option(None, help="unit_move: arrive or depart"),
        home_district: Optional[str] = typer.Option(None), distance_km: Optional[float] = typer.Option(None),
        name: Optional[str] = typer.Option(None, help="exercise: its name"),
        start: Optional[str] = typer.Option(None, help="exercise: scheduled start"),
        end: Optional[str] = typer.Option(None, help="exercise: scheduled end"),
        announced_by: Optional[str] = typer.Option(None),
        category: Optional[str] = typer.Option(None, help="sign: medical, bridging, fuel_ammo, ..."),
        description: Optional[str] = typer.Option(None, help="sign: what was seen"),
        credibility: Optional[str] = typer.Option(None, help="sign, unit_move: confirmed, single_source, party, "
                                                  "denied (data/FORMAT.md)"),
        claim_type: Optional[str] = typer.Option(None, help="claim: withdrawal, de_escalation, exercise_ending"),
        verified: Optional[bool] = typer.Option(None, "--verified/--unverified", help="claim"),
        verified_by: Optional[str] = typer.Option(None),
        escalated: Optional[bool] = typer.Option(None, "--escalated/--not-escalated", help="outcome"),
        replaces: Optional[str] = typer.Option(None, "--replaces", help="row id this row corrects (retracted)"),
        reason: Optional[str] = typer.Option(None, "--reason", help="why (kept in the change log)"),
        by: Optional[str] = typer.Option(None, "--by", help="who records it (default: this user)"),
        as_json: bool = typer.Option(False, "--json")):
    """Record one evidence row: validated exactly as an import; nothing is written on a bad value (exit 2)."""
    store.require_persistent()
    record = {key: value for key, value in locals().items()
              if value is not None and key not in ("replaces", "reason", "by", "as_json")}
    eng = _engine()
    who = by or _user()
    retractions = ()
    if replaces:
        retractions = (store.retraction(theater, replaces, reason or "", who),)
    try:
        result = ingest.import_records(eng, "forecast add", [record], origin=f"add by {who or 'unnamed'}"
                                       + (f": {reason}" if reason else ""), retractions=retractions)
    except ingest.InvalidInput as err:
        _refuse(err, options=True)
    row = ingest.EVIDENCE_ADAPTER.validate_python(record)  # the row as written (the import validated it so)
    doc = {**result.as_dict(), "row_id": store.row_id(row), "row": row.model_dump(mode="json")}
    emit(doc, as_json, f"{theater}: {row.kind} row {doc['row_id']} recorded ({row.describe()})"
         + (f"; row {replaces} retracted" if replaces else "")
         + f". The published forecast does not include it yet: `forecast whatif` shows its effect at once, "
           f"`forecast refit {theater}` refits.")


@app.command()
def whatif(theater: str = typer.Argument(..., help="theater id"),
           row: list[str] = typer.Option(..., "--row", help="a hypothetical evidence row as JSON (repeat)"),
           as_of: Optional[str] = typer.Option(None, "--as-of", help="YYYY-MM-DD (default: the latest row's day)"),
           as_json: bool = typer.Option(False, "--json")):
    """The published forecast beside the forecast with hypothetical rows; nothing is stored."""
    eng = _engine()
    records = []
    for i, text in enumerate(row, start=1):
        try:
            record = json.loads(text)
        except json.JSONDecodeError as err:
            fail(f"--row {i}: not JSON ({err.msg} at character {err.pos})")
        if not isinstance(record, dict):
            fail(f"--row {i}: expected a JSON object, e.g. '{{\"kind\": \"sign\", ...}}'")
        records.append({"theater": theater, "source": "hypothetical (what-if)", **record})
    theaters = {t.id: t for t in store.load_theaters(eng)}
    if theater not in theaters:
        fail(f"unknown theater {theater!r}; see `forecast theaters`")
    parsed = ingest.read_records("--row", records, theaters, store.current_outcomes(eng))
    if parsed.problems:
        _refuse(ingest.InvalidInput(parsed.problems))
    try:
        run = runs.require_published(theater)
    except runs.RunError as err:
        fail(str(err), 1)
    from forecast import live  # the model stack, for the reweighting

    # As of the published run's date, or the latest hypothetical row's (store rows known later stay out).
    day = dt.date.fromisoformat(as_of) if as_of else max([dt.date.fromisoformat(run.manifest["as_of"])]
                                                          + [r.known_on for r in parsed.evidence])
    try:
        stored_rows = store.load_evidence(eng, theater)
        scenario = live.LiveRun(run, theaters[theater], stored_rows).forecast(stored_rows + parsed.evidence, day)
    except ValueError as err:
        fail(str(err))
    stored = run.document()
    doc = {"theater": theater, "hypothetical_rows": [r.model_dump(mode="json") for r in parsed.evidence],
           "stored": stored, "scenario": scenario.document, "pareto_k": scenario.weights.pareto_k,
           "ess": round(scenario.weights.ess, 1), "needs_refit": scenario.needs_refit,
           "explanation": scenario.explanation(), "written": False}
    lines = ["STORED FORECAST", forecast_text(stored), "", "WHAT IF (hypothetical, not stored):"]
    lines += [f"  + {r.kind} on {r.date}: {r.describe()}" for r in parsed.evidence]
    lines += ["", forecast_text(scenario.document), "", scenario.explanation()]
    lines += [f"  P(within {h} days): {wording.pct(stored['prob'][h]['mean'])} -> "
              f"{wording.pct(scenario.document['prob'][h]['mean'])}" for h in stored["prob"]]
    emit(doc, as_json, "\n".join(lines))


@app.command()
def replay(theater: str = typer.Argument(..., help="a closed case to rehearse on"),
           until: str = typer.Option(..., "--until", help="YYYY-MM-DD: evidence known by this day is copied"),
           new_id: Optional[str] = typer.Option(None, "--id", help="the new theater's id (default: THEATER-replay)"),
           as_json: bool = typer.Option(False, "--json")):
    """An open theater made from a closed case cut at --until (its evidence known by then, no outcome)."""
    store.require_persistent()
    eng = _engine()
    known = {t.id: t for t in store.load_theaters(eng)}
    if theater not in known:
        fail(f"unknown theater {theater!r}; see `forecast theaters`")
    try:
        cut = dt.date.fromisoformat(until)
    except ValueError:
        fail(f"--until: {until!r} is not a date (YYYY-MM-DD)")
    new_id = new_id or f"{theater}-replay"
    if new_id in known:
        fail(f"--id: a theater {new_id!r} already exists; choose another id")
    source = known[theater]
    if cut < source.start:
        fail(f"--until: {cut} is before {theater} starts ({source.start})")
    rows = [r for r in store.load_evidence(eng, theater) if r.kind != "outcome" and r.known_on <= cut]
    declared = {**source.model_dump(mode="json"), "id": new_id, "name": f"{source.name} (replay to {cut})",
                "replay_of": theater,
                "notes": f"replay of {theater} with the evidence known by {cut} (`forecast replay`); "
                         + (source.notes or "")}
    records = [declared] + [{**r.model_dump(mode="json"), "theater": new_id} for r in rows]
    try:
        result = ingest.import_records(eng, "forecast replay", records, origin=f"replay of {theater} to {cut}")
    except ingest.InvalidInput as err:
        _refuse(err)
    doc = {"theater": new_id, "from": theater, "until": str(cut), "rows": len(rows), **result.as_dict()}
    emit(doc, as_json, f"{new_id}: open theater with the {len(rows)} rows of {theater} known by {cut}. Next: "
         f"`forecast refit {new_id} --as-of {cut}`, then add the rows of the following days one by one "
         f"(`forecast add {new_id} ...`) and watch `forecast whatif` / the dashboard move.")
