r"""The hazard: one implementation of the model's daily escalation probability.

    logit h[c,t] = alpha + sigma_theater * z_c + sum_j beta_j x[c,t,j]

`log_odds` is the one place this formula is written. The model builds its
PyTensor graph with it (`forecast.model`), and prediction, the backtest's
survival update, importance reweighting and the simulator evaluate it on
NumPy draws. Around it sit the two quantities every caller derives from a
daily hazard:

    P(onset by day t) = 1 - prod_{s <= t} (1 - h(s))                (`cumulative`)
    log P(no onset over days s) = sum_s log(1 - h(s))               (`log_survival`)

Shapes (NumPy): `x` is (..., days, indicators); `beta` is (indicators,) or one
row per draw, (draws, indicators), broadcast against `x`'s leading axes.
"""

from __future__ import annotations

import numpy as np
from scipy.special import expit


def covariate_term(x, beta):
    """sum_j beta_j x[..., j]: for one beta vector or one per draw (NumPy), or a PyTensor graph."""
    if isinstance(x, np.ndarray) and isinstance(beta, np.ndarray):
        return np.matmul(x, beta[..., None])[..., 0]
    return x.dot(beta)  # PyTensor: a (rows, indicators) data matrix times the beta vector


def quiet_log_odds(alpha, sigma_theater, z):
    """The theater's log-odds with every indicator at zero: alpha + sigma_theater * z."""
    return alpha + sigma_theater * z


def log_odds(alpha, sigma_theater, z, x, beta):
    """logit h = alpha + sigma_theater * z + beta . x (NumPy draws, broadcast; or a PyTensor graph)."""
    return quiet_log_odds(alpha, sigma_theater, z) + covariate_term(x, beta)


def log_sigmoid(eta: np.ndarray) -> np.ndarray:
    """log(sigmoid(eta)), stable for large |eta|."""
    return -np.logaddexp(0.0, -eta)


def grouped_log_lik(eta, days, events, log_sig=log_sigmoid):
    """Log-likelihood of `days` days sharing log-odds eta, `events` of them onsets:
    e log h + (n - e) log(1 - h) = n log h - (n - e) eta, since log(1 - h) = log h - eta
    (one transcendental per group instead of two). `log_sig`: log(sigmoid) for NumPy (default)
    or a PyTensor graph."""
    return days * log_sig(eta) - (days - events) * eta


def daily(eta: np.ndarray) -> np.ndarray:
    """The daily hazard h = sigmoid(eta)."""
    return expit(eta)


def cumulative(h: np.ndarray) -> np.ndarray:
    """P(onset by day t) along the last axis: 1 - prod(1 - h)."""
    return -np.expm1(np.cumsum(np.log1p(-h), axis=-1))


def log_survival(eta: np.ndarray) -> np.ndarray:
    """log P(no onset on any of the days on the last axis) = sum log(1 - h)."""
    return log_sigmoid(-eta).sum(axis=-1)


def survival_by_day(alpha, sigma_theater, z, beta, static: np.ndarray, paths: np.ndarray) -> np.ndarray:
    """log P(no escalation through each day) of one theater, per draw and theater effect.

    The likelihood a fit gives a theater's quiet days, as `forecast.model.build_stage2` writes it:
    survival averaged over the imputation paths of the force covariates,
    log mean_k exp(sum_{s <= t} log(1 - h_k(s))), for every prefix t of the days at once.

    alpha, sigma_theater: (draws,); z: (draws, effects); beta: (draws, indicators), force first as in
    INDICATORS; static: (days, static indicators); paths: (paths, days, force indicators).
    Returns (draws, effects, days).
    """
    n_force = paths.shape[-1]
    # The static covariates are the same on every path: their term is computed once, as in the model.
    quiet = log_odds(alpha[:, None, None], sigma_theater[:, None, None], z[:, :, None], static[None],
                     beta[:, None, n_force:])  # (draws, effects, days)
    out = None
    for path in paths:
        eta = quiet + covariate_term(path, beta[:, :n_force])[:, None, :]
        prefix = np.cumsum(log_sigmoid(-eta), axis=-1)
        out = prefix if out is None else np.logaddexp(out, prefix)
    return out - np.log(len(paths))
