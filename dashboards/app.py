"""The analyst's dashboard: `forecast dashboard` (or `streamlit run dashboards/app.py`).

Layout only; what is shown is computed in `forecast.dashboard_view` from stored runs, drawn by
`dashboards.charts`, refitted by `dashboards.refit_jobs`.
"""

from __future__ import annotations

import datetime as dt
import html
import math
import time
from pathlib import Path

import streamlit as st

from dashboards import charts
from dashboards.refit_jobs import RefitJobs, expected_refit_seconds
from forecast import config, dataset, predict, priors, reweight, runs, store
from forecast import dashboard_view as view
from forecast.features import INDICATORS, label
from forecast.schema import KINDS

st.set_page_config(page_title="Escalation forecast", page_icon="📈", layout="wide")


# --- cached loads (keyed by run folder; a run never changes once written) ------------------


@st.cache_resource(show_spinner="Loading the run's posterior draws…", max_entries=16)
def reweighter(run_path: str) -> reweight.PriorReweighter:
    return reweight.PriorReweighter(runs.Run.at(Path(run_path)))


@st.cache_resource
def refit_jobs() -> RefitJobs:
    """The refits of this server process (shared by every browser session)."""
    return RefitJobs(config.dashboard_refit_settings())


@st.cache_resource(show_spinner=False, max_entries=8)
def stage(run_path: str, n: int):
    return runs.Run.at(Path(run_path)).stage(n)


@st.cache_data(show_spinner="Drawing ArviZ plots…", max_entries=32)
def diagnostics_png(run_path: str, indicators: tuple[str, ...], kind: str) -> bytes:
    return charts.diagnostics_png(stage(run_path, 2), list(indicators), kind)


@st.cache_data(show_spinner=False, max_entries=16)
def parameter_summary(run_path: str):
    return charts.parameter_summary(stage(run_path, 2))


@st.cache_data(show_spinner=False, max_entries=16)
def stage1_summary(run_path: str):
    return charts.stage1_summary(stage(run_path, 1))


# --- prior inputs --------------------------------------------------------------------------
# The values live in st.session_state under "prior:<name>:<part>" (plain state, kept while other
# tabs are open); the number inputs of the Priors tab ("w:" + that key) copy them in and out.


def _key(name: str, part: str) -> str:
    return f"prior:{name}:{part}"


PARTS = ("value", "low", "high")


def set_prior_inputs(profile: priors.Profile) -> None:
    b = profile.base_rate
    for part, v in zip(PARTS, (b.value, b.low, b.high)):
        st.session_state[_key("base_rate", part)] = round(v * 100, 2)
    for name in INDICATORS:
        s = profile.indicators[name]
        for part, v in zip(PARTS, (s.value, s.low, s.high)):
            st.session_state[_key(name, part)] = float(v)


def _copy_from_widget(key: str) -> None:
    st.session_state[key] = st.session_state["w:" + key]


def prior_input(col, text: str, key: str, **kwargs) -> None:
    st.session_state["w:" + key] = st.session_state[key]
    col.number_input(text, key="w:" + key, on_change=_copy_from_widget, args=(key,), **kwargs)


def prior_inputs() -> tuple[tuple, dict]:
    ss = st.session_state
    base = tuple(ss[_key("base_rate", p)] / 100 for p in PARTS)
    indicators = {n: tuple(ss[_key(n, p)] for p in PARTS) for n in INDICATORS}
    return base, indicators


def screen_profile(rw: reweight.PriorReweighter) -> tuple[priors.Profile, str | None]:
    """The priors on screen (or the run's, with the reason, when they are not usable)."""
    if st.session_state.get("prior:run") != rw.run.id:
        set_prior_inputs(rw.profile)
        st.session_state["prior:run"] = rw.run.id
    base, indicators = prior_inputs()
    try:
        return view.adjusted_profile(rw.profile, base, indicators), None
    except priors.ProfileError as err:
        return rw.profile, str(err).removeprefix("priors on screen: ")


# --- page parts ----------------------------------------------------------------------------


def sidebar(summaries: list[dict]) -> str:
    ids = [s["id"] for s in summaries]
    names = {s["id"]: s["name"] for s in summaries}
    states = {}
    for tid in ids:
        found = runs.history(tid)
        states[tid] = ("✓ " if any(r.published for r in found) else ("✗ " if found else "· "))
    default = ids.index(view.default_theater(summaries) or ids[0])
    with st.sidebar:
        st.header("Escalation forecast")
        chosen = st.selectbox("Theater", ids, index=default, key="theater", bind="query-params",
                              format_func=lambda t: f"{states[t]}{names[t]}",
                              help="✓ has a published forecast · ✗ only rejected runs · · no fit yet")
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
        st.caption("Probabilities are posterior means with 80% intervals over parameter uncertainty; "
                   "words follow the standard estimative scale.")
    return chosen


def title(state: view.TheaterState) -> None:
    t = state.theater
    st.title(t.name)
    st.caption(f"{t.actor} → {t.target} · crisis window from {t.start} · outcome in store: "
               f"{state.summary['outcome']}")


def run_line(run, reweighted: reweight.Reweighted, profile: priors.Profile) -> None:
    m = run.manifest
    status = f":green-badge[{m['status']}]" if run.published else f":red-badge[{m['status']}]"
    prior_text = f"`{m['prior_profile']}`" + (f" → `{profile.name}` (reweighted)" if reweighted.changed else "")
    st.markdown(f"**As of {m['as_of']}** &nbsp; {status} &nbsp; fitted {view.age(m['created_at'])} "
                f"({m['created_at'][:16].replace('T', ' ')} UTC) · priors {prior_text}")
    st.caption(f"run `{m['run_id']}` · data `{m['data_hash']}` · priors `{m['prior_hash']}` · "
               f"code `{m['code_version']}`")


def headline(doc: dict, reweighted: reweight.Reweighted, stored: dict) -> None:
    p30 = doc["prob"]["30"]
    st.markdown(f"## {doc['words'].capitalize()} to escalate within 30 days — {view.pct(p30['mean'])}")
    st.markdown(predict.key_judgment(doc))
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
                       f"(P = {view.pct(t['p_within_horizon'])})")
        else:
            st.metric("Most likely onset", "—", border=True)


def prior_banner(reweighted: reweight.Reweighted, n_draws: int, error: str | None) -> None:
    if error:
        st.error(f"The priors on screen are not usable ({error}); showing the run's own priors.")
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


def refit_controls(state: view.TheaterState, profile: priors.Profile, as_of: str | None, key: str,
                   label: str = "Refit with these priors") -> None:
    job = refit_jobs().get(state.theater.id)
    running = job is not None and not job.done
    cols = st.columns([1.3, 1, 3])
    default = dt.date.fromisoformat(as_of) if as_of else None
    chosen = cols[1].date_input("as of", value=default, key=f"{key}:as_of", label_visibility="collapsed",
                                disabled=running, help="The as-of date of the refit")
    if cols[0].button(label, key=key, type="primary", disabled=running,
                      help="Runs the real two-stage fit (a minute or two) in the background; "
                           "the page stays usable. Published only if it passes the convergence gate."):
        refit_jobs().start(state.theater.id, chosen, profile, expected_refit_seconds(state.history))
        st.rerun()
    cols[2].caption("Runs the full fit in the background; the page stays usable and shows the new run when "
                    "it finishes.")


@st.fragment(run_every=1.0)
def refit_progress(theater: str) -> None:
    job = refit_jobs().get(theater)
    if job is None:
        return
    if not job.done:
        st.progress(job.progress(), text=job.status())
        return
    if st.session_state.get("refit:seen") != job.started:
        st.session_state["refit:seen"] = job.started
        st.rerun(scope="app")  # show the new run everywhere on the page
    if job.run is not None and job.run.published:
        st.success(job.status(), icon="✅")
    else:
        st.error(job.status(), icon="⛔")
    st.button("Dismiss", key="refit:dismiss", on_click=refit_jobs().forget, args=(theater,))


def forecast_tab(doc: dict, events) -> None:
    st.subheader("Forecast history")
    st.caption("P(escalation within 30 days) as the model would have said on each past week, using only the "
               "evidence known by then (80% band). Below: each evidence event the run saw, on the same time "
               "axis — hover for what it was and its source.")
    top, strip = charts.history_charts(doc, events)
    st.altair_chart(top, width="stretch")
    if strip is not None:
        st.altair_chart(strip, width="stretch")
    st.subheader("Timing")
    t = doc["timing"]
    st.caption(f"Cumulative probability of escalation by each date after {doc['as_of']} with its 80% band; "
               f"the line marks the median onset date, the shaded span its 10th–90th percentiles "
               f"(given escalation within {t['horizon_days']} days).")
    st.altair_chart(charts.timing_chart(doc), width="stretch")


def drivers_tab(doc: dict, profile: priors.Profile) -> None:
    st.subheader("What drives the forecast")
    frame = charts.waterfall_frame(doc)
    st.caption("Log-odds of escalation the next day: from a quiet baseline (this theater with no special "
               "signs) through each indicator's push to the value now. Whiskers: 80% intervals. "
               "+0.69 doubles the odds; −0.69 halves them."
               + (f" {frame.attrs['inactive']} indicators are inactive (not seen) and omitted."
                  if frame.attrs["inactive"] else ""))
    st.altair_chart(charts.drivers_chart(doc), width="stretch")
    import pandas as pd

    rows = [{"indicator": label(d["indicator"]), "value now": d["value"], "log-odds": d["log_odds"],
             "80% low": d["lo"], "80% high": d["hi"], "odds ×": round(math.exp(d["log_odds"]), 2),
             "prior LR": profile.indicators[d["indicator"]].value}
            for d in doc["drivers"]]
    st.dataframe(pd.DataFrame(rows), hide_index=True, width="stretch")


def evidence_tab(frame, as_of: str | None, has_troops: bool) -> None:
    st.subheader("Evidence")
    if not has_troops:
        st.info("No troop estimates are recorded for this theater: the force-level and force-growth "
                "indicators stay at zero (no information), so the forecast rests on the other indicators.")
    present = [k for k in KINDS if k in set(frame["kind"])]
    cols = st.columns([3, 2])
    kinds = cols[0].multiselect("Kinds", present, default=present, key="evidence:kinds",
                                format_func=lambda k: charts.KIND_LABELS[k])
    text = cols[1].text_input("Contains", key="evidence:text", placeholder="source, unit, description…")
    shown = view.filter_kinds(frame, kinds)
    if text:
        mask = shown["what"].str.contains(text, case=False, regex=False) | \
            shown["source"].str.contains(text, case=False, regex=False)
        shown = shown[mask]
    late = int((~frame["in run"].astype(bool)).sum()) if as_of else 0
    st.caption(f"{len(shown)} of {len(frame)} rows" + (f"; {late} known after {as_of} (or outcomes) were not "
                                                        f"seen by this run" if as_of and late else ""))
    st.dataframe(shown, hide_index=True, width="stretch", height=min(640, 38 + 35 * len(shown)),
                 column_config={
                     "date": st.column_config.DateColumn("date", width="small"),
                     "known on": st.column_config.DateColumn("known on", width="small"),
                     "kind": st.column_config.TextColumn("kind", width="small"),
                     "what": st.column_config.TextColumn("what", width="large"),
                     "in run": st.column_config.CheckboxColumn("in run", help="known by the run's as-of date",
                                                               width="small"),
                     "url": st.column_config.LinkColumn("url", display_text="link", width="small"),
                 })


def priors_tab(state: view.TheaterState, rw: reweight.PriorReweighter, profile: priors.Profile,
               reweighted: reweight.Reweighted) -> None:
    st.subheader("Priors")
    st.caption("What you believe before the evidence, in your terms. Each range is an 80% interval. A change "
               "updates every number and chart at once by reweighting the stored draws (no sampling). "
               f"Fitted with `{rw.run.manifest['prior_profile']}`.")
    top = st.columns([1, 1, 3])
    top[0].button("Reset to the run's priors", on_click=set_prior_inputs, args=(rw.profile,), key="prior:reset")
    if reweighted.changed:
        top[2].markdown(f"Pareto k **{reweighted.pareto_k:.2f}** — {reweighted.verdict}")

    st.markdown("**Base rate** — P(a build-up with no special signs escalates within 90 days), in %")
    b = rw.profile.base_rate
    cols = st.columns([3, 1, 1, 1])
    cols[0].caption(b.rationale)
    for col, part in zip(cols[1:], PARTS):
        prior_input(col, f"{part} %" if part == "value" else f"{part} (80%) %", _key("base_rate", part),
                    min_value=0.1, max_value=99.9, step=1.0, format="%.1f")

    st.markdown("**Indicators** — likelihood ratio: seeing this makes escalation N times more likely (per day)")
    head = st.columns([3, 1, 1, 1])
    for col, text in zip(head, ("indicator", "likelihood ratio", "low (80%)", "high (80%)")):
        col.caption(text)
    for name in INDICATORS:
        s = rw.profile.indicators[name]
        cols = st.columns([3, 1, 1, 1])
        cols[0].markdown(f"{label(name)}  \n<small>{html.escape(s.unit)}</small>", unsafe_allow_html=True,
                         help=s.rationale)
        for col, part in zip(cols[1:], PARTS):
            prior_input(col, f"{name} {part}", _key(name, part), min_value=0.01, max_value=100.0, step=0.1,
                        format="%.2f", label_visibility="collapsed")
    st.caption(f"Theater spread (not adjustable here): up to {rw.profile.theater_spread.value:g}× either way — "
               f"{rw.profile.theater_spread.rationale}")

    st.markdown("**Save as profile**")
    cols = st.columns([2, 1, 1])
    name = cols[0].text_input("Profile name", key="prior:save_name", placeholder="e.g. hawkish-2022",
                              help="lower-case letters, digits, - and _; saved under models/priors/")
    overwrite = cols[1].checkbox("Overwrite if it exists", key="prior:overwrite")
    if cols[2].button("Save as profile", key="prior:save", disabled=not name):
        try:
            path = view.save_profile(profile, name, overwrite=overwrite)
        except priors.ProfileError as err:
            st.error(str(err))
        else:
            st.success(f"Saved {path}. Use it with `forecast refit {state.theater.id} --priors {name.strip()}`.")

    st.markdown("**Refit**")
    refit_controls(state, profile, rw.run.manifest["as_of"], key="refit:priors-tab")


def diagnostics_tab(state: view.TheaterState, run, doc: dict) -> None:
    st.subheader("Convergence")
    d = run.manifest["diagnostics"]
    cols = st.columns([2, 3])
    with cols[0]:
        st.dataframe(view.gate_rows(d), hide_index=True, width="stretch")
        st.caption(f"Sampling {d['sampling_seconds']} s, compiling {d.get('compile_seconds', '?')} s · "
                   f"sampler {run.manifest['sampler']['sampler']}, {run.manifest['sampler']['chains']} chains × "
                   f"{run.manifest['sampler']['draws']} draws")
    with cols[1]:
        st.dataframe(parameter_summary(str(run.path)), width="stretch", height=300)
        st.caption("Stage 2 (hazard): posterior mean, sd, 80% HDI, R-hat and effective sample sizes.")
    st.subheader("Trace and rank plots")
    top = [d_["indicator"] for d_ in doc["drivers"][:3]]
    cols = st.columns([1, 3])
    kind = cols[0].radio("Plot", ["trace", "rank"], horizontal=True, key="diag:kind")
    chosen = cols[1].multiselect("Indicator coefficients (beta)", INDICATORS, default=top, key="diag:betas",
                                 format_func=label)
    st.image(diagnostics_png(str(run.path), tuple(chosen), kind),
             caption=f"ArviZ {kind} plots of alpha, sigma_theater and the chosen betas. Chains should overlap "
                     f"(trace) and ranks be uniform (rank).")
    with st.expander("Stage 1 (force level) diagnostics"):
        st.dataframe(stage1_summary(str(run.path)), width="stretch")
    st.subheader("Runs of this theater")
    st.dataframe(view.run_table(state.history), hide_index=True, width="stretch")


def export_tab(eng, state: view.TheaterState, run, doc: dict, profile: priors.Profile,
               reweighted: reweight.Reweighted) -> None:
    st.subheader("Export")
    override = profile if reweighted.changed else None
    st.caption("The report of what is on screen — " + (
        f"run `{run.id}` reweighted to the priors on screen (`{profile.name}`, Pareto k "
        f"{reweighted.pareto_k:.2f})" if override else f"run `{run.id}` with its fitted priors (`{profile.name}`)")
        + " — made by the same renderer as `forecast report`: key judgment, probabilities, timing, drivers, "
          "the evidence the run saw, priors, diagnostics and provenance.")
    cols = st.columns(3)
    for col, fmt in zip(cols, ("html", "pdf", "json")):
        mime, _ = view.EXPORT_FORMATS[fmt]
        col.download_button(
            f"Download {fmt.upper()}", key=f"export:{fmt}", type="primary" if fmt == "pdf" else "secondary",
            data=(lambda fmt=fmt: view.export_report(eng, run, fmt, doc, override, state.theater.name)),
            file_name=view.export_name(doc, fmt), mime=mime, width="stretch", on_click="ignore")
    st.caption("The file is made when you click (a PDF takes a few seconds).")


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
    tabs = st.tabs(["Evidence", "Runs"])
    with tabs[0]:
        evidence_tab(view.evidence_frame(evidence, None), None, state.has_troops)
    with tabs[1]:
        if state.history:
            st.dataframe(view.run_table(state.history), hide_index=True, width="stretch")
        else:
            st.caption("No runs.")


# --- the page ------------------------------------------------------------------------------

TABS = ["Forecast", "Drivers", "Evidence", "Priors", "Diagnostics", "Export"]


def main() -> None:
    started = time.perf_counter()
    eng = store.engine()
    try:
        store.require_current(eng)
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
    profile, error = screen_profile(rw)
    reweighted = rw.apply(profile)
    doc = view.document(run, reweighted.document, profile, reweighted)

    run_line(run, reweighted, profile)
    rejected = state.rejected_newer
    if rejected is not None:
        st.warning(f"The newest run `{rejected.id}` ({view.age(rejected.manifest['created_at'])}, as of "
                   f"{rejected.manifest['as_of']}) was **rejected** by the convergence gate: "
                   f"{rejected.manifest['reason']}. Showing the last published run `{run.id}`.", icon="⛔")
    if not state.has_troops:
        st.info("No troop estimates for this theater: force level and growth carry no information here.")
    prior_banner(reweighted, rw.n_draws, error)
    if reweighted.changed:
        refit_controls(state, profile, run.manifest["as_of"], key="refit:banner")
    if refit_jobs().get(theater.id) is not None:
        refit_progress(theater.id)
    headline(doc, reweighted, rw.stored)

    evidence = view.evidence_frame(store.load_evidence(eng, theater.id), run.manifest["as_of"])
    # Lazy tabs: only the open tab runs, so a prior change redraws the headline and that tab at once.
    tabs = st.tabs(TABS, key="tab", on_change="rerun", bind="query-params")
    if tabs[0].open:
        with tabs[0]:
            forecast_tab(doc, evidence)
    if tabs[1].open:
        with tabs[1]:
            drivers_tab(doc, profile)
    if tabs[2].open:
        with tabs[2]:
            evidence_tab(evidence, run.manifest["as_of"], state.has_troops)
    if tabs[3].open:
        with tabs[3]:
            priors_tab(state, rw, profile, reweighted)
    if tabs[4].open:
        with tabs[4]:
            diagnostics_tab(state, run, doc)
    if tabs[5].open:
        with tabs[5]:
            export_tab(eng, state, run, doc, profile, reweighted)
    st.session_state["timing:reweight_ms"] = reweighted.seconds * 1000
    st.session_state["timing:script_ms"] = (time.perf_counter() - started) * 1000


main()
