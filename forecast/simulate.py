"""Simulate build-up crises from the model's own generative process.

Used by the parameter-recovery test and the simulation-based calibration
script: theaters, troop estimates from biased noisy sources, exercises, signs,
claims, and an escalation day drawn from the discrete-time hazard.
"""

from __future__ import annotations

import datetime as dt

import numpy as np

from forecast.features import FORCE, STATIC, static_covariates
from forecast.schema import SIGN_CATEGORIES, SOURCE_TYPES, Evidence, Theater, Troops, MODEL_BY_KIND

START = dt.date(2000, 1, 1)


def simulate(params: dict, n_theaters: int, days: int, rng: np.random.Generator):
    """Theaters and evidence rows; params: alpha, beta (INDICATORS order), sigma_theater, bias, noise, drift."""
    theaters, evidence = [], []
    z = rng.standard_normal(n_theaters)
    for c in range(n_theaters):
        tid = f"sim-{c:03d}"
        start = START + dt.timedelta(days=int(rng.integers(0, 3000)))
        theaters.append(Theater(id=tid, name=f"Simulated {c}", actor="A", target="B", start=start, source="simulation"))
        rows = _evidence(tid, start, days, rng)
        level = np.log(40_000) + np.cumsum(rng.normal(0, params["drift"] / np.sqrt(7), days))
        rows += _troops(tid, start, level, params, rng)
        evidence += rows
        outcome = _outcome(tid, start, rows, level, params, params["sigma_theater"] * z[c], days, rng)
        evidence.append(outcome)
    return theaters, evidence


def _evidence(tid: str, start: dt.date, days: int, rng) -> list[Evidence]:
    def at(d):
        return start + dt.timedelta(days=int(d))

    rows = []
    if rng.random() < 0.6:
        s = int(rng.integers(0, days // 2))
        rows.append(MODEL_BY_KIND["exercise"](kind="exercise", theater=tid, date=at(max(s - 10, 0)), name="Drill",
                                              start=at(s), end=at(s + int(rng.integers(5, 20))), source="sim"))
    for category in SIGN_CATEGORIES:
        if rng.random() < 0.3:
            rows.append(MODEL_BY_KIND["sign"](kind="sign", theater=tid, date=at(rng.integers(0, days)),
                                              category=category, description=category, source="sim"))
    for i in range(int(rng.poisson(1.5))):
        rows.append(MODEL_BY_KIND["unit_move"](kind="unit_move", theater=tid, date=at(rng.integers(0, days)),
                                               unit=f"unit {i}", direction="arrive" if rng.random() < 0.7 else "depart",
                                               distance_km=float(rng.integers(50, 6000)), source="sim"))
    for verified in (False, True):
        if rng.random() < 0.25:
            rows.append(MODEL_BY_KIND["claim"](kind="claim", theater=tid, date=at(rng.integers(0, days)),
                                               claim_type="withdrawal", verified=verified, source=f"sim {verified}"))
    return rows


def _troops(tid, start, level, params, rng) -> list[Evidence]:
    rows = []
    for d in sorted(rng.choice(len(level), size=int(rng.integers(3, 9)), replace=False)):
        s = int(rng.integers(0, len(SOURCE_TYPES)))
        value = level[d] + params["bias"][s] + params["noise"][s] * rng.standard_normal()
        rows.append(Troops(kind="troops", theater=tid, date=start + dt.timedelta(days=int(d)), estimate=float(np.exp(value)),
                           source_type=SOURCE_TYPES[s], source=f"sim source {s} day {d}"))
    return rows


def _outcome(tid, start, rows, level, params, effect, days, rng) -> Evidence:
    grid = np.arange(np.datetime64(start, "D"), np.datetime64(start, "D") + days)
    x_static = static_covariates(rows, grid)
    troop_days = sorted((r.date - start).days for r in rows if r.kind == "troops")
    base = level[troop_days[0]]
    force_level = (np.where(np.arange(days) < troop_days[0], base, level) - base) / np.log(2)
    lagged = np.concatenate([np.full(28, level[0]), level])[:days]
    force_growth = (level - lagged) / np.log(2)
    x = np.column_stack([force_level, force_growth, x_static])
    assert x.shape[1] == len(FORCE) + len(STATIC)
    hazard = 1 / (1 + np.exp(-(params["alpha"] + effect + x @ params["beta"])))
    hits = np.flatnonzero(rng.random(days) < hazard)
    if hits.size:
        return MODEL_BY_KIND["outcome"](kind="outcome", theater=tid, date=start + dt.timedelta(days=int(hits[0])),
                                        escalated=True, source="sim")
    return MODEL_BY_KIND["outcome"](kind="outcome", theater=tid, date=start + dt.timedelta(days=days - 1),
                                    escalated=False, source="sim")
