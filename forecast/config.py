"""Where things live. One place for paths and settings, overridable by env.

FORECAST_HOME     project root holding data/ and models/ (default: this checkout)
FORECAST_DB_URL   SQLAlchemy URL of the evidence store (default: SQLite file)
FORECAST_RUNS_DIR fitted runs (default: <home>/models/runs)
FORECAST_DASHBOARD_DRAWS, _TUNE, _CHAINS
                  sampler settings of refits started from the dashboard (default: the CLI's)

Bad settings raise SettingsError (the CLI prints one line and exits 1).
"""

from __future__ import annotations

import os
from pathlib import Path


def home() -> Path:
    return Path(os.environ.get("FORECAST_HOME", Path(__file__).resolve().parent.parent))


def data_dir() -> Path:
    return Path(os.environ.get("FORECAST_DATA_DIR", home() / "data"))


def priors_dir() -> Path:
    return Path(os.environ.get("FORECAST_PRIORS_DIR", home() / "models" / "priors"))


def runs_dir() -> Path:
    return Path(os.environ.get("FORECAST_RUNS_DIR", home() / "models" / "runs"))


def db_url() -> str:
    return os.environ.get("FORECAST_DB_URL", f"sqlite:///{home() / 'forecast.db'}")


def dashboard_refit_settings():
    """Sampler settings for refits started from the dashboard (FORECAST_DASHBOARD_DRAWS / _TUNE / _CHAINS)."""
    from forecast.sampling import SamplerSettings

    changes = {}
    for field in ("draws", "tune", "chains"):
        raw = os.environ.get(f"FORECAST_DASHBOARD_{field.upper()}")
        if raw:
            try:
                changes[field] = int(raw)
            except ValueError:
                changes[field] = 0
            if changes[field] < 1:
                raise SettingsError(f"FORECAST_DASHBOARD_{field.upper()}={raw!r}: expected a whole number, at least 1")
    return SamplerSettings(progressbar=False, **changes)


class SettingsError(ValueError):
    """A setting in the environment that cannot be used; the message names it."""


_warned: set[str] = set()


def reset_warnings() -> None:
    _warned.clear()


def warn(message: str) -> None:
    """One `warning: ...` line on stderr, once per message per process (damaged runs, skipped files)."""
    import sys

    if message in _warned:
        return
    _warned.add(message)
    text = f"warning: {message}"
    print(text.encode("utf-8", "backslashreplace").decode("utf-8"), file=sys.stderr)
