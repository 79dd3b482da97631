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

Reading is tolerant (issue 21): a run folder whose manifest is missing, not UTF-8, not
JSON, not an object or lacks a key, or whose forecast.json or profile.toml is missing or
unreadable, is *damaged*: `history` reports it by name (one `warning:` line on stderr) and
skips it, so `show`, `runs`, `report`, the dashboard and `refit --all` carry on with the
others (and retention never deletes it).
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
from typing import TYPE_CHECKING

import forecast
from forecast import config, safe_write
from forecast.features import INDICATORS

if TYPE_CHECKING:  # ArviZ and xarray load only when a run's draws are read or written
    import arviz as az
    import xarray as xr

GATE = {"r_hat_max": 1.01, "ess_bulk_min": 400, "divergences": 0}
MANIFEST = "manifest.json"


class RunError(RuntimeError):
    """No usable run (none yet, or unreadable)."""


class DamagedRun(RunError):
    """A run folder that cannot be read; the message names the folder and what is wrong."""


# Manifest keys every reader relies on, and their JSON types.
REQUIRED = {"run_id": str, "theater": str, "as_of": str, "created_at": str, "status": str,
            "prior_profile": str, "prior_hash": str, "data_hash": str, "code_version": str, "diagnostics": dict}
DIAGNOSTICS = ("r_hat_max", "ess_bulk_min", "divergences")


def _read_json(path: Path):
    try:
        text = path.read_bytes().decode("utf-8")
    except FileNotFoundError:
        raise DamagedRun(f"{path.name} is missing") from None
    except IsADirectoryError:
        raise DamagedRun(f"{path.name} is a folder") from None
    except UnicodeDecodeError as err:
        raise DamagedRun(f"{path.name} is not valid UTF-8 (byte {err.start})") from None
    except OSError as err:
        raise DamagedRun(f"{path.name} cannot be read ({err.strerror or err})") from None
    try:
        return json.loads(text)
    except (ValueError, RecursionError) as err:
        raise DamagedRun(f"{path.name} is not valid JSON (truncated?): {str(err)[:120]}") from None


def check_manifest(manifest, folder: Path) -> None:
    """Raise DamagedRun unless `manifest` has every key readers use, of the right type."""
    if not isinstance(manifest, dict):
        raise DamagedRun(f"{MANIFEST} holds a JSON {type(manifest).__name__}, not an object")
    for key, kind in REQUIRED.items():
        if key not in manifest:
            raise DamagedRun(f"{MANIFEST} lacks {key!r}")
        if not isinstance(manifest[key], kind):
            raise DamagedRun(f"{MANIFEST}: {key!r} is not a {kind.__name__}")
    if manifest["status"] not in ("published", "rejected"):
        raise DamagedRun(f"{MANIFEST}: status {manifest['status']!r} is not published or rejected")
    for key in DIAGNOSTICS:
        value = manifest["diagnostics"].get(key)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise DamagedRun(f"{MANIFEST}: diagnostics lack a number {key!r}")
    try:
        dt.date.fromisoformat(manifest["as_of"])
    except ValueError:
        raise DamagedRun(f"{MANIFEST}: as_of {manifest['as_of']!r} is not a date") from None
    if manifest["run_id"] != folder.name:
        raise DamagedRun(f"{MANIFEST}: run_id {manifest['run_id']!r} is not the folder's name")


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
        """The run stored in `folder`; raises DamagedRun (naming what is wrong) if it cannot be read."""
        manifest = _read_json(folder / MANIFEST)
        check_manifest(manifest, folder)
        doc = _read_json(folder / "forecast.json")
        if not isinstance(doc, dict) or not isinstance(doc.get("prob"), dict):
            raise DamagedRun("forecast.json is not a forecast document")
        profile = folder / "profile.toml"
        if not profile.is_file():
            raise DamagedRun("profile.toml is missing")
        try:
            text = profile.read_bytes().decode("utf-8")
        except (OSError, UnicodeDecodeError):
            raise DamagedRun("profile.toml is unreadable or not UTF-8") from None
        from forecast import priors

        try:
            priors.parse(text, "profile.toml")
        except priors.ProfileError as err:
            raise DamagedRun(str(err)) from None
        return cls(folder, manifest)

    @property
    def id(self) -> str:
        return self.manifest["run_id"]

    @property
    def published(self) -> bool:
        return self.manifest["status"] == "published"

    def forecast(self) -> dict:
        return json.loads((self.path / "forecast.json").read_text(encoding="utf-8"))

    def draws(self) -> xr.Dataset:
        import xarray as xr

        with xr.open_dataset(self.path / "draws.nc") as ds:
            return current_indicators(ds.load())

    def stage(self, n: int) -> az.InferenceData:
        import arviz as az

        idata = az.from_netcdf(self.path / f"stage{n}.nc")
        if "posterior" in idata:
            idata.posterior = current_indicators(idata.posterior)
        return idata

    def profile_text(self) -> str:
        return (self.path / "profile.toml").read_text(encoding="utf-8")

    def document(self) -> dict:
        """The forecast JSON of DESIGN §6: the forecast plus who made it and how well it converged."""
        m = self.manifest
        return {"theater": m["theater"], "as_of": m["as_of"], "run_id": m["run_id"], "status": m["status"],
                "reason": m.get("reason"), "prior_profile": m["prior_profile"], "prior_hash": m["prior_hash"],
                "data_hash": m["data_hash"], "code_version": m["code_version"], "created_at": m["created_at"],
                **self.forecast(), "diagnostics": m["diagnostics"]}


def current_indicators(ds: xr.Dataset) -> xr.Dataset:
    """A run stored before an indicator existed, in today's INDICATORS: its beta is 0 there.

    An indicator added since (crisis_age) is 0 under the reading such a run was fitted with,
    so the value is never used; the prior's density at it is the same for every draw.
    """
    if "indicator" not in ds.coords or list(ds.indicator.values) == INDICATORS:
        return ds
    return ds.reindex(indicator=INDICATORS, fill_value=0.0)


def theater_dir(theater: str) -> Path:
    return config.runs_dir() / theater


def check_writable(theater: str) -> None:
    """Raise RunError unless a run of `theater` can be written: checked before a fit, not after it."""
    parent = theater_dir(theater)
    try:
        parent.mkdir(parents=True, exist_ok=True)
        probe = parent / f".tmp-probe-{uuid.uuid4().hex[:8]}"
        probe.mkdir()
        probe.rmdir()
    except OSError as err:
        raise RunError(f"runs folder {parent} is not writable ({err.strerror or err}); no fit was started: "
                       "fix its permissions or point FORECAST_RUNS_DIR at a writable folder") from None


def save(theater: str, manifest: dict, forecast_doc: dict, draws: xr.Dataset, stage1: az.InferenceData,
         stage2: az.InferenceData, profile_text: str) -> Run:
    """Write a run atomically: a hidden temporary folder, then one rename."""
    parent = theater_dir(theater)
    parent.mkdir(parents=True, exist_ok=True)
    final = parent / manifest["run_id"]
    safe_write.check_absent(final)  # a rename would replace an empty folder (or fail on anything else)
    tmp = parent / f".tmp-{manifest['run_id']}"
    tmp.mkdir()
    try:
        stage1.to_netcdf(str(tmp / "stage1.nc"))
        stage2.to_netcdf(str(tmp / "stage2.nc"))
        draws.to_netcdf(tmp / "draws.nc")
        safe_write.write_text(tmp / "forecast.json", json.dumps(forecast_doc, indent=1))
        safe_write.write_text(tmp / "profile.toml", profile_text)
        safe_write.write_text(tmp / MANIFEST, json.dumps(manifest, indent=1))  # last: marks complete
        _fsync_dir(tmp)
        safe_write.check_absent(final)
        os.rename(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return Run(final, manifest)


def _fsync_dir(path: Path) -> None:
    for f in path.iterdir():
        with open(f, "rb") as handle:
            os.fsync(handle.fileno())


def scan(theater: str) -> tuple[list[Run], list[tuple[Path, str]]]:
    """(every readable run of a theater, oldest first; every damaged run folder and why)."""
    parent = theater_dir(theater)
    found, damaged = [], []
    try:
        folders = sorted(parent.iterdir()) if parent.is_dir() else []
    except OSError as err:
        return [], [(parent, f"cannot be listed ({err.strerror or err})")]
    for folder in folders:
        if folder.name.startswith(".") or not folder.is_dir():
            continue
        try:
            run = Run.at(folder)
            if run.manifest["theater"] != theater:
                raise DamagedRun(f"{MANIFEST}: theater {run.manifest['theater']!r} is not its folder's")
            found.append(run)
        except DamagedRun as err:
            damaged.append((folder, str(err)))
    return sorted(found, key=lambda r: (r.manifest["created_at"], r.id)), damaged


def history(theater: str) -> list[Run]:
    """Every complete run of a theater, oldest first; a damaged folder is reported (once) and skipped."""
    found, damaged = scan(theater)
    for folder, reason in damaged:
        config.warn(f"run folder {folder} is damaged ({reason}); skipped")
    return found


def latest(theater: str, published_only: bool = True) -> Run | None:
    runs = [r for r in history(theater) if r.published or not published_only]
    return runs[-1] if runs else None


def require_published(theater: str) -> Run:
    run = latest(theater)
    if run is None:
        raise RunError(f"no published forecast for {theater!r} yet: run `forecast refit {theater}`")
    return run
