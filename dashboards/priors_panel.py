"""The Priors tab: the analyst's statements as inputs, loaded, checked, explained and saved.

The values live in st.session_state under "prior:<name>:<part>" (plain state, kept while other
tabs are open); the number inputs ("w:" + that key) copy them in and out. An unusable value is
refused next to the inputs, in the inputs' own units, and the last usable priors stay on screen.
"""

from __future__ import annotations

import html

import streamlit as st

from dashboards.refit_panel import refit_controls
from forecast import dashboard_view as view
from forecast import priors, reweight
from forecast.features import INDICATORS, label

PARTS = ("value", "low", "high")


def _key(name: str, part: str) -> str:
    return f"prior:{name}:{part}"


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
    """The priors on screen, and why the latest edit is not usable (then the last usable priors stay)."""
    ss = st.session_state
    if ss.get("prior:run") != rw.run.id:
        set_prior_inputs(rw.profile)
        ss["prior:run"], ss["prior:last_usable"] = rw.run.id, rw.profile.text
    base, indicators = prior_inputs()
    error = view.base_rate_problem(base)
    if error is None:
        try:
            profile = view.adjusted_profile(rw.profile, base, indicators)
        except priors.ProfileError as err:
            error = str(err).removeprefix("priors on screen: ")
        else:
            ss["prior:last_usable"] = profile.text
            return profile, None
    return priors.parse(ss["prior:last_usable"], "priors on screen"), error


def load_profile(rw: reweight.PriorReweighter) -> None:
    """Put a saved profile's statements into the inputs."""
    name = st.session_state.get("prior:load_name")
    if name:
        set_prior_inputs(priors.load(name))


def priors_tab(state: view.TheaterState, rw: reweight.PriorReweighter, profile: priors.Profile,
               reweighted: reweight.Reweighted, error: str | None) -> None:
    st.subheader("Priors")
    st.caption("What you believe before the evidence, in your terms. Each range is an 80% interval. A change "
               "updates every number and chart at once by reweighting the stored draws (no sampling). "
               f"Fitted with `{rw.run.manifest['prior_profile']}`.")
    top = st.columns([1, 1.2, 0.6, 2])
    top[0].button("Reset to the run's priors", on_click=set_prior_inputs, args=(rw.profile,), key="prior:reset")
    saved = sorted(p.stem for p in priors.path_of("default").parent.glob("*.toml"))
    top[1].selectbox("Saved profile", saved, index=None, key="prior:load_name", placeholder="Load a saved profile…",
                     label_visibility="collapsed")
    top[2].button("Load", key="prior:load", on_click=load_profile, args=(rw,),
                  disabled=not st.session_state.get("prior:load_name"))
    if reweighted.changed:
        top[3].markdown(f"Pareto k **{reweighted.pareto_k:.2f}** — {reweighted.verdict}")
    if error:
        st.error(f"Not usable: {error}. The forecast keeps the last usable priors until this is fixed.")
    explanation = view.against_direction(rw.profile, profile, rw.stored, reweighted.document)
    if explanation:
        st.info(explanation, icon="ℹ️")

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
    for name in (n for n in INDICATORS if rw.profile.reading.uses(n)):
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
    rationale = st.text_area("Your rationale", key="prior:rationale", height=68,
                             placeholder="Why these priors: what you know that the defaults do not",
                             help="Saved as the profile's description, and shown in every report made with it")
    if cols[2].button("Save as profile", key="prior:save", disabled=not name):
        try:
            path = view.save_profile(profile, name, overwrite=overwrite, note=rationale.strip())
        except priors.ProfileError as err:
            st.error(str(err))
        else:
            st.success(f"Saved {path}. Use it with `forecast refit {state.theater.id} --priors {name.strip()}`.")

    st.markdown("**Refit**")
    refit_controls(state, profile, rw.run.manifest["as_of"], key="refit:priors-tab")
