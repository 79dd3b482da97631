"""The refit controls of the page: start a real refit in the background and follow it.

The jobs live in one `RefitJobs` registry per server process and sampler settings
(`forecast.config.dashboard_refit_settings`, from the environment).
"""

from __future__ import annotations

import datetime as dt

import streamlit as st

from dashboards.refit_jobs import RefitJobs, expected_refit_seconds
from forecast import config, priors, wording
from forecast import dashboard_view as view


@st.cache_resource
def _registry(settings) -> RefitJobs:
    return RefitJobs(settings)


def refit_jobs() -> RefitJobs:
    """The refits of this server process (shared by every browser session) for the configured settings."""
    return _registry(config.dashboard_refit_settings())


def refit_controls(state: view.TheaterState, profile: priors.Profile, as_of: str | None, key: str,
                   label: str = "Refit with these priors", instant_p30: float | None = None) -> None:
    """`instant_p30`: the instant update on screen, to say how far the refit lands from it."""
    job = refit_jobs().get(state.theater.id)
    running = job is not None and not job.done
    cols = st.columns([1.3, 1, 3])
    default = dt.date.fromisoformat(as_of) if as_of else None
    chosen = cols[1].date_input("as of", value=default, key=f"{key}:as_of", label_visibility="collapsed",
                                disabled=running, help="The as-of date of the refit")
    if cols[0].button(label, key=key, type="primary", disabled=running,
                      help="Runs the real two-stage fit (a minute or two) in the background; "
                           "the page stays usable. Published only if it passes the convergence gate."):
        job = refit_jobs().start(state.theater.id, chosen, profile, expected_refit_seconds(state.history))
        st.session_state["refit:mine"] = job.started  # only this session is told when it is done
        st.session_state["refit:instant"] = instant_p30
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
    if st.session_state.get("refit:mine") != job.started:
        return  # another session's refit: its run shows up in the picker and the runs table
    if st.session_state.get("refit:seen") != job.started:
        st.session_state["refit:seen"] = job.started
        st.rerun(scope="app")  # show the new run everywhere on the page
    if job.run is not None and job.run.published:
        instant = st.session_state.get("refit:instant")
        extra = ""
        if instant is not None:
            refit = job.run.forecast()["prob"]["30"]["mean"]
            extra = (f" It gives P(30 days) {wording.pct(refit)}; the instant update said {wording.pct(instant)} "
                     f"({(refit - instant) * 100:+.1f} points).")
        st.success(job.status() + extra, icon="✅")
    else:
        st.error(job.status(), icon="⛔")
    st.button("Dismiss", key="refit:dismiss", on_click=refit_jobs().forget, args=(theater,))
