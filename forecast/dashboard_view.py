"""What the dashboard shows, computed outside Streamlit (dashboards/app.py only lays it out).

- `theater_state`: which run to show for a theater and why (none yet, latest rejected, ...).
- `Reweighter`: instant prior changes. The stored draws were sampled under the run's
  profile; a changed profile reweights them by new prior / old prior, Pareto-smoothed
  (ArviZ PSIS), and `predict.summarise` turns the weighted draws into the same forecast
  document a fit stores, so the dashboard and a refit cannot disagree on the arithmetic.
- evidence rows as a table and as events on the time axis; Altair charts (history,
  timing, drivers waterfall); ArviZ diagnostics plots; the background refit job;
  export through the report renderer.

Every number comes from a stored run: its forecast document, or its stored draws
reweighted for the priors on screen.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import functools
import io
import math
import threading
import time
from dataclasses import dataclass, field

import altair as alt
import numpy as np
import pandas as pd

from forecast import predict, priors, runs
from forecast.features import INDICATORS
from forecast.schema import KINDS, Evidence, Theater

PARETO_K_OK = 0.5
PARETO_K_MAX = 0.7  # above this, importance reweighting is not trustworthy: refit
MIN_ESS_SHARE = 0.1  # fewer effective draws than this share: noisy
KIND_LABELS = {"troops": "troop estimate", "unit_move": "unit move", "exercise": "exercise", "sign": "sign",
               "claim": "claim", "outcome": "outcome"}
KIND_COLOURS = {"troops": "#4c78a8", "unit_move": "#f58518", "exercise": "#54a24b", "sign": "#e45756",
                "claim": "#b279a2", "outcome": "#333333"}
INDICATOR_LABELS = {
    "force_level": "Force level",
    "force_growth": "Force growth",
    "exercise": "Exercise under way",
    "overstay": "Overstay after exercise end",
    "unit_arrivals": "Unit arrivals (distance-weighted)",
    "sign_medical": "Medical / blood supplies",
    "sign_bridging": "Bridging equipment",
    "sign_fuel_ammo": "Fuel / ammunition stocks",
    "sign_reserve_callup": "Reserve call-up",
    "sign_air_defence": "Air defence / aircraft forward",
    "sign_evacuation": "Evacuation / embassy drawdown",
    "sign_ultimatum": "Ultimatum / recognition",
    "claim_unverified": "Unverified withdrawal claim",
    "claim_verified": "Verified withdrawal",
}


def label(indicator: str) -> str:
    return INDICATOR_LABELS.get(indicator, indicator.replace("_", " "))


# --- which run to show ---------------------------------------------------------------------


@dataclass
class TheaterState:
    """A theater and the runs the dashboard can show for it."""

    theater: Theater
    summary: dict  # the `forecast theaters --json` row
    shown: runs.Run | None  # the last published run: the forecast on screen
    newest: runs.Run | None  # the newest run of any status
    history: list[runs.Run]

    @property
    def rejected_newer(self) -> runs.Run | None:
        """The newest run when it was rejected (the one shown is older, or there is none)."""
        if self.newest is not None and not self.newest.published:
            return self.newest
        return None

    @property
    def has_troops(self) -> bool:
        return self.summary["evidence"].get("troops", 0) > 0

    @property
    def refit_command(self) -> str:
        return f"forecast refit {self.theater.id}"


def theater_state(theater: Theater, summary: dict) -> TheaterState:
    found = runs.history(theater.id)
    published = [r for r in found if r.published]
    return TheaterState(theater, summary, published[-1] if published else None, found[-1] if found else None,
                        found)


def default_theater(summaries: list[dict]) -> str | None:
    """The theater to open on: the one most recently fitted with a published run, else an open one."""
    best, best_time = None, ""
    for s in summaries:
        run = runs.latest(s["id"])
        if run is not None and run.manifest["created_at"] > best_time:
            best, best_time = s["id"], run.manifest["created_at"]
    if best:
        return best
    open_ones = [s["id"] for s in summaries if s["outcome"] == "open"]
    return (open_ones or [s["id"] for s in summaries] or [None])[0]


def age(created_at: str, now: dt.datetime | None = None) -> str:
    """'5 minutes ago', '3 days ago' for an ISO timestamp."""
    created = dt.datetime.fromisoformat(created_at)
    if created.tzinfo is None:
        created = created.replace(tzinfo=dt.timezone.utc)
    seconds = max(0.0, ((now or dt.datetime.now(dt.timezone.utc)) - created).total_seconds())
    for unit, size in (("day", 86400), ("hour", 3600), ("minute", 60)):
        if seconds >= size:
            n = int(seconds // size)
            return f"{n} {unit}{'s' if n != 1 else ''} ago"
    return "just now"


def pct(p: float) -> str:
    """A probability as an analyst reads it: 31%, 0.4%, <0.1% (whole percents from 1%, as the key judgment)."""
    if p < 0.001:
        return "<0.1%"
    if p < 0.01:
        return f"{p:.1%}"
    return f"{p:.0%}"


def headline(doc: dict, stored: dict | None = None) -> list[dict]:
    """The three headline numbers: label, value, interval and change against the stored run."""
    out = []
    for h in ("7", "30", "90"):
        p = doc["prob"][h]
        item = {"horizon": int(h), "label": f"Within {h} days", "value": pct(p["mean"]), "mean": p["mean"],
                "interval": f"80% interval {pct(p['lo'])}–{pct(p['hi'])}", "words": predict.words(p["mean"]),
                "delta": None}
        if stored is not None:
            change = (p["mean"] - stored["prob"][h]["mean"]) * 100
            item["delta"] = f"{change:+.1f} pts vs stored run"
        out.append(item)
    return out


# --- evidence ------------------------------------------------------------------------------


def describe(row: Evidence) -> str:
    """One line saying what an evidence row is."""
    k = row.kind
    if k == "troops":
        text = f"{row.estimate:,.0f} troops"
        if row.low or row.high:
            text += f" ({(row.low or row.estimate):,.0f}–{(row.high or row.estimate):,.0f})"
        return text + f" [{row.source_type}]"
    if k == "unit_move":
        verb = "arrives" if row.direction == "arrive" else "departs"
        where = f" from {row.home_district}" if row.home_district and row.direction == "arrive" else ""
        far = f" ({row.distance_km:,.0f} km)" if row.distance_km else ""
        return f"{row.unit} {verb}{where}{far}"
    if k == "exercise":
        by = f", announced by {row.announced_by}" if row.announced_by else ""
        return f"Exercise {row.name}: {row.start} to {row.end}{by}"
    if k == "sign":
        return f"{row.category.replace('_', ' ')}: {row.description}"
    if k == "claim":
        status = f"verified by {row.verified_by}" if row.verified and row.verified_by else \
            ("verified" if row.verified else "unverified")
        return f"{row.claim_type.replace('_', ' ')} claim ({status})"
    if k == "outcome":
        return "Escalation" if row.escalated else "Crisis ended without escalation"
    return k


def evidence_frame(rows: list[Evidence], as_of: str | None = None) -> pd.DataFrame:
    """Evidence as a table: date, kind, what, source, known on, whether the shown run saw it."""
    cut = dt.date.fromisoformat(as_of) if as_of else None
    records = []
    for r in rows:
        records.append({
            "date": r.date, "kind": r.kind, "what": describe(r), "source": r.source,
            "known on": r.known_on,
            "in run": (r.known_on <= cut and r.kind != "outcome") if cut else None,
            "url": r.url, "notes": r.notes,
        })
    frame = pd.DataFrame.from_records(records, columns=["date", "kind", "what", "source", "known on", "in run",
                                                        "url", "notes"])
    return frame


def filter_kinds(frame: pd.DataFrame, kinds: list[str] | None) -> pd.DataFrame:
    if not kinds:
        return frame
    return frame[frame["kind"].isin(kinds)].reset_index(drop=True)


# --- instant prior changes -----------------------------------------------------------------


@dataclass
class Reweighted:
    """The forecast under the priors on screen."""

    document: dict  # the forecast document (stored, or reweighted)
    changed: bool  # priors differ from the run's
    pareto_k: float | None = None
    ess: float | None = None  # effective number of draws under the weights
    n_draws: int = 0
    seconds: float = 0.0

    @property
    def verdict(self) -> str:
        """'ok', 'noisy' or 'unreliable': the Pareto k thresholds, and few effective draws."""
        if self.pareto_k is None:
            return "ok"
        if self.pareto_k > PARETO_K_MAX:
            return "unreliable"
        if self.pareto_k > PARETO_K_OK or (self.ess or 0) < MIN_ESS_SHARE * self.n_draws:
            return "noisy"
        return "ok"

    @property
    def explanation(self) -> str:
        if not self.changed:
            return "Priors as fitted: the numbers are the stored run's."
        k = f"Pareto k = {self.pareto_k:.2f}"
        draws = f"{self.ess:,.0f} of {self.n_draws:,} draws effectively used"
        if self.verdict == "ok":
            return f"{k} (≤ {PARETO_K_OK}): reweighting is reliable; {draws}."
        if self.verdict == "noisy":
            why = (f"between {PARETO_K_OK} and {PARETO_K_MAX}" if self.pareto_k > PARETO_K_OK
                   else f"fine, but only {self.ess:,.0f} draws carry the weight")
            return (f"{k} ({why}): usable, but the numbers are noisier than the stored run's; {draws}. "
                    f"Refit for a precise answer.")
        return (f"{k} is above {PARETO_K_MAX}: these priors are too far from the ones the run was fitted "
                f"with for reweighting to be trusted — the numbers on screen may be badly off. "
                f"Refit with these priors for a real answer ({draws}).")


def same_priors(a: priors.Profile, b: priors.Profile) -> bool:
    return a.base_rate == b.base_rate and a.indicators == b.indicators and a.theater_spread == b.theater_spread


@functools.lru_cache(maxsize=4096)
def _normal_sigma(centre: float, low: float, high: float) -> float:
    """The sd of the maximum-entropy Normal centred on `centre` with RANGE_MASS in [low, high].

    The mass in [low, high] falls monotonically as the sd grows, so the maximum-entropy
    (largest-sd) Normal holding RANGE_MASS is the root of one equation: what PreliZ's
    `maxent` (used by `priors`) finds by general optimisation, in a millisecond instead
    of up to a second. Falls back to PreliZ when the range cannot hold that mass.
    """
    from scipy import optimize, stats

    def excess(sd: float) -> float:
        return stats.norm.cdf((high - centre) / sd) - stats.norm.cdf((low - centre) / sd) - priors.RANGE_MASS

    try:
        return float(optimize.brentq(excess, 1e-8, 1e4, xtol=1e-12))
    except ValueError:  # no sign change: centre on the range's edge
        return float(priors._normal_on(centre, low, high).parameters["sigma"])


def fast_log_density(profile: priors.Profile, alpha: np.ndarray, beta: np.ndarray,
                     sigma_theater: np.ndarray) -> np.ndarray:
    """`profile.log_density` with the Normal priors solved directly (see `_normal_sigma`)."""
    from scipy import stats

    b = profile.base_rate
    a_mu, a_lo, a_hi = (priors.daily_logit(x) for x in (b.value, b.low, b.high))
    mu = np.array([math.log(profile.indicators[n].value) for n in INDICATORS])
    sd = np.array([_normal_sigma(math.log(profile.indicators[n].value), math.log(profile.indicators[n].low),
                                 math.log(profile.indicators[n].high)) for n in INDICATORS])
    spread = profile.spread_prior().parameters["sigma"]
    return (stats.norm.logpdf(alpha, a_mu, _normal_sigma(a_mu, a_lo, a_hi))
            + stats.norm.logpdf(beta, mu, sd).sum(axis=-1)
            + stats.halfnorm.logpdf(sigma_theater, scale=spread))


FAST_TOLERANCE = 0.01  # max |log density| difference from the fit's own prior for the fast path


class Reweighter:
    """A run's stored draws and the profile they were sampled under."""

    def __init__(self, run: runs.Run):
        self.run = run
        self.draws = run.draws()
        self.stored = run.forecast()
        self.profile = priors.parse(run.profile_text(), f"{run.path}/profile.toml")
        self.alpha = self.draws["alpha"].values
        self.beta = self.draws["beta"].values
        self.sigma = self.draws["sigma_theater"].values
        if "log_prior" in self.draws:
            self.log_prior = self.draws["log_prior"].values
        else:  # older runs: recompute under the stored profile
            self.log_prior = self.profile.log_density(self.alpha, self.beta, self.sigma)
        # The fast prior solver must reproduce the fit's own log prior, else use the slow one.
        gap = np.max(np.abs(fast_log_density(self.profile, self.alpha, self.beta, self.sigma) - self.log_prior))
        self.fast = bool(gap < FAST_TOLERANCE)

    def log_density(self, profile: priors.Profile) -> np.ndarray:
        if self.fast:
            return fast_log_density(profile, self.alpha, self.beta, self.sigma)
        return profile.log_density(self.alpha, self.beta, self.sigma)

    def weights(self, profile: priors.Profile) -> tuple[np.ndarray, float, float]:
        """PSIS-smoothed normalised weights of new prior / old prior, the Pareto k and the ESS."""
        import arviz as az

        log_ratio = self.log_density(profile) - self.log_prior
        smoothed, k = az.psislw(log_ratio - log_ratio.max())
        w = np.exp(smoothed - smoothed.max())
        w /= w.sum()
        return w, float(np.asarray(k)), float(1.0 / np.sum(w**2))

    def apply(self, profile: priors.Profile) -> Reweighted:
        started = time.perf_counter()
        if same_priors(profile, self.profile):
            return Reweighted(self.stored, False, n_draws=len(self.alpha), seconds=time.perf_counter() - started)
        w, k, ess = self.weights(profile)
        doc = {**self.stored, **predict.summarise(self.draws, w)}
        return Reweighted(doc, True, k, ess, len(self.alpha), time.perf_counter() - started)


def document(run: runs.Run, shown: dict, profile: priors.Profile, reweighted: Reweighted) -> dict:
    """The forecast document of what is on screen: the run's, with the numbers on screen."""
    doc = {**run.document(), **shown}
    if reweighted.changed:
        doc["prior_profile"] = profile.name
        doc["prior_hash"] = profile.hash
        doc["reweighted"] = {"from_run": run.id, "from_profile": run.manifest["prior_profile"],
                             "pareto_k": round(reweighted.pareto_k, 3), "ess": round(reweighted.ess, 1),
                             "draws": reweighted.n_draws}
    return doc


def adjusted_profile(base: priors.Profile, base_rate: tuple[float, float, float],
                     indicators: dict[str, tuple[float, float, float]], name: str | None = None
                     ) -> priors.Profile:
    """The base profile with the analyst's values; validated exactly as a profile file would be.

    `base_rate` is (value, low, high) as probabilities; `indicators` maps name → (LR, low, high).
    Raises priors.ProfileError naming the field when a value is unusable.
    """
    def stated(old: priors.Stated, triple) -> priors.Stated:
        value, low, high = (float(x) for x in triple)
        return priors.Stated(value, low, high, old.rationale, old.unit)

    if name is None:
        name = base.name if base.name.endswith("-adjusted") else f"{base.name}-adjusted"
    profile = base.with_values(base_rate=stated(base.base_rate, base_rate),
                               indicators={n: stated(base.indicators[n], t) for n, t in indicators.items()},
                               name=name)
    if same_priors(profile, base):
        return base
    return priors.parse(profile.text, "priors on screen")  # the checks a profile file gets


def save_profile(profile: priors.Profile, name: str, overwrite: bool = False, note: str = "") -> str:
    """Write the priors on screen as a named profile; returns the path. Raises priors.ProfileError."""
    name = name.strip()
    description = note or f"Adjusted from '{profile.name}' in the dashboard on {dt.date.today()}."
    renamed = dataclasses.replace(profile, name=name, description=description)
    return str(priors.save(renamed, overwrite=overwrite))


# --- charts --------------------------------------------------------------------------------

_PCT = ".0%"


AXIS_EXTENT = 105  # px for y-axis labels, the same on charts stacked on one time axis so they line up


def _seen_events(events: pd.DataFrame) -> pd.DataFrame:
    if not len(events):
        return events
    seen = events[(events["kind"] != "outcome") & (events["in run"].astype(bool))].copy()
    seen["day"] = seen["date"].astype(str)  # for the tooltip: the plotted date may be clipped to the window
    seen["date"] = pd.to_datetime(seen["date"])
    seen["kind label"] = seen["kind"].map(KIND_LABELS)
    return seen


def _event_tooltip() -> list:
    return [alt.Tooltip("day:N", title="date"), alt.Tooltip("kind label:N", title="kind"),
            alt.Tooltip("what:N", title="what"), alt.Tooltip("source:N", title="source")]


def history_charts(doc: dict, events: pd.DataFrame) -> tuple[alt.LayerChart, alt.Chart | None]:
    """P(escalation within 30 days) as known on each past week, and the evidence events on the same time axis.

    Two charts (drawn one above the other, same x domain and axis width, so they line up): the
    history with a faint mark at each event, and a strip with one row per evidence kind.
    """
    hist = pd.DataFrame(doc["history"])
    hist["date"] = pd.to_datetime(hist["date"])
    seen = _seen_events(events)
    first = hist["date"].min() - pd.Timedelta(days=14)  # the crisis window (earlier events sit on its edge)
    if len(seen):
        seen.loc[seen["date"] < first, "date"] = first
    domain = [first.isoformat(), (pd.to_datetime(doc["as_of"]) + pd.Timedelta(days=3)).isoformat()]
    x = alt.X("date:T", title=None, scale=alt.Scale(domain=domain))
    kinds = [KIND_LABELS[k] for k in KINDS if len(seen) and k in set(seen["kind"])]
    colours = [KIND_COLOURS[k] for k in KINDS if len(seen) and k in set(seen["kind"])]
    colour = alt.Color("kind label:N", scale=alt.Scale(domain=kinds, range=colours), legend=None)

    base = alt.Chart(hist)
    y_axis = alt.Axis(format=_PCT, minExtent=AXIS_EXTENT, maxExtent=AXIS_EXTENT)
    band = base.mark_area(opacity=0.22, color="#4c78a8").encode(
        x=x, y=alt.Y("lo:Q", title=None, axis=y_axis, scale=alt.Scale(domain=[0, 1])), y2="hi:Q")
    tooltip = [alt.Tooltip("date:T", title="as of"), alt.Tooltip("mean:Q", format=".1%", title="P(within 30 days)"),
               alt.Tooltip("lo:Q", format=".1%", title="80% low"), alt.Tooltip("hi:Q", format=".1%", title="80% high")]
    line = base.mark_line(color="#1f4e79", strokeWidth=2.5).encode(x=x, y="mean:Q")
    points = base.mark_circle(color="#1f4e79", size=50).encode(x=x, y="mean:Q", tooltip=tooltip)
    as_of = alt.Chart(pd.DataFrame({"date": [pd.to_datetime(doc["as_of"])], "text": [f"as of {doc['as_of']}"]}))
    layers = [band]
    if len(seen):
        layers.append(alt.Chart(seen).mark_rule(opacity=0.2, strokeWidth=1.5).encode(
            x=x, color=colour, tooltip=_event_tooltip()))
    layers += [line, points, as_of.mark_rule(strokeDash=[4, 3], color="#555").encode(x="date:T"),
               as_of.mark_text(align="right", dx=-4, dy=8, color="#555").encode(x="date:T", y=alt.value(0),
                                                                               text="text:N")]
    top = alt.layer(*layers).properties(height=280, width="container",
                                        title="P(escalation within 30 days) as known on each date")
    if not len(seen):
        return top, None
    strip = alt.Chart(seen).mark_point(filled=True, size=120, opacity=0.9).encode(
        x=x,
        y=alt.Y("kind label:N", title=None, sort=kinds, axis=alt.Axis(minExtent=AXIS_EXTENT, maxExtent=AXIS_EXTENT)),
        color=colour,
        shape=alt.Shape("kind label:N", scale=alt.Scale(domain=kinds), legend=None),
        tooltip=_event_tooltip(),
    ).properties(height=alt.Step(28), width="container", title="Evidence the run saw (hover for what and source)")
    return top, strip


def timing_chart(doc: dict) -> alt.LayerChart:
    """Cumulative P(escalation by date) with its 80% band; median (and 10th–90th percentile) marked."""
    cum = pd.DataFrame(doc["cumulative"])
    cum["date"] = pd.to_datetime(cum["date"])
    x = alt.X("date:T", title=None)
    y = alt.Y("mean:Q", title="P(escalation by date)", axis=alt.Axis(format=_PCT), scale=alt.Scale(domain=[0, 1]))
    base = alt.Chart(cum)
    layers = []
    t = doc["timing"]
    if t.get("p10") and t.get("p90"):
        window = pd.DataFrame({"start": [pd.to_datetime(t["p10"])], "end": [pd.to_datetime(t["p90"])]})
        layers.append(alt.Chart(window).mark_rect(color="#888888", opacity=0.12).encode(x="start:T", x2="end:T"))
    layers += [
        base.mark_area(opacity=0.25, color="#e45756").encode(x=x, y=alt.Y("lo:Q", title="P(escalation by date)"),
                                                             y2="hi:Q"),
        base.mark_line(color="#b22222", strokeWidth=2.5).encode(
            x=x, y=y, tooltip=[alt.Tooltip("date:T"), alt.Tooltip("mean:Q", format=".1%", title="P(by date)"),
                               alt.Tooltip("lo:Q", format=".1%", title="80% low"),
                               alt.Tooltip("hi:Q", format=".1%", title="80% high")]),
    ]
    if t.get("median"):
        median = pd.DataFrame({"date": [pd.to_datetime(t["median"])], "text": [f"median {t['median']}"]})
        layers.append(alt.Chart(median).mark_rule(color="#333", strokeWidth=2).encode(x="date:T"))
        layers.append(alt.Chart(median).mark_text(align="left", dx=5, dy=10, fontWeight="bold", color="#333")
                      .encode(x="date:T", y=alt.value(0), text="text:N"))
    return alt.layer(*layers).properties(height=300, width="container")


def waterfall_frame(doc: dict, threshold: float = 0.005) -> pd.DataFrame:
    """Steps from the quiet baseline to the log-odds now: one row per active indicator."""
    base = doc["baseline_log_odds"]
    rows = [{"step": "Quiet baseline", "kind": "total", "start": base["mean"], "end": base["mean"],
             "lo": base["lo"], "hi": base["hi"], "log_odds": base["mean"], "odds_x": None, "value": None}]
    level = base["mean"]
    quiet = 0
    for d in doc["drivers"]:
        if abs(d["log_odds"]) < threshold:
            quiet += 1
            continue
        rows.append({"step": label(d["indicator"]), "kind": "up" if d["log_odds"] > 0 else "down",
                     "start": level, "end": level + d["log_odds"], "lo": level + d["lo"], "hi": level + d["hi"],
                     "log_odds": d["log_odds"], "odds_x": math.exp(d["log_odds"]), "value": d["value"]})
        level += d["log_odds"]
    rows.append({"step": "Now", "kind": "total", "start": level, "end": level, "lo": None, "hi": None,
                 "log_odds": level, "odds_x": None, "value": None})
    frame = pd.DataFrame(rows)
    frame.attrs["inactive"] = quiet
    return frame


def drivers_chart(doc: dict) -> alt.LayerChart:
    """Waterfall of the next day's hazard log-odds: baseline, each indicator's push (with its 80% interval), now."""
    frame = waterfall_frame(doc)
    order = list(frame["step"])
    y = alt.Y("step:N", sort=order, title=None, axis=alt.Axis(labelLimit=260))
    tooltip = [alt.Tooltip("step:N", title="indicator"), alt.Tooltip("log_odds:Q", format="+.2f", title="log-odds"),
               alt.Tooltip("odds_x:Q", format=".2f", title="odds ×"), alt.Tooltip("lo:Q", format=".2f", title="80% low"),
               alt.Tooltip("hi:Q", format=".2f", title="80% high"), alt.Tooltip("value:Q", format=".2f",
                                                                                title="indicator value")]
    colour = alt.Color("kind:N", scale=alt.Scale(domain=["up", "down", "total"],
                                                 range=["#d62728", "#2c7fb8", "#444444"]),
                       legend=alt.Legend(title=None, orient="bottom",
                                         labelExpr="{'up': 'raises risk', 'down': 'lowers risk', "
                                                   "'total': 'baseline / now'}[datum.label]"))
    chart = alt.Chart(frame)
    x = alt.X("start:Q", title="log-odds of escalation the next day", scale=alt.Scale(zero=False))
    bars = chart.transform_filter("datum.kind != 'total'").mark_bar(height=16).encode(
        x=x, x2="end:Q", y=y, color=colour, tooltip=tooltip)
    whiskers = chart.transform_filter("isValid(datum.lo)").mark_rule(color="#222", opacity=0.6).encode(
        x="lo:Q", x2="hi:Q", y=y, tooltip=tooltip)
    totals = chart.transform_filter("datum.kind == 'total'").mark_point(filled=True, size=160, shape="diamond").encode(
        x="end:Q", y=y, color=colour, tooltip=tooltip)
    labels = chart.mark_text(align="left", dx=6, fontSize=11, color="#333").encode(
        x=alt.X("max_x:Q"), y=y, text=alt.Text("log_odds:Q", format="+.2f")).transform_calculate(
        max_x="max(datum.end, datum.start, isValid(datum.hi) ? datum.hi : datum.end)")
    height = 26 * len(frame) + 40
    return alt.layer(bars, whiskers, totals, labels).properties(height=height, width="container")


# --- diagnostics ---------------------------------------------------------------------------


def gate_rows(diagnostics: dict) -> pd.DataFrame:
    g = runs.GATE
    rows = [
        ("max R-hat", f"{diagnostics['r_hat_max']:.3f}", f"≤ {g['r_hat_max']}",
         diagnostics["r_hat_max"] <= g["r_hat_max"]),
        ("min bulk ESS", f"{diagnostics['ess_bulk_min']:.0f}", f"≥ {g['ess_bulk_min']}",
         diagnostics["ess_bulk_min"] >= g["ess_bulk_min"]),
        ("divergent transitions", f"{diagnostics['divergences']}", f"= {g['divergences']}",
         diagnostics["divergences"] <= g["divergences"]),
    ]
    return pd.DataFrame([{"check": c, "value": v, "gate": gt, "passes": "yes" if ok else "NO"}
                         for c, v, gt, ok in rows])


MAIN_PARAMETERS = ["alpha", "sigma_theater", "beta"]


def parameter_summary(stage2) -> pd.DataFrame:
    """Stage-2 posterior summary (mean, sd, HDI, R-hat, ESS) of the hazard's main parameters."""
    import arviz as az

    summary = az.summary(stage2, var_names=MAIN_PARAMETERS, hdi_prob=0.8)
    summary.index = [_pretty_parameter(i) for i in summary.index]
    return summary


def _pretty_parameter(name: str) -> str:
    if name.startswith("beta[") and name.endswith("]"):
        return f"beta[{name[5:-1]}]"
    return name


def stage1_summary(stage1) -> pd.DataFrame:
    import arviz as az

    return az.summary(stage1, var_names=["bias", "noise", "drift"], kind="diagnostics")


def diagnostics_png(stage2, indicators: list[str], kind: str = "trace") -> bytes:
    """ArviZ trace or rank plots of alpha, sigma_theater and the chosen betas, as a PNG."""
    import arviz as az
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    coords = {"indicator": indicators} if indicators else None
    var_names = ["alpha", "sigma_theater"] + (["beta"] if indicators else [])
    with az.rc_context({"plot.max_subplots": 60}):
        if kind == "rank":
            axes = az.plot_rank(stage2, var_names=var_names, coords=coords, kind="bars",
                                figsize=(12, 2.2 * math.ceil((2 + len(indicators)) / 3)))
        else:
            axes = az.plot_trace(stage2, var_names=var_names, coords=coords, compact=False,
                                 figsize=(12, 1.9 * (2 + len(indicators))))
    fig = np.asarray(axes).ravel()[0].figure
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90)
    plt.close(fig)
    return buf.getvalue()


def run_table(history: list[runs.Run]) -> pd.DataFrame:
    rows = []
    for r in reversed(history):
        m = r.manifest
        d = m["diagnostics"]
        rows.append({"run": m["run_id"], "created": m["created_at"], "as of": m["as_of"], "status": m["status"],
                     "priors": m["prior_profile"], "max R-hat": d["r_hat_max"], "min ESS": d["ess_bulk_min"],
                     "divergences": d["divergences"], "reason": m.get("reason") or ""})
    return pd.DataFrame(rows)


# --- refit in the background ---------------------------------------------------------------

REFIT_SETTINGS = None  # model.SamplerSettings for dashboard refits (None: the defaults); tests shrink it


@dataclass
class RefitJob:
    """A real refit running in a background thread; the page polls it."""

    theater: str
    as_of: dt.date | None
    profile: priors.Profile
    expected_seconds: float
    started: float = field(default_factory=time.monotonic)
    finished: float | None = None
    run: runs.Run | None = None
    error: str | None = None
    thread: threading.Thread | None = None

    @property
    def done(self) -> bool:
        return self.finished is not None

    @property
    def elapsed(self) -> float:
        return (self.finished or time.monotonic()) - self.started

    def progress(self) -> float:
        """Fraction done, estimated from the time the last fit of this theater took (never 1 until done)."""
        if self.done:
            return 1.0
        return min(0.95, self.elapsed / max(self.expected_seconds, 1.0))

    def status(self) -> str:
        if self.error:
            return f"Refit failed: {self.error}"
        if self.run is not None:
            if self.run.published:
                return f"Refit done in {self.elapsed:.0f} s: run {self.run.id} published."
            return (f"Refit done in {self.elapsed:.0f} s but run {self.run.id} was rejected "
                    f"({self.run.manifest['reason']}); the last published forecast stays current.")
        left = max(0.0, self.expected_seconds - self.elapsed)
        return (f"Refitting {self.theater} as of {self.as_of or 'its latest evidence'} with priors "
                f"'{self.profile.name}': {self.elapsed:.0f} s elapsed"
                + (f", about {left:.0f} s left" if left > 0 else ", finishing") + ".")

    def _work(self) -> None:
        from forecast import model, refit, store

        settings = REFIT_SETTINGS or model.SamplerSettings()
        settings = dataclasses.replace(settings, progressbar=False)
        try:
            self.run = refit.refit(store.engine(), self.theater, self.as_of, self.profile, settings)
        except Exception as err:  # shown on the page; the thread must not die silently
            self.error = f"{type(err).__name__}: {err}"
        finally:
            self.finished = time.monotonic()


_JOBS: dict[str, RefitJob] = {}
_JOBS_LOCK = threading.Lock()


def expected_refit_seconds(history: list[runs.Run]) -> float:
    for r in reversed(history):
        d = r.manifest.get("diagnostics", {})
        if "sampling_seconds" in d:
            return float(d["sampling_seconds"]) + float(d.get("compile_seconds", 0)) + 10.0
    return 90.0


def start_refit(theater: str, as_of: dt.date | None, profile: priors.Profile, expected_seconds: float) -> RefitJob:
    """Start a refit of `theater` unless one is already running (then return that one)."""
    with _JOBS_LOCK:
        job = _JOBS.get(theater)
        if job is not None and not job.done:
            return job
        job = RefitJob(theater, as_of, profile, expected_seconds)
        job.thread = threading.Thread(target=job._work, name=f"refit-{theater}", daemon=True)
        _JOBS[theater] = job
        job.thread.start()
        return job


def refit_job(theater: str) -> RefitJob | None:
    with _JOBS_LOCK:
        return _JOBS.get(theater)


def forget_refit(theater: str) -> None:
    with _JOBS_LOCK:
        job = _JOBS.get(theater)
        if job is not None and job.done:
            del _JOBS[theater]


# --- export --------------------------------------------------------------------------------

EXPORT_FORMATS = {"html": ("text/html", "html"), "pdf": ("application/pdf", "pdf"),
                  "json": ("application/json", "json")}


def export_report(eng, run: runs.Run, fmt: str, doc: dict, profile: priors.Profile | None = None,
                  theater_name: str | None = None) -> bytes:
    """The report of what is on screen, through `forecast.report.render` (what `forecast report` uses).

    With `profile` (the priors on screen differ from the run's), the report carries the on-screen,
    reweighted forecast `doc` and that profile; otherwise it is the run's own report. Like the CLI,
    it says when the store's evidence for the run's as-of date has changed since the fit.
    """
    from forecast import report, store

    now_hash = report.current_data_hash(eng, run)
    rows = store.load_evidence(eng, run.manifest["theater"])
    if profile is None:
        return report.render(run, rows, fmt, theater_name=theater_name, current_data_hash=now_hash)
    return report.render(run, rows, fmt, forecast_override=doc, profile_override_text=profile.text,
                         theater_name=theater_name, current_data_hash=now_hash)


def export_name(doc: dict, fmt: str) -> str:
    suffix = "-reweighted" if doc.get("reweighted") else ""
    return f"{doc['theater']}-{doc['as_of']}-{doc['run_id']}{suffix}.{EXPORT_FORMATS[fmt][1]}"
