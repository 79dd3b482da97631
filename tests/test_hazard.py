"""The one hazard formula (forecast.hazard): the same numbers on every path that evaluates it."""

from __future__ import annotations

import numpy as np
import pymc as pm
import pytest

from forecast import hazard


def test_log_odds_is_alpha_plus_effect_plus_beta_x_for_each_draw():
    rng = np.random.default_rng(0)
    alpha, sigma, z = rng.normal(size=5), rng.uniform(size=5), rng.normal(size=5)
    x, beta = rng.normal(size=(5, 7, 3)), rng.normal(size=(5, 3))
    eta = hazard.log_odds(alpha[:, None], sigma[:, None], z[:, None], x, beta)
    expected = (alpha + sigma * z)[:, None] + np.einsum("dtj,dj->dt", x, beta)
    np.testing.assert_allclose(eta, expected, rtol=1e-12)
    shared = rng.normal(size=(7, 3))  # one covariate matrix, one beta per draw
    np.testing.assert_allclose(hazard.covariate_term(shared, beta), np.einsum("tj,dj->dt", shared, beta), rtol=1e-12)


def test_the_model_graph_and_numpy_agree():
    rng = np.random.default_rng(1)
    x, beta = rng.normal(size=(6, 3)), rng.normal(size=3)
    with pm.Model():
        b = pm.Data("b", beta)
        data = pm.Data("x", x)
        graph = hazard.log_odds(0.5, 0.5, 0.5, data, b)
    np.testing.assert_allclose(graph.eval(), 0.75 + x @ beta, rtol=1e-12)
    np.testing.assert_allclose(hazard.log_odds(0.5, 0.5, 0.5, x, beta), 0.75 + x @ beta, rtol=1e-12)


def test_cumulative_and_survival_are_complements():
    eta = np.array([[-3.0, -2.0, -5.0, 0.0]])
    h = hazard.daily(eta)
    assert hazard.cumulative(h)[0, -1] == pytest.approx(1 - np.prod(1 - h))
    assert np.exp(hazard.log_survival(eta))[0] == pytest.approx(np.prod(1 - h))
    assert np.all(np.diff(hazard.cumulative(h)) >= 0)
