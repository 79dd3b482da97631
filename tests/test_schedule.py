"""Scheduled refits (`forecast refit --all`), run history (`forecast runs`) and retention.

Every bundled theater is closed, so these tests import *watched* theaters: the
flagship's evidence known by 2022-02-15 under a new id and with no outcome row.
Most refits here use `stored_fit`, which stands in for the sampler with the
posterior of the session's real flagship fit (relabelled to the watched theater),
so everything after sampling is real (prediction, gate, atomic save, lock,
retention) and fast; the gate test samples for real on tiny settings.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest

from conftest import FLAGSHIP, FLAGSHIP_AS_OF, case_file

slow = pytest.mark.slow  # samples a real posterior

WATCHED = "watch-ukraine"


def watched_case(path: Path, theater: str = WATCHED) -> Path:
    """The flagship's rows known by FLAGSHIP_AS_OF, as a new open theater (no outcome row)."""
    lines = []
    for line in case_file(FLAGSHIP).read_text(encoding="utf-8").splitlines():
        if not line.strip() or line.lstrip().startswith("//"):
            continue
        row = json.loads(line)
        if row["kind"] == "theater":
            row.update(id=theater, name=f"Watched copy of the flagship ({theater})")
        elif row["kind"] == "outcome" or (row.get("reported") or row["date"]) > FLAGSHIP_AS_OF:
            continue
        else:
            row["theater"] = theater
        lines.append(json.dumps(row))
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def new_evidence(cli, tmp_path, theater: str = WATCHED, description: str = "Test: another embassy draws down"):
    path = tmp_path / f"new-{theater}-{abs(hash(description))}.jsonl"
    path.write_text(json.dumps({"kind": "sign", "theater": theater, "date": FLAGSHIP_AS_OF, "category": "evacuation",
                                "description": description, "source": "test source"}) + "\n", encoding="utf-8")
    cli.ok("import", path)


@pytest.fixture
def watched(fitted_store, tmp_path):
    """The fitted store plus one open theater."""
    fitted_store.ok("import", watched_case(tmp_path / f"{WATCHED}.jsonl"))
    return fitted_store


class StoredFit:
    """model.fit stand-in: the flagship's stored posterior, relabelled to the target; counts calls."""

    def __init__(self, real_fit):
        from forecast import runs

        base = runs.require_published(FLAGSHIP)
        self.stage1, self.stage2 = base.stage(1), base.stage(2)
        self.real_fit = real_fit
        self.calls: list[str] = []
        self.fail_for: set[str] = set()
        self.real = False

    def __call__(self, panels, target, profile, settings, **options):
        import arviz as az

        from forecast import model

        self.calls.append(target)
        if target in self.fail_for:
            raise RuntimeError(f"sampler exploded on {target}")
        if self.real:
            return self.real_fit(panels, target, profile, settings, **options)
        post = self.stage2.posterior
        post = post.assign_coords(theater=[target if t == FLAGSHIP else t for t in post["theater"].values])
        stage2 = az.InferenceData(posterior=post, sample_stats=self.stage2.sample_stats)
        return model.Fit(panels, target, profile, self.stage1, stage2, None, None, None,
                         {"stage1_sampling": 0.0, "stage2_sampling": 0.0})


@pytest.fixture
def stored_fit(watched, monkeypatch) -> StoredFit:
    from forecast import model

    fake = StoredFit(model.fit)
    monkeypatch.setattr(model, "fit", fake)
    return fake


def refit_all(cli, *args):
    """Run `refit --all --json`; return (exit code, summary, stderr log lines)."""
    result = cli("refit", "--all", "--json", *args)
    summary = json.loads(result.stdout) if result.stdout.strip() else None
    return result.exit_code, summary, [line for line in result.stderr.splitlines() if line.strip()]


def by_theater(summary) -> dict:
    return {t["theater"]: t for t in summary["theaters"]}


# --- the scheduled job ------------------------------------------------------------------------


def test_bundled_theaters_are_all_closed(initialised_cli):
    code, summary, log = refit_all(initialised_cli)
    assert code == 0 and summary["theaters"] == []
    assert any("no open theaters" in line for line in log)


def test_second_run_skips(stored_fit, watched, tmp_path):
    code, first, log = refit_all(watched)
    assert code == 0, log
    assert by_theater(first)[WATCHED]["action"] == "published"
    assert first["counts"] == {"published": 1, "rejected": 0, "skipped": 0, "failed": 0}
    assert len([line for line in log if WATCHED in line]) == 1 and "published" in log[0]
    run_id = by_theater(first)[WATCHED]["run_id"]
    shown = watched.json("show", WATCHED)
    assert shown["run_id"] == run_id and shown["as_of"] == FLAGSHIP_AS_OF and shown["status"] == "published"

    code, second, log = refit_all(watched)
    assert code == 0
    entry = by_theater(second)[WATCHED]
    assert entry["action"] == "skipped" and "up to date" in entry["message"] and entry["current_run_id"] == run_id
    assert "skipped" in log[0] and "up to date" in log[0]
    assert stored_fit.calls == [WATCHED]  # the work was done once
    assert [r["run_id"] for r in watched.json("runs", WATCHED)] == [run_id]

    text = watched.ok("refit", "--all").stdout  # text mode: the log lines, then the summary
    assert f"{WATCHED}: skipped: up to date" in text and "0 published" in text and "1 skipped" in text

    new_evidence(watched, tmp_path)  # new evidence: the next run does the work again
    code, third, _ = refit_all(watched)
    assert code == 0 and by_theater(third)[WATCHED]["action"] == "published"
    assert stored_fit.calls == [WATCHED, WATCHED]
    assert watched.json("show", WATCHED)["run_id"] == by_theater(third)[WATCHED]["run_id"] != run_id


def test_changed_priors_refit(stored_fit, watched, tmp_path, monkeypatch):
    from forecast import config, priors

    refit_all(watched)
    folder = tmp_path / "priors"
    folder.mkdir()
    default = priors.load("default")
    (folder / "default.toml").write_text(default.text, encoding="utf-8")
    (folder / "wide.toml").write_text(default.text.replace('name = "default"', 'name = "wide"'), encoding="utf-8")
    monkeypatch.setenv("FORECAST_PRIORS_DIR", str(folder))
    assert config.priors_dir() == folder
    code, summary, _ = refit_all(watched, "--priors", "wide")
    assert code == 0 and by_theater(summary)[WATCHED]["action"] == "published"
    assert watched.json("show", WATCHED)["prior_profile"] == "wide"


def test_overlapping_run_is_refused(stored_fit, watched, runs_dir):
    import filelock

    held = filelock.FileLock(str(runs_dir / ".refit-all.lock"))
    held.acquire(timeout=0)
    try:
        started = time.monotonic()
        result = watched("refit", "--all")
        assert time.monotonic() - started < 60  # exits at once, never waits for the lock
        assert result.exit_code == 4
        assert "another `forecast refit --all` is running" in result.stderr
        assert stored_fit.calls == [] and not watched.json("runs", WATCHED)
    finally:
        held.release()
    code, summary, _ = refit_all(watched)  # once the other job is gone, the next one runs
    assert code == 0 and by_theater(summary)[WATCHED]["action"] == "published"


@slow
def test_failing_the_gate_keeps_the_old_forecast(stored_fit, watched, tmp_path):
    """A real fit on tiny settings fails the ESS gate: stored as rejected, the published run stays."""
    code, _, _ = refit_all(watched)
    assert code == 0
    before = watched.json("show", WATCHED)

    new_evidence(watched, tmp_path)
    stored_fit.real = True
    code, summary, log = refit_all(watched, "--draws", "20", "--tune", "20")
    entry = by_theater(summary)[WATCHED]
    assert code == 3, log
    assert entry["action"] == "rejected" and "ESS" in entry["message"]
    assert entry["current_run_id"] == before["run_id"] and before["run_id"] in entry["message"]
    assert "rejected" in log[0] and "stays current" in log[0]

    after = watched.json("show", WATCHED)  # the dashboard and reports still read the old run (now stale)
    assert {k: v for k, v in after.items() if k != "stale"} == {k: v for k, v in before.items() if k != "stale"}
    history = watched.json("runs", WATCHED)
    assert [(r["status"], r["current"]) for r in history] == [("rejected", False), ("published", True)]
    assert history[0]["reason"] and history[0]["run_id"] == entry["run_id"]
    watched.ok("report", WATCHED, "--format", "json", "-o", tmp_path / "r.json")
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["run"]["run_id"] == before["run_id"] and report["evidence_changed"] is True

    # the same fit again would be rejected again (seeded): skipped, but still flagged
    code, again, log = refit_all(watched, "--draws", "20", "--tune", "20")
    entry = by_theater(again)[WATCHED]
    assert code == 3 and entry["action"] == "skipped" and entry["still_rejected"]
    assert "refit by hand" in entry["message"]
    assert stored_fit.calls == [WATCHED, WATCHED]


def test_crash_mid_write_leaves_the_previous_run_intact(stored_fit, watched, tmp_path, monkeypatch):
    from forecast import runs

    code, _, _ = refit_all(watched)
    assert code == 0
    before = watched.json("show", WATCHED)
    new_evidence(watched, tmp_path)

    written = []

    def crash(folder: Path) -> None:  # every file is written; the rename never happens
        written.extend(sorted(p.name for p in folder.iterdir()))
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(runs, "_fsync_dir", crash)
    code, summary, log = refit_all(watched)
    entry = by_theater(summary)[WATCHED]
    assert code == 1
    assert entry["action"] == "failed" and "No space left on device" in entry["message"]
    assert "OSError" in entry["traceback"] and f"{WATCHED}: failed" in log[0]
    assert "manifest.json" in written and "draws.nc" in written  # it did crash mid-write

    folder = runs.theater_dir(WATCHED)
    assert [p.name for p in folder.iterdir()] == [before["run_id"]]  # no half-written run, not even hidden
    after = watched.json("show", WATCHED)
    assert after["stale"]["stale"] and after["stale"]["added"] == 1  # the new row is not in the old run
    assert {k: v for k, v in after.items() if k != "stale"} == {k: v for k, v in before.items() if k != "stale"}
    run = runs.require_published(WATCHED)
    assert run.draws().sizes["draw"] > 0 and run.stage(2).posterior.sizes["draw"] > 0
    assert run.forecast()["prob"] == before["prob"]
    assert [r["run_id"] for r in watched.json("runs", WATCHED)] == [before["run_id"]]


def test_one_theater_crashing_does_not_stop_the_others(stored_fit, watched, tmp_path):
    watched.ok("import", watched_case(tmp_path / "watch-a.jsonl", "watch-a"))
    stored_fit.fail_for = {"watch-a"}
    code, summary, log = refit_all(watched)
    assert code == 1
    entries = by_theater(summary)
    assert entries["watch-a"]["action"] == "failed" and "sampler exploded" in entries["watch-a"]["message"]
    assert entries[WATCHED]["action"] == "published"
    assert stored_fit.calls == ["watch-a", WATCHED]
    assert [line.split()[1] for line in log] == ["watch-a:", f"{WATCHED}:"]  # one line per theater
    assert summary["counts"]["failed"] == 1 and summary["counts"]["published"] == 1
    assert watched("show", "watch-a").exit_code == 1


def test_all_argument_errors(initialised_cli):
    for args in (["refit", FLAGSHIP, "--all"], ["refit", "--all", "--as-of", "2022-02-01"]):
        result = initialised_cli(*args)
        assert result.exit_code == 2 and "--all" in result.stderr
    result = initialised_cli("refit", "--all", env={"FORECAST_KEEP_RUNS": "none"})
    assert result.exit_code == 2 and "FORECAST_KEEP_RUNS" in result.stderr


# --- retention and history ----------------------------------------------------------------


def _copy_run(source: Path, run_id: str, created: str, status: str) -> None:
    import shutil

    target = source.parent / run_id
    shutil.copytree(source, target)
    manifest = json.loads((target / "manifest.json").read_text())
    manifest.update(run_id=run_id, created_at=created, status=status,
                    reason=None if status == "published" else "min bulk ESS 20 < 400")
    (target / "manifest.json").write_text(json.dumps(manifest))


def test_retention_keeps_the_newest_and_the_published(fitted_store, runs_dir):
    from forecast import runs

    original = runs.require_published(FLAGSHIP)
    for i in range(1, 5):
        _copy_run(original.path, f"29990101T00000{i}-rej{i:03d}", f"2999-01-01T00:00:0{i}+00:00", "rejected")
    folder = runs.theater_dir(FLAGSHIP)
    old_tmp, fresh_tmp, leftover = folder / ".tmp-crashed", folder / ".tmp-writing", folder / ".del-half"
    for hidden in (old_tmp, fresh_tmp, leftover):
        hidden.mkdir()
        (hidden / "draws.nc").write_bytes(b"partial")
    two_hours_ago = time.time() - 7200
    os.utime(old_tmp / "draws.nc", (two_hours_ago, two_hours_ago))
    os.utime(old_tmp, (two_hours_ago, two_hours_ago))

    result = fitted_store("refit", "--all", "--json", env={"FORECAST_KEEP_RUNS": "2"})
    assert result.exit_code == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["keep_runs"] == 2
    assert sorted(summary["pruned"]) == [f"{FLAGSHIP}/29990101T000001-rej001", f"{FLAGSHIP}/29990101T000002-rej002"]
    assert sorted(summary["removed_temporary"]) == [f"{FLAGSHIP}/.del-half", f"{FLAGSHIP}/.tmp-crashed"]
    assert "retention" in result.stderr

    history = fitted_store.json("runs", FLAGSHIP)
    assert [r["run_id"] for r in history] == ["29990101T000004-rej004", "29990101T000003-rej003", original.id]
    assert [r["current"] for r in history] == [False, False, True]  # the latest published is never pruned
    assert fresh_tmp.is_dir()  # a writer may still be busy with it
    assert fitted_store.json("show", FLAGSHIP)["run_id"] == original.id


def test_runs_history(fitted_store, initialised_cli):
    shown = fitted_store.json("show", FLAGSHIP)
    history = fitted_store.json("runs", FLAGSHIP)
    assert len(history) == 1
    row = history[0]
    assert row["run_id"] == shown["run_id"] and row["current"] is True and row["status"] == "published"
    assert row["as_of"] == FLAGSHIP_AS_OF and row["prior_profile"] == "default" and row["reason"] is None
    assert row["p30"] == shown["prob"]["30"] and row["created_at"] == shown["created_at"]
    assert row["data_hash"] == shown["data_hash"]
    text = fitted_store.ok("runs", FLAGSHIP).stdout
    assert f"*  {shown['run_id']}" in text and "published" in text and f"{shown['prob']['30']['mean']:.0%}" in text

    assert "no runs yet" in fitted_store.ok("runs", "georgia-2008").stdout
    assert fitted_store.json("runs", "georgia-2008") == []
    result = fitted_store("runs", "no-such-theater")
    assert result.exit_code == 2 and "unknown theater" in result.stderr
