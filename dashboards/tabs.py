"""The page's tabs below the headline: forecast, drivers, evidence, diagnostics, export, compare.

Each takes what the page already computed (the forecast document on screen, the run, the
evidence table) and lays it out; the numbers come from `forecast.dashboard_view`, the charts from
`dashboards.charts`.
"""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd
import streamlit as st

from dashboards import charts
from forecast import dashboard_view as view
from forecast import priors, reweight, runs
from forecast.features import INDICATORS, label
from forecast.schema import KINDS

# --- cached loads (keyed by run folder; a run never changes once written) ------------------


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


# --- the tabs ------------------------------------------------------------------------------


def forecast_tab(doc: dict, events) -> None:
    st.subheader("Forecast history")
    st.caption("P(escalation within 30 days) as the engine would have said on each past week: the run's draws "
               "reweighted to take out the quiet days that came after that date, with covariates from the "
               "evidence known then (80% band). Hollow points: the reweighting is unreliable there (Pareto k > "
               f"{reweight.PARETO_K_MAX}); `forecast refit THEATER --as-of DATE` gives the real figure. Dashed "
               "grey: the same dates in hindsight (the run's own posterior, which knows the quiet days that "
               "followed). Below: each evidence event the run saw, on the same time axis.")
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
    rows = [{"indicator": label(d["indicator"]), "value now": d["value"], "log-odds": d["log_odds"],
             "80% low": d["lo"], "80% high": d["hi"], "odds ×": round(math.exp(d["log_odds"]), 2),
             "prior LR": profile.indicators[d["indicator"]].value}
            for d in doc["drivers"]]
    st.dataframe(pd.DataFrame(rows), hide_index=True, width="stretch", height=38 + 35 * len(rows))  # every row


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


def compare_tab(state: view.TheaterState, run: runs.Run, doc: dict, rw: reweight.PriorReweighter) -> None:
    """The forecast on screen (A) beside another run of this theater or this run under a saved profile (B)."""
    st.subheader("Compare")
    others = [r for r in reversed(state.history) if r.published and r.id != run.id]
    choices = [f"run {r.id} (as of {r.manifest['as_of']}, priors {r.manifest['prior_profile']})" for r in others]
    saved = sorted(p.stem for p in priors.path_of("default").parent.glob("*.toml"))
    choices += [f"this run under profile {name}" for name in saved]
    picked = st.selectbox("Compare the forecast on screen (A) with (B)", choices, index=None, key="compare:with",
                          placeholder="another run (other as-of date or priors) or a saved profile…")
    if picked is None:
        st.caption("Pick another published run of this theater — an earlier as-of date, other priors — or a saved "
                   "prior profile, which reweights this run's draws to it (no sampling).")
        return
    at = choices.index(picked)
    if at < len(others):
        other, name_b = others[at].document(), f"B: run {others[at].id} as of {others[at].manifest['as_of']}"
    else:
        profile_b = priors.load(saved[at - len(others)])
        shown = rw.apply(profile_b)
        other, name_b = {**doc, **shown.document}, f"B: this run, priors {profile_b.name}"
        if shown.changed:
            st.caption(f"B reweights the run's draws: Pareto k {shown.pareto_k:.2f} ({shown.verdict}).")
    name_a = f"A: on screen (as of {doc['as_of']}, priors {doc['prior_profile']})"
    st.markdown(f"**{name_a}** · **{name_b}**")
    st.dataframe(view.compare_rows(doc, other), hide_index=True, width="stretch")
    st.altair_chart(charts.timing_compare_chart(doc, other, (name_a, name_b)), width="stretch")


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
    last = st.session_state.get("whatif:last")
    if last and last["document"].get("theater") == run.manifest["theater"]:
        st.markdown("**The what-if scenario** (marked hypothetical in the report)")
        cols = st.columns(3)
        for col, fmt in zip(cols, ("html", "pdf", "json")):
            col.download_button(
                f"What-if {fmt.upper()}", key=f"export:whatif:{fmt}",
                data=(lambda fmt=fmt: view.export_report(eng, run, fmt, last["document"], None, state.theater.name,
                                                         hypothetical=last["rows"])),
                file_name=view.export_name(last["document"], fmt).replace(f".{fmt}", f"-whatif.{fmt}"),
                mime=view.EXPORT_FORMATS[fmt][0], width="stretch", on_click="ignore")
