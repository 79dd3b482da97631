"""Alerts: threshold rules per theater, the crossings a newly published run raises, the alert log, delivery.

Rules live in ``$FORECAST_RUNS_DIR/alerts.toml`` (or the file FORECAST_ALERTS names), parsed and
validated by `forecast.alert_rules` (``[theaters.ID]`` / ``[theaters."*"]`` with ``p30_above``,
``p30_below``, ``p30_move``; ``[webhook]`` with ``url``, ``timeout_seconds``, ``retries``,
``backoff_seconds``); its names are re-exported here.

Semantics (all on the posterior mean P(30 days) of the theater's *published* runs):

- a theater is *above* X when P30 >= X and *below* when P30 < X; ``p30_above = X`` fires when the
  previous published run was below and the new one is above, ``p30_below = X`` the other way round;
  staying on one side never fires again, so each crossing alerts once;
- ``p30_move = N`` fires when |new - previous| > N (N an absolute probability: 0.10 = 10 points);
- a theater's own table replaces the ``"*"`` table (an empty table turns its alerts off);
- a theater's first published run raises nothing (a crossing needs a previous run).

The log, ``$FORECAST_RUNS_DIR/alerts.jsonl``, holds one JSON object per alert. An alert's id is a
hash of theater, rule, threshold and the two run ids, so the same crossing is never recorded (or
posted) twice. A new alert is appended in one ``write`` (flushed and fsynced) with
``delivered: false``; after the POST its line is updated by rewriting the file atomically
(`forecast.safe_write`). Only ``forecast refit --all`` writes the log, under its lock. An alert
still undelivered (webhook down, or a crash between recording and posting) is posted again by each
later ``refit --all`` for PENDING_DAYS days; it is never recorded twice.

Delivery POSTs the alert as JSON (its ``text`` field is the one-line message) with an
``Idempotency-Key`` header (the alert id), a timeout and retries on connection errors, timeouts,
HTTP 408, 429 and 5xx. Any 2xx is delivered; other answers (a redirect, 4xx) stop the round. A
webhook that fails never fails the job. The webhook URL (which often carries a token) is never
written to the log, the summary or a message.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import forecast
from forecast import config, runs, safe_write, wording
from forecast.alert_rules import (
    CONFIG_ENV,
    CONFIG_NAME,
    RULES,
    AlertConfigError,
    Config,
    Rules,
    Webhook,
    config_path,
    load,
    parse,
)

__all__ = ["CONFIG_ENV", "CONFIG_NAME", "RULES", "AlertConfigError", "Config", "Rules", "Webhook", "config_path",
           "load", "parse", "Point", "point", "alert_id", "message", "check", "log_path", "read_log", "append",
           "update", "listing", "status", "listing_text", "payload", "post", "Alerter", "LOG_NAME",
           "PENDING_DAYS"]

LOG_NAME = "alerts.jsonl"
PENDING_DAYS = 7  # an undelivered alert is retried by later jobs for this long after it was raised
RETRIED_STATUS = {408, 429}  # and every 5xx


# --- the check -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Point:
    """A published run as the rules see it."""

    run_id: str
    as_of: str
    p30: float


def point(run: runs.Run | Point) -> Point:
    if isinstance(run, Point):
        return run
    return Point(run.id, run.manifest["as_of"], float(run.forecast()["prob"]["30"]["mean"]))


def alert_id(theater: str, rule: str, threshold: float, previous_run_id: str, new_run_id: str) -> str:
    key = "\n".join([theater, rule, repr(float(threshold)), previous_run_id, new_run_id])
    return hashlib.sha256(key.encode("utf-8")).hexdigest()[:16]


def message(rule: str, threshold: float, previous: float, new: float) -> str:
    change = f"({wording.pct(previous)} -> {wording.pct(new)})"
    if rule == "p30_above":
        return f"P(30 days) crossed {wording.pct(threshold)} {change}"
    if rule == "p30_below":
        return f"P(30 days) fell below {wording.pct(threshold)} {change}"
    return f"P(30 days) moved {(new - previous) * 100:+.1f} points {change}, more than {threshold * 100:g}"


def check(theater: str, previous_run: runs.Run | Point | None, new_run: runs.Run | Point, rules: Rules,
          now: dt.datetime | None = None) -> list[dict]:
    """The alerts `new_run` raises against the theater's previous published run (none without one)."""
    if previous_run is None or rules.empty:
        return []
    before, after = point(previous_run), point(new_run)
    fired = [("p30_above", x) for x in rules.above if before.p30 < x <= after.p30]
    fired += [("p30_below", x) for x in rules.below if after.p30 < x <= before.p30]
    if rules.move is not None and round(abs(after.p30 - before.p30), 9) > rules.move:
        fired.append(("p30_move", rules.move))
    created = (now or dt.datetime.now(dt.timezone.utc)).strftime("%Y-%m-%dT%H:%M:%SZ")
    return [{"id": alert_id(theater, rule, x, before.run_id, after.run_id), "theater": theater, "rule": rule,
             "threshold": x, "previous_p30": before.p30, "new_p30": after.p30, "previous_run_id": before.run_id,
             "new_run_id": after.run_id, "as_of": after.as_of, "created_at": created,
             "message": message(rule, x, before.p30, after.p30), "delivered": False, "attempts": 0,
             "last_error": None, "delivered_at": None} for rule, x in fired]


# --- the log -------------------------------------------------------------------------------------


def log_path() -> Path:
    return config.runs_dir() / LOG_NAME


def _lines(path: Path) -> list[str]:
    try:
        return path.read_bytes().decode("utf-8", "replace").splitlines()
    except FileNotFoundError:
        return []


def _record(line: str):
    try:
        record = json.loads(line)
    except ValueError:
        return None
    return record if isinstance(record, dict) and isinstance(record.get("id"), str) else None


def read_log(path: Path | None = None) -> list[dict]:
    """Every alert in the log, oldest first; a damaged line (a torn write) is reported and skipped."""
    path = path or log_path()
    records = []
    for number, line in enumerate(_lines(path), start=1):
        if not line.strip():
            continue
        record = _record(line)
        if record is None:
            config.warn(f"{path}: line {number} is not an alert record (damaged?); skipped")
        else:
            records.append(record)
    return records


def append(record: dict, path: Path | None = None) -> None:
    """Append one alert line in a single write, flushed and fsynced (after a torn line: on a new line)."""
    path = path or log_path()
    safe_write.check_target(path)
    line = json.dumps(record, sort_keys=True) + "\n"
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_APPEND | getattr(os, "O_NOFOLLOW", 0), 0o666)
    try:
        size = os.fstat(fd).st_size
        if size and os.pread(fd, 1, size - 1) != b"\n":
            line = "\n" + line
        os.write(fd, line.encode("utf-8"))
        os.fsync(fd)
    finally:
        os.close(fd)


def update(records: list[dict], path: Path | None = None) -> None:
    """Replace these alerts' lines (same id) by rewriting the log atomically; other lines stay verbatim."""
    path = path or log_path()
    changed = {r["id"]: r for r in records}
    out = []
    for line in _lines(path):
        record = _record(line) if line.strip() else None
        out.append(json.dumps(changed[record["id"]], sort_keys=True) if record and record["id"] in changed
                   else line)
    safe_write.write_text(path, "".join(f"{line}\n" for line in out if line.strip()))


def listing(theater: str | None = None) -> list[dict]:
    """Recorded alerts, newest first (`forecast alerts`, the dashboard)."""
    found = [r for r in read_log() if theater is None or r.get("theater") == theater]
    order = {id(r): i for i, r in enumerate(found)}
    return sorted(found, key=lambda r: (str(r.get("created_at", "")), order[id(r)]), reverse=True)


def status(record: dict) -> str:
    if record.get("delivered"):
        return "posted"
    return f"not posted: {record.get('last_error') or 'not tried yet'}"


def listing_text(records: list[dict], theater: str | None, cfg_path: Path) -> str:
    if not records:
        where = f" for {theater}" if theater else ""
        rules = f"rules: {cfg_path}" if cfg_path.is_file() else f"no rules file: {cfg_path} does not exist"
        return f"no alerts recorded{where} ({rules})"
    lines = []
    for r in records:
        tries = r.get("attempts", 0)
        lines.append(f"{r.get('created_at', '?')}  {r.get('theater', '?')}: {r.get('message', r.get('rule'))}, "
                     f"{status(r)} ({tries} attempt{'s' if tries != 1 else ''})  "
                     f"[runs {r.get('previous_run_id')} -> {r.get('new_run_id')}, as of {r.get('as_of')}]")
    return "\n".join(lines)


# --- delivery ------------------------------------------------------------------------------------


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, req, fp, code, msg, headers, newurl):  # a POST is never re-sent elsewhere
        return None


def payload(record: dict) -> dict:
    body = {k: v for k, v in record.items() if k not in ("delivered", "attempts", "last_error", "delivered_at")}
    return {**body, "text": f"{record['theater']}: {record['message']}"}


def post(webhook: Webhook, record: dict, sleep: Callable[[float], None] = time.sleep) -> tuple[bool, int, str | None]:
    """One round of delivery: (delivered, attempts made, last error)."""
    body = json.dumps(payload(record)).encode("utf-8")
    opener = urllib.request.build_opener(_NoRedirect)  # proxies as the environment says now
    error = None
    for attempt in range(1, webhook.attempts + 1):
        request = urllib.request.Request(webhook.url, data=body, method="POST", headers={
            "Content-Type": "application/json", "Idempotency-Key": record["id"],
            "User-Agent": f"escalation-forecast/{forecast.__version__} (alerts)"})
        retry = True
        try:
            with opener.open(request, timeout=webhook.timeout_seconds) as response:
                if 200 <= response.status < 300:
                    return True, attempt, None
                error, retry = f"HTTP {response.status}", False
        except urllib.error.HTTPError as err:
            error = f"HTTP {err.code} {err.reason}".strip()
            retry = err.code >= 500 or err.code in RETRIED_STATUS
            if 300 <= err.code < 400:
                error += " (a redirect: give the final URL)"
        except urllib.error.URLError as err:
            reason = err.reason
            error = f"no answer within {webhook.timeout_seconds:g} s" if isinstance(reason, TimeoutError) \
                else f"cannot connect: {getattr(reason, 'strerror', None) or reason}"
        except TimeoutError:
            error = f"no answer within {webhook.timeout_seconds:g} s"
        except (OSError, ValueError) as err:  # a dropped connection, a malformed answer
            error = f"{type(err).__name__}: {str(err) or 'connection dropped'}"
        if not retry:
            return False, attempt, error
        if attempt < webhook.attempts:
            sleep(webhook.backoff_seconds * 2 ** (attempt - 1))
    return False, webhook.attempts, error


# --- the job's side ------------------------------------------------------------------------------


def _now() -> str:
    return dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


class Alerter:
    """What `refit --all` does with alerts (it holds the lock while this runs)."""

    def __init__(self, cfg: Config, log: Callable[[str], None] = lambda line: None,
                 sleep: Callable[[float], None] = time.sleep):
        self.cfg, self.log, self.sleep = cfg, log, sleep
        self.raised: list[dict] = []  # alerts this job recorded
        self.redelivered: list[dict] = []  # alerts of earlier jobs it posted again
        self.errors: list[str] = []  # alerts that could not be recorded

    def _deliver(self, record: dict) -> dict:
        if self.cfg.webhook is None:
            return {**record, "last_error": f"no [webhook] in {self.cfg.path}"}
        delivered, attempts, error = post(self.cfg.webhook, record, self.sleep)
        return {**record, "delivered": delivered, "attempts": record.get("attempts", 0) + attempts,
                "last_error": None if delivered else f"{error} after {attempts} attempt{'s' if attempts != 1 else ''}",
                "delivered_at": _now() if delivered else None}

    def start(self, known_theaters: set[str]) -> None:
        """At the job's start: name rules for theaters the store does not know (a typo alerts nobody), then
        post again the alerts earlier jobs recorded but did not deliver (webhook down, or a crash)."""
        for theater in sorted(set(self.cfg.theaters) - set(known_theaters)):
            self.log(f"{_now()} alerts: {self.cfg.path} has rules for theater {theater!r}, which is not in the "
                     f"store (see `forecast theaters`)")
        self.redeliver()

    def redeliver(self) -> None:
        """Post again the alerts earlier jobs recorded but did not deliver, for PENDING_DAYS days."""
        if self.cfg.webhook is None:
            return
        cutoff = (dt.datetime.now(dt.timezone.utc) - dt.timedelta(days=PENDING_DAYS)).strftime("%Y-%m-%dT%H:%M:%SZ")
        try:
            pending = [r for r in read_log() if not r.get("delivered") and str(r.get("created_at", "")) >= cutoff]
        except Exception as err:  # noqa: BLE001 - alerts never stop the job
            return self._failed("(earlier alerts)", err)
        for record in pending:
            done = self._deliver(record)
            try:
                update([done])
            except Exception as err:  # noqa: BLE001
                self._failed(str(record.get("theater")), err)
            self.redelivered.append(done)
            self.log(f"{_now()} {done['theater']}: alert (raised {done['created_at']}): {done['message']}, "
                     f"{'posted on retry' if done['delivered'] else status(done)}")

    def published(self, theater: str, previous_run_id: str | None, new_run_id: str) -> None:
        """Record and post the alerts of a newly published run; never raises."""
        try:
            rules = self.cfg.rules_for(theater)
            if previous_run_id is None or rules.empty:
                return
            previous = runs.Run.at(runs.theater_dir(theater) / previous_run_id)
            new = runs.Run.at(runs.theater_dir(theater) / new_run_id)
            known = {r["id"] for r in read_log()}
            fresh = [a for a in check(theater, previous, new, rules) if a["id"] not in known]
        except Exception as err:  # noqa: BLE001 - alerts never stop the job; reported below
            return self._failed(theater, err)
        for alert in fresh:
            try:
                append(alert)
            except Exception as err:  # noqa: BLE001
                self._failed(theater, err)
                continue
            done = self._deliver(alert)
            try:
                update([done])
            except Exception as err:  # noqa: BLE001 - delivered, but the log still says not delivered
                self._failed(theater, err)
            self.raised.append(done)
            self.log(f"{_now()} {theater}: alert: {done['message']}, {status(done)}")

    def _failed(self, theater: str, err: Exception) -> None:
        text = f"{theater}: alerts could not be recorded ({type(err).__name__}: {err})"
        self.errors.append(text)
        self.log(f"{_now()} {text}")

    def summary(self) -> dict:
        return {"alerts": self.raised, "alerts_redelivered": self.redelivered, "alert_errors": self.errors,
                "alert_rules": str(self.cfg.path) if self.cfg.exists else None,
                "webhook": self.cfg.webhook.shown if self.cfg.webhook else None}
