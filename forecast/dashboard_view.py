"""What the dashboard shows, computed outside Streamlit (dashboards/app.py only lays it out).

- `theater_state`: which run to show for a theater and why (none yet, latest rejected, ...);
- formatting: probabilities, ages, the headline numbers;
- evidence rows as a table;
- the priors on screen: the analyst's values as a validated profile, its reweighted
  forecast explained (`forecast.reweight` does the reweighting), saving it;
- the convergence gate and the run history as tables;
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

from forecast import predict, priors, reweight, runs
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


def evidence_frame(rows: list[Evidence], as_of: str | None = None) -> pd.DataFrame:
    """Evidence as a table: date, kind, what, source, known on, whether the shown run saw it."""
    cut = dt.date.fromisoformat(as_of) if as_of else None
    records = []
    for r in rows:
        records.append({
            "date": r.date, "kind": r.kind, "what": r.describe(), "source": r.source,
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
