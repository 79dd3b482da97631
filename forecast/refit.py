"""One refit, end to end: evidence as of a date → fit → gate → forecast → stored run.

The forecast of a run is computed here from its own posterior and stored with
it; `show`, reports and the dashboard only read stored runs.
It compiles through the process-wide `sampling.COMPILED`, with stage 1's sizes
rounded up (`model.stage1_bucket`), so a long-lived process (the dashboard, a
warm worker of `forecast.dispatch`) compiles a theater's model once and later
refits only swap the data in.
"""

from __future__ import annotations

import datetime as dt
import logging
import time

from forecast import dataset, freshness, model, predict, priors, runs, sampling
from forecast.features import data_hash

log = logging.getLogger(__name__)


def refit(eng, theater: str, as_of: dt.date | None = None, profile: priors.Profile | None = None,
          settings: sampling.SamplerSettings = sampling.SamplerSettings(), sample=sampling.sample) -> runs.Run:
    """Fit `theater` as of `as_of` (default: its latest evidence) and store the run.

    The run is published only if it passes the convergence gate; otherwise it is
    stored as rejected with the reason, and the last published run stays current.
    `sample`: the sampler call (`sampling.sample`; fast tests pass a prior-draw stand-in).
    """
    profile = profile or priors.load("default")
    started = dt.datetime.now(dt.timezone.utc)
    clock = Clock()
    panels, as_of = dataset.from_store(eng, theater, as_of, reading=profile.reading)
    hashed = data_hash(panels)
    clock.lap("data")
    fitted = model.fit(panels, theater, profile, settings, compiler=sampling.COMPILED,
                       stage1_pad=model.stage1_bucket(panels), sample=sample)
    diagnostics = model.diagnostics(fitted)
    reasons = runs.gate(diagnostics)
    clock.lap("fit")

    draws = predict.draws_for(fitted.panel(theater), fitted.stage1.posterior, fitted.stage2.posterior,
                              seed=settings.seed)
    clock.lap("prediction")
    summary = predict.summarise(draws)
    clock.lap("summary_and_history")
    manifest = {
        "run_id": runs.new_run_id(started),
        "theater": theater,
        "as_of": str(as_of),
        "created_at": started.isoformat(timespec="seconds"),
        "status": "rejected" if reasons else "published",
        "reason": "; ".join(reasons) or None,
        "prior_profile": profile.name,
        "prior_hash": profile.hash,
        "data_hash": hashed,
        "seen": freshness.seen(panels, theater),
        "code_version": runs.code_version(),
        "reference_class": [p.id for p in panels if p.id != theater],
        "sampler": settings.recorded(),
        "stage1_priors": {name: prior.to_dict() for name, prior in priors.STAGE1_PRIORS.items()},
        "diagnostics": diagnostics,
        "timing": clock.phases(compile=diagnostics["compile_seconds"], sampling=diagnostics["sampling_seconds"]),
    }
    run = runs.save(theater, manifest, summary, draws, fitted.stage1, fitted.stage2, profile.text)
    log.info("%s as of %s: run %s %s (written in %.1f s)", theater, as_of, run.id, manifest["status"],
             clock.lap("writing"))
    return run


class Clock:
    """Wall-clock seconds of a refit's phases, so the next bottleneck is visible (the run's manifest `timing`)."""

    def __init__(self):
        self.last, self.laps = time.perf_counter(), {}

    def lap(self, phase: str) -> float:
        now = time.perf_counter()
        self.laps[phase], self.last = round(now - self.last, 2), now
        return self.laps[phase]

    def phases(self, compile: float, sampling: float) -> dict:
        """The laps so far, with the fit split into compile, sampling and the rest (model building, filtering)."""
        laps = dict(self.laps)
        fit = laps.pop("fit")
        return {"data": laps.pop("data"), "compile": compile, "sampling": sampling,
                "model_and_filtering": round(fit - compile - sampling, 2), **laps}
