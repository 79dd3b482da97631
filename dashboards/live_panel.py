"""The live loop on the page: record, correct and retract evidence; the instant update; what-if scenarios.

One form per evidence kind (`row_form`) serves both the record panel (rows written to the store, validated
exactly as an import, who and why in the change log) and the What-if tab (rows kept in the session or saved
as a named scenario, never stored as evidence). Forecasts for changed or hypothetical evidence come from
`forecast.live` (the stored draws reweighted, no sampling).
"""

from __future__ import annotations

import datetime as dt
import getpass
import types
import typing
from pathlib import Path

import streamlit as st

from dashboards import charts
from forecast import dashboard_view as view
from forecast import freshness, ingest, live, runs, scenarios, store, wording
from forecast.schema import KINDS, MODEL_BY_KIND, kind_fields


@st.cache_resource(show_spinner="Loading the run for instant updates…", max_entries=8)
def live_run(run_path: str, _eng_url: str) -> live.LiveRun:
    """A run's posterior ready for other evidence (cached per run: what the run saw does not change)."""
    run = runs.Run.at(Path(run_path))
    eng = store.engine(_eng_url)
    theater = next(t for t in store.load_theaters(eng) if t.id == run.manifest["theater"])
    return live.LiveRun(run, theater, store.load_evidence(eng, theater.id))


def _widget(kind: str, name: str, key: str):
    """The input for one field of a kind, from the schema's type (an optional choice starts unset)."""
    field = MODEL_BY_KIND[kind].model_fields[name]
    inner = field.annotation
    if typing.get_origin(inner) in (typing.Union, types.UnionType):  # Optional[X] -> X
        inner = next(a for a in typing.get_args(inner) if a is not type(None))
    if typing.get_origin(inner) is typing.Annotated:
        inner = typing.get_args(inner)[0]
    label = name.replace("_", " ")
    if typing.get_origin(inner) is typing.Literal:
        return st.selectbox(label, typing.get_args(inner), key=key, index=0 if field.is_required() else None)
    if inner is bool:
        return st.checkbox(label, key=key)
    if inner is float:
        return st.number_input(label, value=None, key=key, step=1.0)
    if inner is dt.date:
        return st.date_input(label, value=None, key=key)
    return st.text_input(label, key=key)


def row_form(theater: str, prefix: str, as_of: str) -> dict | None:
    """A form for one evidence row; returns the record on submit (values as an import line gives them)."""
    kind = st.selectbox("Kind", [k for k in KINDS if k != "outcome"] + ["outcome"], key=f"{prefix}:kind")
    with st.form(f"{prefix}:form", clear_on_submit=False):
        cols = st.columns(3)
        day = cols[0].date_input("date (the fact held)", value=dt.date.fromisoformat(as_of), key=f"{prefix}:date")
        source = cols[1].text_input("source (publication and date)", key=f"{prefix}:source")
        reported = cols[2].date_input("reported (if later)", value=None, key=f"{prefix}:reported")
        values = {}
        fields = kind_fields(kind)
        for col, name in zip(st.columns(max(1, len(fields))), fields):
            with col:
                values[name] = _widget(kind, name, f"{prefix}:{kind}:{name}")
        url = st.text_input("url", key=f"{prefix}:url")
        notes = st.text_input("notes", key=f"{prefix}:notes")
        submitted = st.form_submit_button("Add row", type="primary")
    if not submitted:
        return None
    record = {"kind": kind, "theater": theater, "date": day.isoformat() if day else None, "source": source,
              "reported": reported.isoformat() if reported else None, "url": url or None, "notes": notes or None}
    for name, value in values.items():
        record[name] = value.isoformat() if isinstance(value, dt.date) else (value if value != "" else None)
    return {k: v for k, v in record.items() if v is not None}


def _who() -> str:
    try:
        return getpass.getuser()
    except Exception:  # noqa: BLE001 - no login name here
        return "dashboard"


def record_panel(eng, theater: str, as_of: str, rows) -> None:
    """Record a row (optionally correcting one), or retract one: written to the store in one transaction."""
    with st.expander("Record evidence as it arrives (written to the store)"):
        cols = st.columns(2)
        who = cols[0].text_input("recorded by", value=_who(), key="record:by")
        reason = cols[1].text_input("reason / note for the change log", key="record:reason")
        ids = {store.row_id(r): r for r in rows}
        corrects = st.selectbox("corrects row (retracted in the same transaction)", list(ids), index=None,
                                format_func=lambda i: f"{i} · {ids[i].date} · {ids[i].describe()[:80]}",
                                key="record:corrects")
        record = row_form(theater, "record", as_of)
        if record is not None:
            try:
                retractions = (store.retraction(theater, corrects, reason, who),) if corrects else ()
                result = ingest.import_records(eng, "form", [record], f"dashboard by {who}: {reason or 'added'}",
                                               retractions)
            except ingest.InvalidInput as err:
                st.error("Not recorded: " + "; ".join(f"{p.field}: {p.reason}" for p in err.problems))
            except store.RetractError as err:
                st.error(f"Not recorded: {err}")
            else:
                st.success(f"Recorded ({result.inserted} added, {result.updated} updated"
                           + (f", row {corrects} retracted" if corrects else "") + "). The headline now shows the "
                           "instant update; refit to store it.")
                st.rerun()
        st.markdown("**Retract a row** (it stays in the store and the change log; no fit uses it)")
        cols = st.columns([3, 2, 1])
        target = cols[0].selectbox("row", list(ids), index=None, key="retract:row",
                                   format_func=lambda i: f"{i} · {ids[i].date} · {ids[i].describe()[:80]}")
        why = cols[1].text_input("why", key="retract:reason")
        if cols[2].button("Retract", key="retract:go", disabled=not (target and why.strip())):
            try:
                store.retract(eng, theater, target, why, who)
            except store.RetractError as err:
                st.error(str(err))
            else:
                st.rerun()


def live_banner(update: live.LiveForecast, stored: dict) -> None:
    p_new, p_old = update.document["prob"]["30"]["mean"], stored["prob"]["30"]["mean"]
    text = (f"**Instant update — not a stored run.** With the evidence in the store now (as of {update.as_of}), "
            f"P(30 days) is {wording.pct(p_new)} against the run's {wording.pct(p_old)}. {update.explanation()}")
    (st.warning if update.needs_refit else st.info)(text, icon="⚡")


def instant_update(eng, state: view.TheaterState, run, rows, fresh) -> live.LiveForecast | None:
    """The forecast for the evidence in the store now, when it differs from what the run saw.

    An open theater moves on to the latest day a new row became known; a closed case stays at the run's
    as-of date (rows known later are the future it is forecasting).
    """
    is_open = state.summary["outcome"] == "open"
    unseen = [r for r in rows if r.kind != "outcome" and not freshness.in_run(run.manifest, r)]
    if not ((fresh is not None and fresh.stale) or (is_open and unseen)):
        return None
    as_of = dt.date.fromisoformat(run.manifest["as_of"])
    if is_open:
        as_of = max([as_of] + [r.known_on for r in unseen])
    return live_run(str(run.path), str(eng.url)).forecast(rows, as_of)


def whatif_tab(state: view.TheaterState, run, doc: dict, eng, rows) -> None:
    """Hypothetical rows (session or saved scenario): their forecast beside the stored one; nothing stored."""
    theater = state.theater.id
    st.subheader("What if")
    st.caption("Add hypothetical evidence — never stored as evidence — and see the forecast it would give, at once "
               "(the run's draws reweighted, no sampling). Save a set of rows as a named scenario.")
    key = f"whatif:{theater}"
    hypothetical = st.session_state.setdefault(key, [])
    try:
        saved = scenarios.load_all(theater)
    except scenarios.ScenarioError as err:
        st.error(str(err))
        saved = {}
    cols = st.columns([2, 1, 1])
    pick = cols[0].selectbox("Saved scenario", list(saved), index=None, key="whatif:load_name",
                             placeholder="load a saved scenario…")
    if cols[1].button("Load", key="whatif:load", disabled=pick is None):
        st.session_state[key] = list(saved[pick])
        st.rerun()
    if cols[2].button("Clear rows", key="whatif:clear", disabled=not hypothetical):
        st.session_state[key] = []
        st.rerun()
    record = row_form(theater, "whatif", doc["as_of"])
    if record is not None:
        record.setdefault("source", "hypothetical (what-if)")
        parsed = ingest.read_records("what-if", hypothetical + [record], {state.theater.id: state.theater},
                                     store.current_outcomes(eng))
        if parsed.problems:
            st.error("Not added: " + "; ".join(f"{p.field}: {p.reason}" for p in parsed.problems))
        else:
            st.session_state[key] = hypothetical + [record]
            st.rerun()
    if not hypothetical:
        return
    parsed = ingest.read_records("what-if", hypothetical, {state.theater.id: state.theater},
                                 store.current_outcomes(eng))
    if parsed.problems:
        st.error("The scenario no longer validates: " + "; ".join(f"{p.field}: {p.reason}" for p in parsed.problems))
        return
    st.markdown("**Hypothetical rows:** " + " · ".join(f"{r.kind} {r.date}: {r.describe()}" for r in parsed.evidence))
    cols = st.columns([2, 1])
    name = cols[0].text_input("Scenario name", key="whatif:name", placeholder="e.g. field hospitals next week")
    if cols[1].button("Save scenario", key="whatif:save", disabled=not name.strip()):
        try:
            scenarios.save(theater, name, hypothetical)
        except scenarios.ScenarioError as err:
            st.error(str(err))
        else:
            st.success(f"Saved scenario '{name.strip()}'.")
    as_of = max([dt.date.fromisoformat(run.manifest["as_of"])] + [r.known_on for r in parsed.evidence])
    scenario = live_run(str(run.path), str(eng.url)).forecast(rows + parsed.evidence, as_of)
    st.session_state["whatif:last"] = {"document": scenario.document, "rows": hypothetical}
    (st.warning if scenario.needs_refit else st.caption)(scenario.explanation())
    names = (f"stored run (as of {doc['as_of']})", f"what if (as of {scenario.as_of}, hypothetical)")
    st.dataframe(view.compare_rows(doc, scenario.document).rename(columns={"A": names[0], "B": names[1]}),
                 hide_index=True, width="stretch")
    st.altair_chart(charts.timing_compare_chart(doc, scenario.document, names), width="stretch")
