"""Sampler calls: the settings a fit records, NUTS through nutpie or PyMC, and compile reuse.

`sample` runs one model stage and records its compile and sampling seconds.
`CompileCache` nutpie-compiles each distinct log-density graph once; a later
model with the same graph (same ops, constants and data *names*, other data
values) reuses the compiled function with its data swapped
(`nutpie.CompiledModel.with_data`, public API). The reused model keeps the
first model's coordinate labels, so every result is relabelled from the model
it was asked for (`_label`), through xarray rather than nutpie's internals.
"""

from __future__ import annotations

import hashlib
import sys
import threading
import time
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class SamplerSettings:
    # No more draws than the gate (bulk ESS >= 400) needs, with room to spare. Measured on the flagship
    # refit (57 cases, 3 seeds x 2 as-of dates, benchmarks/sampler_budget.json): stage 2 keeps 0.30-0.47
    # bulk ESS per draw (limit: sigma_theater), so 4 x 600 draws give >= 1.8x the gate; tuning past 400
    # steps bought no ESS (README, "The sampler budget").
    draws: int = 600
    tune: int = 400
    chains: int = 4
    cores: int = 2
    # Stage 1's level/noise geometry needs small steps: it diverged at 0.9 on the 26 cases, and at 0.97
    # once or twice in 12,000 draws on the 55 (the drift funnel; 3 seeds x 2 as-of dates, none at 0.99).
    # Stage 2's correlated indicators mix best with nutpie's low-rank mass matrix.
    stage1_target_accept: float = 0.99
    # Stage 1's drift mixes slowly (0.05-0.08 bulk ESS per draw, a sixth of stage 2's) but each of its
    # draws is cheap: it draws 5x as many, for an ESS like stage 2's.
    stage1_draws_factor: int = 5
    stage2_target_accept: float = 0.9
    seed: int = 20220224
    sampler: str = "nutpie"  # or "pymc"
    progressbar: bool = True

    def recorded(self) -> dict:
        """The settings that decide a fit (not how it reports progress), as a run's manifest stores them."""
        return {k: v for k, v in vars(self).items() if k != "progressbar"}


def sample(model, settings: SamplerSettings, var_names: list[str], label: str, seconds: dict,
           target_accept: float, low_rank: bool = False, draws: int | None = None, compiler=None):
    """NUTS with the configured sampler; records compile and sampling seconds under `label`.

    `compiler`: replaces nutpie.compile_pymc_model (same call); the backtest passes a `CompileCache`.
    Returns ArviZ InferenceData labelled with `model`'s coordinates.
    """
    import pymc as pm

    if settings.progressbar:
        print(f"{label}: compiling, then {settings.chains} chains x {settings.tune}+{settings.draws} "
              f"draws ({settings.sampler})", file=sys.stderr, flush=True)
    draws = draws or settings.draws
    started = time.perf_counter()
    with model:
        if settings.sampler == "nutpie":
            import nutpie

            compiled = (compiler or nutpie.compile_pymc_model)(model, var_names=var_names)
            seconds[f"{label}_compile"] = time.perf_counter() - started
            started = time.perf_counter()
            idata = nutpie.sample(compiled, draws=draws, tune=settings.tune, chains=settings.chains,
                                  cores=settings.cores, seed=settings.seed, target_accept=target_accept,
                                  progress_bar=settings.progressbar, low_rank_modified_mass_matrix=low_rank)
        else:
            seconds[f"{label}_compile"] = 0.0  # PyMC compiles inside pm.sample (cached on disk across runs)
            idata = pm.sample(draws=draws, tune=settings.tune, chains=settings.chains,
                              cores=settings.cores, random_seed=settings.seed,
                              target_accept=target_accept, progressbar=settings.progressbar,
                              var_names=var_names, compute_convergence_checks=False)
    seconds[f"{label}_sampling"] = time.perf_counter() - started
    return _label(idata, model)


def stacked(posterior):
    """A posterior (xarray Dataset) with (chain, draw) flattened to `sample`, first: one row per draw."""
    return posterior.stack(sample=("chain", "draw")).transpose("sample", ...)


def _label(idata, model):
    """The model's coordinate values on every group of `idata` whose dimension has their length."""
    for group in idata.groups():
        data = idata[group]
        labels = {dim: list(values) for dim, values in model.coords.items()
                  if values is not None and dim in data.dims and data.sizes[dim] == len(values)}
        if labels:
            setattr(idata, group, data.assign_coords(labels))
    return idata


def fingerprint(pm_model, var_names) -> str:
    """Hash of the model's log-density graph: ops, wiring, constants, data *names* (not their values),
    and the parameters' shapes.

    Two models with the same fingerprint differ only in their pm.Data values, so one
    compiled model serves both.
    """
    from pytensor.compile.sharedvalue import SharedVariable
    from pytensor.graph.basic import Constant
    from pytensor.graph.traversal import toposort

    digest = hashlib.sha256(repr(list(var_names or [])).encode())
    ids: dict = {}

    def ref(var) -> str:
        if var in ids:
            return ids[var]
        if isinstance(var, SharedVariable):
            tag = f"shared:{var.name}:{var.type}"
        elif isinstance(var, Constant):
            data = np.asarray(var.data)
            tag = f"const:{var.type}:{data.shape}:{hashlib.sha256(data.tobytes()).hexdigest()}"
        else:
            tag = f"input:{var.name}:{var.type}"
        ids[var] = tag
        return tag

    for i, node in enumerate(toposort([pm_model.logp()])):
        digest.update(f"{node.op}({','.join(ref(v) for v in node.inputs)})".encode())
        for j, out in enumerate(node.outputs):
            ids[out] = f"n{i}.{j}:{out.type}"
    for rv in pm_model.free_RVs:
        digest.update(f"{rv.name}:{rv.type}".encode())
    # A parameter's length can come from a coordinate (z: one per theater) and show as None in its
    # type: two models alike but for their theater count must not share a compiled model.
    for name, shape in sorted(pm_model.eval_rv_shapes().items()):
        digest.update(f"{name}:{tuple(shape)}".encode())
    return digest.hexdigest()


class CompileCache:
    """A `compiler` for `sample`: nutpie-compiles each distinct graph once, then swaps its data.

    It keeps the `limit` graphs used most recently (a long-lived process such as the dashboard or a
    warm worker meets new graphs over time). Safe to share between threads: the dashboard runs
    refits of several theaters at once.
    """

    def __init__(self, limit: int = 16):
        self.compiled: dict[str, object] = {}
        self.hits = 0
        self.misses = 0
        self.limit = limit
        self._lock = threading.Lock()

    def __call__(self, pm_model, var_names=None):
        with self._lock:  # one compile at a time: two threads asking for one graph compile it once
            return self._get(pm_model, var_names)

    def _get(self, pm_model, var_names):
        import nutpie

        key = fingerprint(pm_model, var_names)
        cached = self.compiled.pop(key, None)
        if cached is None:
            self.misses += 1
            cached = nutpie.compile_pymc_model(pm_model, var_names=var_names)
            self.compiled[key] = cached
            while len(self.compiled) > self.limit:
                self.compiled.pop(next(iter(self.compiled)))  # the least recently used
            return cached
        self.compiled[key] = cached  # now the most recently used
        values = {v.name: v.get_value() for v in pm_model.data_vars}
        if not set(cached.shared_data) <= set(values):  # data the graph reads but the model lacks: recompile
            self.misses += 1
            return nutpie.compile_pymc_model(pm_model, var_names=var_names)
        self.hits += 1
        return cached.with_data(**{name: values[name] for name in cached.shared_data})


COMPILED = CompileCache()  # process-wide: keyed by graph fingerprint, so reuse is always safe
