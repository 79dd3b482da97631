r"""The live loop: a stored run's forecast for changed evidence, in a fraction of a second, without sampling.

A run's posterior is p(theta | reference class, target's quiet days to its as-of date c0). When the
target's evidence changes (a row added, edited or retracted; or a hypothetical "what if" row) and
possibly the date moves on to c1 >= c0, the posterior an exact refit would give differs only in the
target's own likelihood factor, so the stored draws are importance-weighted (`forecast.reweight`):

    log w(theta) = log L_new(quiet through c1 | theta) - log L_old(quiet through c0 | theta)

with L the target's survival likelihood as the fit writes it (`hazard.survival_by_day`: averaged over
imputation paths of the force covariates). The days ahead are then simulated from the new panel
(`predict.draws_for`: exercises on their new calendar, signs with their new reports, the force level
filtered with any new troop estimate), and `predict.summarise(draws, w)` gives the same forecast
document a refit stores, with the Pareto k and effective draws of the weights.

What reweighting cannot carry, it says: a new troop estimate also refines stage 1's pooled source
biases (here only the filter sees it), a change to another theater changes the reference class, and a
Pareto k above `reweight.PARETO_K_MAX` means the new posterior is too far from the stored one. Then
the answer is a background refit (`forecast refit`), which replaces the approximation.
"""

from __future__ import annotations

import datetime as dt
import time
from dataclasses import dataclass, field

import numpy as np

from forecast import freshness, predict, priors, reweight
from forecast.features import TheaterPanel, build_panel
from forecast.sampling import stacked
from forecast.schema import Evidence, Theater


@dataclass
class LiveForecast:
    """The forecast for changed evidence, and how far to trust it."""

    document: dict  # forecast document (predict.summarise shape), as of `as_of`
    weights: reweight.Weights
    draws: object  # the per-draw quantities (xarray Dataset, as a run's draws.nc) behind `document`
    as_of: str
    stage1_changed: bool = False  # troop rows differ: stage 1's pooled terms were not refitted
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def needs_refit(self) -> bool:
        return self.weights.verdict == "unreliable" or self.stage1_changed

    def explanation(self) -> str:
        k = self.weights.pareto_k
        parts = [f"Updated without sampling in {self.seconds * 1000:.0f} ms: the run's {self.weights.n:,} draws "
                 f"reweighted by the change in this theater's own likelihood"
                 + ("" if k is None else f" (Pareto k {k:.2f}, {self.weights.ess:,.0f} effective draws)") + "."]
        if self.weights.verdict == "unreliable":
            parts.append(f"Pareto k is above {reweight.PARETO_K_MAX}: too far from the stored fit to trust; refit.")
        parts += self.notes
        return " ".join(parts)


class LiveRun:
    """A stored run, ready to answer for other evidence of its theater."""

    def __init__(self, run, theater: Theater, store_rows: list[Evidence]):
        self.run = run
        self.theater = theater
        self.as_of = dt.date.fromisoformat(run.manifest["as_of"])
        self.seed = int(run.manifest.get("sampler", {}).get("seed", 0))
        self.stage1_draws = stacked(run.stage(1).posterior)
        self.params = predict.hazard_params(run.stage(2).posterior, theater.id)
        self.stored = run.draws()
        # What the run saw (its rows as it saw them), for its own likelihood.
        self.seen = [r for r in store_rows if freshness.in_run(run.manifest, r)]
        self.reading = priors.parse(run.profile_text(), "profile.toml").reading  # read rows as the fit did
        self.old_log_lik = self._survival(build_panel(theater, self.seen, cut=self.as_of, reading=self.reading))[:, -1]

    def _survival(self, panel: TheaterPanel) -> np.ndarray:
        """log P(quiet through each day) per draw, over the fixed paths the run's history weights use."""
        return predict.history_survival(panel, self.stage1_draws, self.params, self.seed)

    def forecast(self, rows: list[Evidence], as_of: dt.date | None = None) -> LiveForecast:
        """The forecast as of `as_of` (default: the run's date, or the latest day a row became known) for `rows`."""
        started = time.perf_counter()
        rows = [r for r in rows if r.kind != "outcome"]
        if as_of is None:
            as_of = max([self.as_of] + [r.known_on for r in rows])
        if as_of < self.as_of:
            raise ValueError(f"as of {as_of}: before the run's as-of date {self.as_of}; refit as of that date")
        panel = build_panel(self.theater, rows, cut=as_of, reading=self.reading)
        survival = self._survival(panel)
        weights = reweight.psis(survival[:, -1] - self.old_log_lik)
        draws = predict.per_draw(panel, self.stage1_draws, self.params, self.seed,
                                 reuse=(self.stored, _first_change(rows, self.seen, self.as_of)), survival=survival)
        w = None if weights.pareto_k is None else weights.w  # equal weights: the run's own summary, exactly
        document = {**self.run.document(), **predict.summarise(draws, w), "as_of": str(as_of)}
        notes = []
        stage1_changed = _troops(rows, as_of) != _troops(self.seen, as_of)
        if stage1_changed:
            notes.append("Troop estimates changed: the filter sees them, but stage 1's pooled source biases were "
                         "not refitted; refit for the exact answer.")
        return LiveForecast(document, weights, draws, str(as_of), stage1_changed, notes, time.perf_counter() - started)


def _first_change(rows: list[Evidence], seen: list[Evidence], as_of: dt.date) -> np.datetime64:
    """The first day the evidence differs from what the run saw (history before it cannot have moved)."""
    before = {r.model_dump_json(): r for r in seen}
    now = {r.model_dump_json(): r for r in rows}
    changed = [r.known_on for key, r in {**before, **now}.items() if (key in before) != (key in now)]
    return np.datetime64(min(changed, default=as_of + dt.timedelta(days=1)), "D")


def _troops(rows: list[Evidence], as_of: dt.date) -> set[str]:
    return {r.model_dump_json() for r in rows if r.kind == "troops" and r.known_on <= as_of}
