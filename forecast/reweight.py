r"""Importance reweighting of stored posterior draws: the one implementation, Pareto-smoothed.

A run's draws were sampled from p(theta | data, prior). A question that changes
only a factor of that density — another prior, or a theater's own at-risk days
added or taken away — is answered without sampling by weighting each draw:

    w_d  ∝  new density(theta_d) / old density(theta_d)

smoothed by Pareto-smoothed importance sampling (PSIS, ArviZ `psislw`). The
shape k of the fitted Pareto tail says whether the weights can be trusted
(Vehtari et al. 2024): above `PARETO_K_MAX` they cannot, and the answer needs a
refit. The effective number of draws is 1 / sum(w^2).

Callers: the dashboard's prior changes (`PriorReweighter`), the backtest's
survival update of a held-out case (`forecast.backtest`), and whatever else
asks "what if" of a stored fit. The summaries of weighted draws all come from
`forecast.predict.summarise(draws, weights)`.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from forecast import priors

PARETO_K_MAX = 0.7  # above this Pareto k the importance weights are not trustworthy: refit
MIN_ESS_SHARE = 0.1  # fewer effective draws than this share of all draws: usable but noisy


@dataclass(frozen=True)
class Weights:
    """Normalised importance weights of n draws, with their diagnostics."""

    w: np.ndarray  # sums to 1
    pareto_k: float | None  # None: the weights are all equal (nothing changed)
    ess: float

    @property
    def n(self) -> int:
        return len(self.w)

    @property
    def verdict(self) -> str:
        """'ok', 'noisy' (few effective draws) or 'unreliable' (Pareto k above PARETO_K_MAX)."""
        if self.pareto_k is not None and self.pareto_k > PARETO_K_MAX:
            return "unreliable"
        if self.ess < MIN_ESS_SHARE * self.n:
            return "noisy"
        return "ok"


def psis(log_ratio: np.ndarray) -> Weights:
    """Pareto-smoothed normalised weights from log density ratios (one per draw)."""
    log_ratio = np.asarray(log_ratio, dtype=float)
    if np.ptp(log_ratio) == 0:
        return Weights(np.full(len(log_ratio), 1.0 / len(log_ratio)), None, float(len(log_ratio)))
    import arviz as az

    smoothed, k = az.psislw(log_ratio - log_ratio.max())
    w = np.exp(smoothed - smoothed.max())
    w /= w.sum()
    return Weights(w, float(np.asarray(k)), float(1.0 / np.sum(w**2)))


def same_priors(a: priors.Profile, b: priors.Profile) -> bool:
    return a.base_rate == b.base_rate and a.indicators == b.indicators and a.theater_spread == b.theater_spread


@dataclass
class Reweighted:
    """A run's forecast under other priors: the document and how far to trust it."""

    document: dict  # the forecast document (the stored one, or reweighted)
    changed: bool  # the priors differ from the run's
    weights: Weights | None = None
    seconds: float = 0.0

    @property
    def pareto_k(self) -> float | None:
        return None if self.weights is None else self.weights.pareto_k

    @property
    def ess(self) -> float | None:
        return None if self.weights is None else self.weights.ess

    @property
    def verdict(self) -> str:
        return "ok" if self.weights is None else self.weights.verdict


class PriorReweighter:
    """A run's stored draws and the profile they were sampled under: forecasts under other priors."""

    def __init__(self, run):
        self.run = run
        self.draws = run.draws()
        self.stored = run.forecast()
        self.profile = priors.parse(run.profile_text(), f"{run.path}/profile.toml")
        self.alpha = self.draws["alpha"].values
        self.beta = self.draws["beta"].values
        self.sigma = self.draws["sigma_theater"].values
        # The density the draws were sampled under, recomputed by today's solver (older runs stored
        # it under another, so recomputing keeps old and new priors on one scale).
        self.log_prior = self.profile.log_density(self.alpha, self.beta, self.sigma)

    @property
    def n_draws(self) -> int:
        return len(self.alpha)

    def weights(self, profile: priors.Profile) -> Weights:
        return psis(profile.log_density(self.alpha, self.beta, self.sigma) - self.log_prior)

    def apply(self, profile: priors.Profile) -> Reweighted:
        from forecast import predict

        started = time.perf_counter()
        if same_priors(profile, self.profile):
            return Reweighted(self.stored, False, seconds=time.perf_counter() - started)
        weights = self.weights(profile)
        doc = {**self.stored, **predict.summarise(self.draws, weights.w)}
        return Reweighted(doc, True, weights, time.perf_counter() - started)
