"""Refits started from the dashboard: a real fit in a background thread, polled by the page.

The settings come from the caller (the app reads them from the environment,
`forecast.config.dashboard_refit_settings`), never from a module global.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import threading
import time
from dataclasses import dataclass, field

from forecast import priors, runs
from forecast.sampling import SamplerSettings


@dataclass
class RefitJob:
    """A real refit running in a background thread; the page polls it."""

    theater: str
    as_of: dt.date | None
    profile: priors.Profile
    expected_seconds: float
    settings: SamplerSettings
    started: float = field(default_factory=time.monotonic)
    finished: float | None = None
    run: runs.Run | None = None
    error: str | None = None
    thread: threading.Thread | None = None

    @property
    def done(self) -> bool:
        return self.finished is not None

    @property
    def elapsed(self) -> float:
        return (self.finished or time.monotonic()) - self.started

    def progress(self) -> float:
        """Fraction done, estimated from the time the last fit of this theater took (never 1 until done)."""
        if self.done:
            return 1.0
        return min(0.95, self.elapsed / max(self.expected_seconds, 1.0))

    def status(self) -> str:
        if self.error:
            return f"Refit failed: {self.error}"
        if self.run is not None:
            if self.run.published:
                return f"Refit done in {self.elapsed:.0f} s: run {self.run.id} published."
            return (f"Refit done in {self.elapsed:.0f} s but run {self.run.id} was rejected "
                    f"({self.run.manifest['reason']}); the last published forecast stays current.")
        left = max(0.0, self.expected_seconds - self.elapsed)
        return (f"Refitting {self.theater} as of {self.as_of or 'its latest evidence'} with priors "
                f"'{self.profile.name}': {self.elapsed:.0f} s elapsed"
                + (f", about {left:.0f} s left" if left > 0 else ", finishing") + ".")

    def _work(self) -> None:
        from forecast import dispatch, store

        try:
            # On the shared warm worker when FORECAST_SCHEDULER names one, else in this (long-lived) process.
            self.run = dispatch.refit_anywhere(store.engine(), self.theater, self.as_of, self.profile, self.settings)
        except Exception as err:  # shown on the page; the thread must not die silently
            self.error = f"{type(err).__name__}: {err}"
        finally:
            self.finished = time.monotonic()


class RefitJobs:
    """The refits running in this dashboard process, one per theater at most.

    One registry per server process (the app keeps it with `st.cache_resource`), so every
    browser session sees the same jobs. `settings`: the sampler settings of every refit.
    """

    def __init__(self, settings: SamplerSettings):
        self.settings = dataclasses.replace(settings, progressbar=False)
        self._jobs: dict[str, RefitJob] = {}
        self._lock = threading.Lock()

    def start(self, theater: str, as_of: dt.date | None, profile: priors.Profile,
              expected_seconds: float) -> RefitJob:
        """Start a refit of `theater` unless one is already running (then return that one)."""
        with self._lock:
            job = self._jobs.get(theater)
            if job is not None and not job.done:
                return job
            job = RefitJob(theater, as_of, profile, expected_seconds, self.settings)
            job.thread = threading.Thread(target=job._work, name=f"refit-{theater}", daemon=True)
            self._jobs[theater] = job
            job.thread.start()
            return job

    def get(self, theater: str) -> RefitJob | None:
        with self._lock:
            return self._jobs.get(theater)

    def forget(self, theater: str) -> None:
        with self._lock:
            job = self._jobs.get(theater)
            if job is not None and job.done:
                del self._jobs[theater]


def expected_refit_seconds(history: list[runs.Run]) -> float:
    for r in reversed(history):
        d = r.manifest.get("diagnostics", {})
        if "sampling_seconds" in d:
            return float(d["sampling_seconds"]) + float(d.get("compile_seconds", 0)) + 10.0
    return 90.0
