"""Simulate build-up crises from the model's own generative process (forecast.model).

Used by the parameter-recovery test and the simulation-based calibration script
(benchmarks/sbc.py). The hazard of a simulated theater is computed with the
model's own code, so the simulation cannot drift away from what is fitted:

1. evidence rows: a scheduled exercise (announced ahead), signs, unit moves,
   withdrawal claims, some rows reported a few days after they held;
2. the latent log force level, a Brownian walk in weeks from the crisis start,
   ``L(0) ~ Normal(MU0, TAU0)``, ``L(t) = L(0) + drift * W(t)``;
3. troop estimates ``log(estimate) ~ Normal(L(t) + bias[s], noise[s])``;
4. the theater's panel from ``features.build_panel`` under the given reading
   (the static covariates the model sees; a reading that grades credibility gets
   signs and unit moves with random grades) and its force covariates from ``model.force_paths`` with the TRUE
   stage-1 parameters and one filtering shock ``~ Normal(0, 1)`` per theater — the
   errors-in-variables term the model integrates over by its imputation paths;
5. ``logit h[c,t] = alpha + sigma_theater * z_c + beta . x[c,t]`` (`forecast.hazard`), and the
   escalation day is the first day a Bernoulli(h) fires; none within the window
   means the case ends, censored, on its last day.
"""

from __future__ import annotations

import datetime as dt
import zlib
from dataclasses import dataclass, field

import numpy as np
import xarray as xr

from forecast import hazard
from forecast.features import INDICATORS, READING, Reading, TheaterPanel, build_panel
from forecast.model import MU0, TAU0, force_paths
from forecast.schema import CREDIBILITY, MODEL_BY_KIND, SIGN_CATEGORIES, SOURCE_TYPES, Evidence, Theater, Troops

START = dt.date(2000, 1, 1)


@dataclass
class Simulation:
    theaters: list[Theater]
    evidence: list[Evidence]  # outcome rows included
    params: dict
    z: np.ndarray  # theater effects (standard normal)
    shocks: np.ndarray  # filtering shock per theater
    x: list[np.ndarray]  # covariates (days × INDICATORS) over each theater's whole window
    event_day: np.ndarray  # index of the escalation day, -1 if censored
    reading: Reading = field(default=READING)  # how the panels read the evidence

    def panels(self) -> list[TheaterPanel]:
        """The closed-case panels a fit sees (as `dataset.assemble` builds the reference class)."""
        by_theater: dict[str, list[Evidence]] = {t.id: [] for t in self.theaters}
        for row in self.evidence:
            by_theater[row.theater].append(row)
        return [build_panel(t, by_theater[t.id], reading=self.reading) for t in self.theaters]


def stage1_dataset(params: dict) -> xr.Dataset:
    """The true stage-1 parameters as a one-draw posterior (what force_paths reads)."""
    return xr.Dataset({
        "bias": (("sample", "source_type"), np.asarray(params["bias"], float)[None, :]),
        "noise": (("sample", "source_type"), np.asarray(params["noise"], float)[None, :]),
        "drift": (("sample",), np.array([float(params["drift"])])),
    })


def covariates(panel: TheaterPanel, params: dict, shock: float) -> np.ndarray:
    """x[t, INDICATORS] of a panel's days, exactly as the model computes them, at the true stage-1 values."""
    x_force = force_paths(panel, stage1_dataset(params), panel.days, np.array([0]), np.array([shock]))[0]
    return np.column_stack([x_force, panel.static])


def simulate(params: dict, n_theaters: int, days: int, rng: np.random.Generator, *,
             estimates: tuple[int, int] = (3, 9), garrison_share: float = 0.3,
             level0: float | None = None, reading: Reading = READING) -> Simulation:
    """Theaters and evidence from the generative process.

    params: alpha, beta (INDICATORS order), sigma_theater, bias (SOURCE_TYPES order,
    summing to zero), noise, drift (sd of the weekly change in log level).
    estimates: range of troop estimates per theater. level0: the initial log level
    of every theater (default: drawn from the model's prior Normal(MU0, TAU0)).
    """
    beta = np.asarray(params["beta"], float)
    assert beta.shape == (len(INDICATORS),), "beta: one value per indicator, in INDICATORS order"
    theaters, evidence, xs, shocks = [], [], [], rng.standard_normal(n_theaters)
    z = rng.standard_normal(n_theaters)
    event_day = np.full(n_theaters, -1)
    for c in range(n_theaters):
        tid = f"sim-{c:03d}"
        start = START + dt.timedelta(days=int(rng.integers(0, 3000)))
        start_level = MU0 + TAU0 * rng.standard_normal() if level0 is None else level0
        steps = rng.normal(0.0, params["drift"] * np.sqrt(1 / 7), days - 1)
        level = start_level + np.concatenate([[0.0], np.cumsum(steps)])  # level[d]: d days after start
        garrison = None
        if rng.random() < garrison_share:
            garrison = float(np.exp(start_level + rng.normal(0.0, 0.3)))
        theater = Theater(id=tid, name=f"Simulated {c}", actor="A", target="B", start=start, source="simulation",
                          garrison=garrison, garrison_source="simulation" if garrison else None)
        rows = _evidence(tid, start, days, rng) + _troops(tid, start, level, params, estimates, rng)
        if reading.credibility:
            rows = _graded(rows, np.random.default_rng(zlib.crc32(tid.encode())))  # own stream: others unchanged

        # The hazard over the whole window, from the panel the model will see (no cut binds inside it).
        window = build_panel(theater, rows, cut=start + dt.timedelta(days=days - 1), reading=reading)
        x = covariates(window, params, shocks[c])
        eta = hazard.log_odds(params["alpha"], params["sigma_theater"], z[c], x, beta)
        hits = np.flatnonzero(rng.random(days) < hazard.daily(eta))
        if hits.size:
            event_day[c] = hits[0]
        last = int(hits[0]) if hits.size else days - 1
        rows.append(MODEL_BY_KIND["outcome"](kind="outcome", theater=tid, date=start + dt.timedelta(days=last),
                                             escalated=bool(hits.size), source="sim"))
        theaters.append(theater)
        evidence += rows
        xs.append(x)
    return Simulation(theaters, evidence, params, z, shocks, xs, event_day, reading)


def _graded(rows: list[Evidence], rng) -> list[Evidence]:
    """Signs and unit moves with a random credibility grade (the others as they are)."""
    return [r.model_copy(update={"credibility": CREDIBILITY[int(rng.integers(len(CREDIBILITY)))]})
            if r.kind in ("sign", "unit_move") else r for r in rows]


def _evidence(tid: str, start: dt.date, days: int, rng) -> list[Evidence]:
    def at(d):
        return start + dt.timedelta(days=int(d))

    rows = []
    if rng.random() < 0.6:  # a scheduled exercise, announced ten days ahead
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


def _troops(tid, start, level, params, estimates, rng) -> list[Evidence]:
    rows = []
    n = int(rng.integers(estimates[0], estimates[1] + 1))
    for d in sorted(rng.choice(len(level), size=min(n, len(level)), replace=False)):
        s = int(rng.integers(0, len(SOURCE_TYPES)))
        value = level[d] + params["bias"][s] + params["noise"][s] * rng.standard_normal()
        held = start + dt.timedelta(days=int(d))
        reported = held + dt.timedelta(days=int(rng.integers(1, 8))) if rng.random() < 0.3 else None
        rows.append(Troops(kind="troops", theater=tid, date=held, reported=reported, estimate=float(np.exp(value)),
                           source_type=SOURCE_TYPES[s], source=f"sim source {s} day {d}"))
    return rows
