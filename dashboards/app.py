"""The analyst's dashboard: `forecast dashboard` (or `streamlit run dashboards/app.py`).

Layout only: what is shown is computed in `forecast.dashboard_view` from stored runs, drawn by
`dashboards.charts`; the tabs are `dashboards.tabs` and `dashboards.priors_panel`, refits
`dashboards.refit_panel`.
"""

from __future__ import annotations

import time
from pathlib import Path

import streamlit as st

from dashboards import charts, live_panel, priors_panel, tabs
from dashboards.alerts_panel import alerts_section
from dashboards.refit_panel import refit_controls, refit_jobs, refit_progress
from forecast import config, dataset, freshness, priors, reweight, runs, store, store_schema, wording
from forecast import dashboard_view as view

st.set_page_config(page_title="Escalation forecast", page_icon="📈", layout="wide")


@st.cache_resource(show_spinner="Loading the run's posterior draws…", max_entries=16)
def reweighter(run_path: str) -> reweight.PriorReweighter:
    return reweight.PriorReweighter(runs.Run.at(Path(run_path)))


# --- page parts ----------------------------------------------------------------------------


def requested_theater(ids: list[str]) -> str | None:
    """The theater a link asks for (?theater=ID); an unknown id stops the page with a message."""
    requested = st.query_params.get("theater")
    if requested is not None and requested not in ids:
        st.title("Escalation forecast")
        st.error(f"No theater with id `{requested}` in this store. Known ids: "
                 + ", ".join(f"`{t}`" for t in ids) + ".")
        st.stop()
    return requested


def sidebar(summaries: list[dict]) -> str:
    """The theater picker. Its value is the theater id, kept in the link (?theater=ID) as it changes."""
    ids = [s["id"] for s in summaries]
    names = {s["id"]: s["name"] for s in summaries}
    requested = requested_theater(ids)
    if requested is not None and st.session_state.get("theater") != requested \
            and st.session_state.get("theater:linked") != requested:
        st.session_state["theater"] = requested  # a link (or a changed link) decides, once
        st.session_state["theater:linked"] = requested
    elif "theater" not in st.session_state:
        st.session_state["theater"] = view.default_theater(summaries) or ids[0]
    states = {tid: view.status_mark(runs.history(tid)) for tid in ids}
    with st.sidebar:
        st.header("Escalation forecast")
        chosen = st.selectbox("Theater", ids, key="theater", format_func=lambda t: f"{states[t]}{names[t]}",
                              help="✓ has a published forecast · ✗ only rejected runs · · no fit yet")
        st.query_params["theater"] = chosen
        st.session_state["theater:linked"] = chosen
        st.caption(f"`{chosen}`")
        st.divider()
        with st.expander("Where the data lives"):
            st.caption(f"Evidence store: `{config.db_url().split('@')[-1]}`")
            st.caption(f"Runs: `{config.runs_dir()}`")
            st.caption(f"Prior profiles: `{config.priors_dir()}`")
        if st.button("Reload runs and evidence", width="stretch"):
            st.cache_resource.clear()
            st.cache_data.clear()
            st.rerun()
        st.caption(wording.INTERVAL_MEANING)
    return chosen


def title(state: view.TheaterState) -> None:
    t = state.theater
    st.subheader(t.name)  # a subheader, not a title: the forecast must be visible without scrolling
    st.caption(f"{t.actor} → {t.target} · crisis window from {t.start} · outcome in store: "
               f"{state.summary['outcome']}")


def run_line(run, reweighted: reweight.Reweighted, profile: priors.Profile) -> None:
    m = run.manifest
    status = f":green-badge[{m['status']}]" if run.published else f":red-badge[{m['status']}]"
    prior_text = f"`{m['prior_profile']}`" + (f" → `{profile.name}` (reweighted)" if reweighted.changed else "")
    st.markdown(f"**As of {m['as_of']}** &nbsp; {status} &nbsp; fitted {view.age(m['created_at'])} "
                f"({m['created_at'][:16].replace('T', ' ')} UTC) · priors {prior_text}")
    with st.expander("Run provenance"):
        st.caption(f"run `{m['run_id']}` · data `{m['data_hash']}` · priors `{m['prior_hash']}` · "
                   f"code `{m['code_version']}`")


def stale_banner(fresh) -> None:
    """Says when the store's evidence differs from what the shown run saw, and how to refit."""
    if fresh is not None and fresh.stale:
        st.warning(f"**Stale forecast.** {fresh.summary()} — or use *Refit* below.", icon="🕓")


def headline(doc: dict, reweighted: reweight.Reweighted, stored: dict, p30_draws) -> None:
    p30 = doc["prob"]["30"]
    top = st.columns([3, 1])
    top[0].markdown(f"## {doc['words'].capitalize()} to escalate within 30 days — {wording.pct(p30['mean'])}")
    top[0].markdown(wording.key_judgment(doc))
    top[1].altair_chart(charts.p30_distribution(*p30_draws), width="stretch")
    top[1].caption("How sure the model is of the 30-day number: its spread over the posterior draws.")
    items = view.headline(doc, stored if reweighted.changed else None)
    cols = st.columns(4)
    for col, item in zip(cols, items):
        with col:
            st.metric(item["label"], item["value"], delta=item["delta"], delta_color="off" if not item["delta"] else
                      "inverse", border=True, help=f"{item['interval']} ({item['words']})")
            st.caption(f"{item['interval']} · *{item['words']}*")
    t = doc["timing"]
    with cols[3]:
        if t.get("median"):
            st.metric("Most likely onset (median)", t["median"], border=True,
                      help="Percentiles of the onset date given escalation within the horizon")
            st.caption(f"10–90%: {t['p10']} → {t['p90']} · if within {t['horizon_days']} days "
                       f"(P = {wording.pct(t['p_within_horizon'])})")
        else:
            st.metric("Most likely onset", "—", border=True)


def prior_banner(reweighted: reweight.Reweighted, n_draws: int) -> None:
    if not reweighted.changed:
        return
    text = (f"**Priors adjusted — not a stored run.** The numbers below reweight the run's "
            f"{n_draws:,} stored posterior draws by new prior / fitted prior "
            f"(Pareto-smoothed importance sampling, {reweighted.seconds * 1000:.0f} ms, no sampling). "
            f"{view.prior_explanation(reweighted, n_draws)}")
    if reweighted.verdict == "unreliable":
        st.warning(text, icon="⚠️")
    else:
        st.info(text, icon="⚖️")


def no_run(state: view.TheaterState, eng) -> None:
    t = state.theater
    rejected = state.rejected_newer
    if rejected is not None:
        st.error(f"No published forecast for {t.name}: its latest run `{rejected.id}` "
                 f"({view.age(rejected.manifest['created_at'])}) was rejected by the convergence gate: "
                 f"{rejected.manifest['reason']}.")
    else:
        st.warning(f"No forecast for {t.name} yet. Fit one from a terminal:")
    evidence = store.load_evidence(eng, t.id)
    try:
        as_of = dataset.default_as_of(t, evidence)
    except ValueError:
        as_of = t.start
    st.code(f"{state.refit_command} --as-of {as_of}", language="sh")
    st.caption("…or fit it here with the default priors (a minute or two; the page stays usable):")
    try:
        refit_controls(state, priors.load("default"), str(as_of), key="refit:first", label="Fit now")
    except priors.ProfileError as err:
        st.error(f"Cannot offer a fit here: {err}")
    if refit_jobs().get(t.id) is not None:
        refit_progress(t.id)
    parts = st.tabs(["Evidence", "Runs"])
    with parts[0]:
        tabs.evidence_tab(view.evidence_frame(evidence), None, state.has_troops)
    with parts[1]:
        if state.history:
            st.dataframe(view.run_table(state.history), hide_index=True, width="stretch")
        else:
            st.caption("No runs.")


# --- the page ------------------------------------------------------------------------------

TABS = ["Forecast", "Drivers", "Evidence", "Priors", "Diagnostics", "Compare", "What if", "Export"]


def main() -> None:
    started = time.perf_counter()
    eng = store.engine()
    try:
        store_schema.require_current(eng)
    except RuntimeError as err:
        st.title("Escalation forecast")
        st.error(str(err))
        st.markdown("Create the evidence store and load the bundled cases, then fit a theater:")
        st.code("forecast init\nforecast refit russia-ukraine-2022 --as-of 2022-02-15", language="sh")
        st.stop()
    summaries = store.theater_summaries(eng)
    if not summaries:
        st.title("Escalation forecast")
        st.warning("The evidence store holds no theaters yet.")
        st.code("forecast init            # loads the bundled cases\nforecast import PATH     # or your own",
                language="sh")
        st.stop()
    chosen = sidebar(summaries)
    theater = next(t for t in store.load_theaters(eng) if t.id == chosen)
    state = view.theater_state(theater, next(s for s in summaries if s["id"] == chosen))
    title(state)
    if state.shown is None:
        no_run(state, eng)
        return

    run = state.shown
    rw = reweighter(str(run.path))
    profile, error = priors_panel.screen_profile(rw)
    reweighted = rw.apply(profile)
    fresh = freshness.check(eng, run)
    rows = store.load_evidence(eng, theater.id)
    update = None if reweighted.changed else live_panel.instant_update(eng, state, run, rows, fresh)
    if update is None:
        doc, spread = (view.document(run, reweighted.document, profile, reweighted),
                       view.p30_draws(rw.draws, reweighted.weights))
    else:  # the evidence changed since the run: the instant update is what the page shows
        doc, spread = (view.document(run, update.document, profile, reweighted),
                       view.p30_draws(update.draws, update.weights))

    stale_banner(fresh)
    if update is not None:
        live_panel.live_banner(update, rw.stored)
    headline(doc, reweighted, rw.stored, spread)
    alerts_section(theater.id)
    run_line(run, reweighted, profile)
    rejected = state.rejected_newer
    if rejected is not None:
        st.warning(f"The newest run `{rejected.id}` ({view.age(rejected.manifest['created_at'])}, as of "
                   f"{rejected.manifest['as_of']}) was **rejected** by the convergence gate: "
                   f"{rejected.manifest['reason']}. Showing the last published run `{run.id}`.", icon="⛔")
    if not state.has_troops:
        st.info("No troop estimates for this theater: force level and growth carry no information here.")
    prior_banner(reweighted, rw.n_draws)
    if reweighted.changed or update is not None:
        refit_controls(state, profile, doc["as_of"], key="refit:banner",
                       instant_p30=None if update is None else doc["prob"]["30"]["mean"])
    if refit_jobs().get(theater.id) is not None:
        refit_progress(theater.id)

    evidence = view.evidence_frame(rows, run.manifest)
    # Lazy tabs: only the open tab runs, so a prior change redraws the headline and that tab at once.
    shown = st.tabs(TABS, key="tab", on_change="rerun", bind="query-params")
    pages = [lambda: tabs.forecast_tab(doc, evidence), lambda: tabs.drivers_tab(doc, profile),
             lambda: (live_panel.record_panel(eng, theater.id, doc["as_of"], rows),
                      tabs.evidence_tab(evidence, run.manifest["as_of"], state.has_troops)),
             lambda: priors_panel.priors_tab(state, rw, profile, reweighted, error),
             lambda: tabs.diagnostics_tab(state, run, doc), lambda: tabs.compare_tab(state, run, doc, rw),
             lambda: live_panel.whatif_tab(state, run, doc, eng, rows),
             lambda: tabs.export_tab(eng, state, run, doc, profile, reweighted)]
    for tab, page in zip(shown, pages):
        if tab.open:
            with tab:
                page()
    st.session_state["timing:reweight_ms"] = reweighted.seconds * 1000
    st.session_state["timing:script_ms"] = (time.perf_counter() - started) * 1000


main()
