"""What the dashboard shows, computed outside Streamlit (dashboards/app.py only lays it out).

- `theater_state`: which run to show for a theater and why (none yet, latest rejected, ...);
- formatting: probabilities, ages, the headline numbers;
- evidence rows as a table;
- the priors on screen: the analyst's values as a validated profile, its reweighted
  forecast explained (`forecast.reweight` does the reweighting), saving it;
- the convergence gate and the run history as tables;
- the theater's alerts (`forecast.alerts`);
- export through the report renderer.

Every number comes from a stored run: its forecast document, or its stored draws
reweighted for the priors on screen. Charts are `dashboards/charts.py`, background
refits `dashboards/refit_jobs.py`.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from dataclasses import dataclass

import pandas as pd

from forecast import freshness, priors, reweight, runs, wording
from forecast.features import label
from forecast.schema import Evidence, Theater

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


def status_mark(history: list[runs.Run]) -> str:
    """The picker's mark: ✓ a published forecast, ✗ only rejected runs, · no fit yet."""
    if any(r.published for r in history):
        return "✓ "
    return "✗ " if history else "· "


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


def headline(doc: dict, stored: dict | None = None) -> list[dict]:
    """The three headline numbers: label, value, interval and change against the stored run."""
    out = []
    for h in ("7", "30", "90"):
        p = doc["prob"][h]
        item = {"horizon": int(h), "label": f"Within {h} days", "value": wording.pct(p["mean"]), "mean": p["mean"],
                "interval": f"80% interval {wording.span(p['lo'], p['hi'])}",
                "words": wording.words(p["mean"]),
                "delta": None}
        if stored is not None:
            change = (p["mean"] - stored["prob"][h]["mean"]) * 100
            item["delta"] = f"{change:+.1f} pts vs stored run"
        out.append(item)
    return out


# --- evidence ------------------------------------------------------------------------------


EVIDENCE_COLUMNS = ["date", "kind", "what", "in run", "source", "known on", "url", "notes"]


def evidence_frame(rows: list[Evidence], manifest: dict | None = None) -> pd.DataFrame:
    """Evidence as a table, key columns first: date, kind, what, whether the shown run saw it, source, ...

    "in run" is true only for a row the run saw as it is now (`forecast.freshness.in_run`); without a run
    it is empty. Missing URLs and notes are empty text, not "None".
    """
    records = [{"date": r.date, "kind": r.kind, "what": r.describe(),
                "in run": freshness.in_run(manifest, r) if manifest else None,
                "source": r.source, "known on": r.known_on, "url": r.url or "", "notes": r.notes or ""}
               for r in rows]
    return pd.DataFrame.from_records(records, columns=EVIDENCE_COLUMNS)


def filter_kinds(frame: pd.DataFrame, kinds: list[str] | None) -> pd.DataFrame:
    if not kinds:
        return frame
    return frame[frame["kind"].isin(kinds)].reset_index(drop=True)


def prior_explanation(reweighted: reweight.Reweighted, n_draws: int) -> str:
    """What the reweighting of the priors on screen is worth, in words."""
    if not reweighted.changed:
        return "Priors as fitted: the numbers are the stored run's."
    k = f"Pareto k = {reweighted.pareto_k:.2f}"
    draws = f"{reweighted.ess:,.0f} of {n_draws:,} draws effectively used"
    limit = reweight.PARETO_K_MAX
    if reweighted.verdict == "ok":
        return f"{k} (≤ {limit}): reweighting is reliable; {draws}."
    if reweighted.verdict == "noisy":
        return (f"{k} (≤ {limit}), but only {reweighted.ess:,.0f} draws carry the weight: usable, but the numbers "
                f"are noisier than the stored run's; {draws}. Refit for a precise answer.")
    return (f"{k} is above {limit}: these priors are too far from the ones the run was fitted "
            f"with for reweighting to be trusted — the numbers on screen may be badly off. "
            f"Refit with these priors for a real answer ({draws}).")


def p30_draws(draws, weights: reweight.Weights | None):
    """Per-draw P(escalation within 30 days) and their weights on screen (None: equal)."""
    return draws["cumulative"].values[:, 29], None if weights is None else weights.w


def base_rate_problem(base: tuple[float, float, float]) -> str | None:
    """The base-rate inputs (fractions) checked in the analyst's units, percent; None when usable."""
    value, low, high = (100 * x for x in base)
    if not 0 < low < high < 100:
        return f"base rate: the 80% range {low:g}%–{high:g}% must lie between 0% and 100%, low below high"
    if not low < value < high:
        return f"base rate: the value {value:g}% must lie inside its 80% range {low:g}%–{high:g}%"
    return None


def against_direction(fitted: priors.Profile, shown: priors.Profile, stored: dict, doc: dict) -> str | None:
    """One or two sentences when a changed base rate moved the 30-day forecast the other way."""
    change = shown.base_rate.value - fitted.base_rate.value
    moved = doc["prob"]["30"]["mean"] - stored["prob"]["30"]["mean"]
    if change == 0 or abs(moved) < 0.005 or (change > 0) == (moved > 0):
        return None
    way = "Raising" if change > 0 else "Lowering"
    return (f"{way} the base rate moved the 30-day forecast the other way ({wording.pct(stored['prob']['30']['mean'])}"
            f" → {wording.pct(doc['prob']['30']['mean'])}). That is the data speaking, not an error: the reference "
            f"class fixes how often build-ups like these escalated, so a {'higher' if change > 0 else 'lower'} "
            f"baseline leaves {'less' if change > 0 else 'more'} of that rate for the indicators to explain, and "
            f"their pushes (Drivers tab) {'shrink' if change > 0 else 'grow'}.")


def compare_rows(a: dict, b: dict) -> pd.DataFrame:
    """Two forecast documents side by side: each horizon, then each driver's push, and the difference."""
    rows = [{"what": f"P(within {h} days)", "A": wording.pct(a["prob"][h]["mean"]),
             "B": wording.pct(b["prob"][h]["mean"]),
             "B − A": f"{(b['prob'][h]['mean'] - a['prob'][h]['mean']) * 100:+.1f} pts"} for h in a["prob"]]
    drivers_b = {d["indicator"]: d["log_odds"] for d in b["drivers"]}
    for d in a["drivers"]:
        other = drivers_b.get(d["indicator"], 0.0)
        if abs(d["log_odds"]) >= 0.005 or abs(other) >= 0.005:
            rows.append({"what": f"push: {label(d['indicator'])}", "A": f"{d['log_odds']:+.2f}", "B": f"{other:+.2f}",
                         "B − A": f"{other - d['log_odds']:+.2f}"})
    return pd.DataFrame(rows)


def document(run: runs.Run, shown: dict, profile: priors.Profile, reweighted: reweight.Reweighted) -> dict:
    """The forecast document of what is on screen: the run's, with the numbers on screen."""
    doc = {**run.document(), **shown}
    if reweighted.changed:
        doc["prior_profile"] = profile.name
        doc["prior_hash"] = profile.hash
        doc["reweighted"] = {"from_run": run.id, "from_profile": run.manifest["prior_profile"],
                             "pareto_k": round(reweighted.pareto_k, 3), "ess": round(reweighted.ess, 1),
                             "draws": reweighted.weights.n}
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
    if reweight.same_priors(profile, base):
        return base
    return priors.parse(profile.text, "priors on screen")  # the checks a profile file gets


def save_profile(profile: priors.Profile, name: str, overwrite: bool = False, note: str = "") -> str:
    """Write the priors on screen as a named profile; returns the path. Raises priors.ProfileError."""
    name = name.strip()
    description = note or f"Adjusted from '{profile.name}' in the dashboard on {dt.date.today()}."
    renamed = dataclasses.replace(profile, name=name, description=description)
    return str(priors.save(renamed, overwrite=overwrite))


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


def run_table(history: list[runs.Run]) -> pd.DataFrame:
    rows = []
    for r in reversed(history):
        m = r.manifest
        d = m["diagnostics"]
        rows.append({"run": m["run_id"], "created": m["created_at"], "as of": m["as_of"], "status": m["status"],
                     "priors": m["prior_profile"], "max R-hat": d["r_hat_max"], "min ESS": d["ess_bulk_min"],
                     "divergences": d["divergences"], "reason": m.get("reason") or ""})
    return pd.DataFrame(rows)


# --- alerts --------------------------------------------------------------------------------


def alerts_for(theater: str) -> list[dict]:
    """The theater's recorded alerts (`forecast alerts THEATER`), newest first, each with `when` and `status`."""
    from forecast import alerts

    return [{**r, "when": age(r["created_at"]) if r.get("created_at") else "", "status": alerts.status(r)}
            for r in alerts.listing(theater)]


# --- export --------------------------------------------------------------------------------

EXPORT_FORMATS = {"html": ("text/html", "html"), "pdf": ("application/pdf", "pdf"),
                  "json": ("application/json", "json")}


def export_report(eng, run: runs.Run, fmt: str, doc: dict, profile: priors.Profile | None = None,
                  theater_name: str | None = None, hypothetical: list[dict] | None = None) -> bytes:
    """The report of what is on screen, through `forecast.report.render` (what `forecast report` uses).

    With `profile` (the priors on screen differ from the run's), the report carries the on-screen,
    reweighted forecast `doc` and that profile; otherwise it is the run's own report. Like the CLI,
    it says when the store's evidence for the run's as-of date has changed since the fit.
    """
    from forecast import report, store

    fresh = freshness.check(eng, run)
    rows = store.load_evidence(eng, run.manifest["theater"])
    if hypothetical is not None:  # a what-if scenario: its forecast, the run's priors, marked hypothetical
        return report.render(run, rows, fmt, forecast_override=doc, profile_override_text=run.profile_text(),
                             theater_name=theater_name, freshness=fresh, hypothetical=hypothetical)
    if profile is None:
        return report.render(run, rows, fmt, theater_name=theater_name, freshness=fresh)
    return report.render(run, rows, fmt, forecast_override=doc, profile_override_text=profile.text,
                         theater_name=theater_name, freshness=fresh)


def export_name(doc: dict, fmt: str) -> str:
    suffix = "-reweighted" if doc.get("reweighted") else ""
    return f"{doc['theater']}-{doc['as_of']}-{doc['run_id']}{suffix}.{EXPORT_FORMATS[fmt][1]}"
