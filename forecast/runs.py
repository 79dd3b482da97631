"""Fitted runs on disk: models/runs/<theater>/<run_id>/, written atomically, gated.

A run folder holds
  stage1.nc, stage2.nc  posterior of each model stage (ArviZ NetCDF)
  draws.nc              per-draw forecast quantities (forecast.predict.draws_for)
  forecast.json         the forecast document, summarised from draws.nc
  profile.toml          the prior profile exactly as fitted (for reweighting and reports)
  manifest.json         run id, theater, as-of, data hash, prior hash, code version,
                        sampler settings, diagnostics, status (published | rejected) and reason

Everything is first written to a hidden temporary folder beside it and then
renamed into place, so a crash never leaves a half-written run; readers ignore
hidden folders. A run is published only if it passes the convergence gate;
a rejected run is kept for inspection but never shown as the forecast.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import shutil
import subprocess
import uuid
from dataclasses import dataclass
from pathlib import Path

import arviz as az
import xarray as xr

import forecast
from forecast import config

GATE = {"r_hat_max": 1.01, "ess_bulk_min": 400, "divergences": 0}
MANIFEST = "manifest.json"


class RunError(RuntimeError):
    """No usable run (none yet, or unreadable)."""


def gate(diagnostics: dict) -> list[str]:
    """Reasons a fit fails the convergence gate (empty: it passes)."""
    reasons = []
    if not diagnostics["r_hat_max"] <= GATE["r_hat_max"]:
        reasons.append(f"max R-hat {diagnostics['r_hat_max']:.3f} > {GATE['r_hat_max']}")
    if not diagnostics["ess_bulk_min"] >= GATE["ess_bulk_min"]:
        reasons.append(f"min bulk ESS {diagnostics['ess_bulk_min']:.0f} < {GATE['ess_bulk_min']}")
    if diagnostics["divergences"] > GATE["divergences"]:
        reasons.append(f"{diagnostics['divergences']} divergent transitions")
    return reasons


def code_version() -> str:
    """Package version plus the git commit of the checkout, when there is one."""
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=Path(__file__).parent,
                                capture_output=True, text=True, timeout=5).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        commit = ""
    return f"{forecast.__version__}+{commit}" if commit else forecast.__version__


def new_run_id(now: dt.datetime) -> str:
    """Sortable by time to the millisecond (runs made within one second keep their order), then unique."""
    return now.strftime("%Y%m%dT%H%M%S") + f"-{now.microsecond // 1000:03d}" + uuid.uuid4().hex[:4]


@dataclass
class Run:
    """A run folder on disk."""

    path: Path
    manifest: dict

    @classmethod
    def at(cls, folder: Path) -> "Run":
        """The run stored in `folder` (its manifest read from disk)."""
        return cls(folder, json.loads((folder / MANIFEST).read_text(encoding="utf-8")))

    @property
    def id(self) -> str:
        return self.manifest["run_id"]

    @property
    def published(self) -> bool:
        return self.manifest["status"] == "published"

    def forecast(self) -> dict:
        return json.loads((self.path / "forecast.json").read_text(encoding="utf-8"))

    def draws(self) -> xr.Dataset:
        with xr.open_dataset(self.path / "draws.nc") as ds:
            return ds.load()

    def stage(self, n: int) -> az.InferenceData:
        return az.from_netcdf(self.path / f"stage{n}.nc")

    def profile_text(self) -> str:
        return (self.path / "profile.toml").read_text(encoding="utf-8")

    def document(self) -> dict:
        """The forecast JSON of DESIGN §6: the forecast plus who made it and how well it converged."""
        m = self.manifest
        return {"theater": m["theater"], "as_of": m["as_of"], "run_id": m["run_id"], "status": m["status"],
                "reason": m.get("reason"), "prior_profile": m["prior_profile"], "prior_hash": m["prior_hash"],
                "data_hash": m["data_hash"], "code_version": m["code_version"], "created_at": m["created_at"],
                **self.forecast(), "diagnostics": m["diagnostics"]}


def theater_dir(theater: str) -> Path:
    return config.runs_dir() / theater


def save(theater: str, manifest: dict, forecast_doc: dict, draws: xr.Dataset, stage1: az.InferenceData,
         stage2: az.InferenceData, profile_text: str) -> Run:
    """Write a run atomically: a hidden temporary folder, then one rename."""
    parent = theater_dir(theater)
    parent.mkdir(parents=True, exist_ok=True)
    tmp = parent / f".tmp-{manifest['run_id']}"
    tmp.mkdir()
    try:
        stage1.to_netcdf(str(tmp / "stage1.nc"))
        stage2.to_netcdf(str(tmp / "stage2.nc"))
        draws.to_netcdf(tmp / "draws.nc")
        (tmp / "forecast.json").write_text(json.dumps(forecast_doc, indent=1), encoding="utf-8")
        (tmp / "profile.toml").write_text(profile_text, encoding="utf-8")
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=1), encoding="utf-8")  # last: marks complete
        _fsync_dir(tmp)
        final = parent / manifest["run_id"]
        os.rename(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return Run(final, manifest)


def _fsync_dir(path: Path) -> None:
    for f in path.iterdir():
        with open(f, "rb") as handle:
            os.fsync(handle.fileno())


def history(theater: str) -> list[Run]:
    """Every complete run of a theater, oldest first (unreadable folders are skipped)."""
    parent = theater_dir(theater)
    if not parent.is_dir():
        return []
    found = []
    for folder in parent.iterdir():
        if folder.name.startswith(".") or not (folder / MANIFEST).is_file():
            continue
        try:
            found.append(Run.at(folder))
        except (OSError, json.JSONDecodeError):
            continue
    return sorted(found, key=lambda r: (r.manifest["created_at"], r.id))


def latest(theater: str, published_only: bool = True) -> Run | None:
    runs = [r for r in history(theater) if r.published or not published_only]
    return runs[-1] if runs else None


def require_published(theater: str) -> Run:
    run = latest(theater)
    if run is None:
        raise RunError(f"no published forecast for {theater!r} yet: run `forecast refit {theater}`")
    return run
