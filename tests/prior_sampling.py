"""A stand-in for `forecast.sampling.sample` in fast tests: independent draws from the model's prior.

Like pymc-marketing's `mock_sample`, it returns InferenceData shaped exactly as
the sampler's (chains x draws, the same variables and coordinates, a
`sample_stats.diverging` of zeros), so everything after sampling — filtering,
stage 2, prediction, the gate, the run store, the page and the reports — runs
for real in seconds. The numbers are the priors' forecast, not a posterior:
tests that prove correctness (recovery, leakage, the browser test) sample for
real.
"""

from __future__ import annotations

import time
import warnings

import arviz as az
import numpy as np
import pymc as pm


def prior_sample(model, settings, var_names, label, seconds, target_accept, low_rank=False, draws=None,
                 compiler=None):
    """Same call as forecast.sampling.sample; draws come from pm.sample_prior_predictive."""
    draws = draws or settings.draws
    started = time.perf_counter()
    with model, warnings.catch_warnings():
        # The hazard likelihood is a Potential, which prior draws ignore: that is the point here.
        warnings.filterwarnings("ignore", "The effect of Potentials", UserWarning)
        prior = pm.sample_prior_predictive(draws=settings.chains * draws, var_names=var_names,
                                           random_seed=settings.seed,
                                           compile_kwargs={"mode": "FAST_COMPILE"}).prior
    seconds[f"{label}_compile"] = 0.0
    posterior = {}
    for name in var_names:
        values = prior[name].values[0]  # (chains * draws, ...)
        posterior[name] = values.reshape((settings.chains, draws) + values.shape[1:])
    dims = {name: [d for d in prior[name].dims if d not in ("chain", "draw")] for name in var_names}
    coords = {d: prior[d].values for name in var_names for d in dims[name]}
    idata = az.from_dict(posterior=posterior, dims=dims, coords=coords,
                         sample_stats={"diverging": np.zeros((settings.chains, draws), dtype=bool)})
    seconds[f"{label}_sampling"] = time.perf_counter() - started
    return idata


class SlowPriorSample:
    """`prior_sample` that first sleeps, so a test can kill the worker process mid-fit; picklable for workers.

    Each call writes `<pid>-<time_ns>` into `markers` before sleeping: the test sees which process is sampling.
    """

    def __init__(self, markers, seconds: float):
        self.markers, self.seconds = str(markers), seconds

    def __call__(self, *args, **kwargs):
        import os
        from pathlib import Path

        Path(self.markers, f"{os.getpid()}-{time.time_ns()}").touch()
        time.sleep(self.seconds)
        return prior_sample(*args, **kwargs)
