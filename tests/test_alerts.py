"""Alerts (`forecast.alerts`): rules, crossings, the alert log, delivery to a webhook, `forecast alerts`, the page.

Refits use test_schedule's `StoredFit` stand-in (the flagship's stored posterior relabelled to a
watched theater), so `refit --all` runs for real and in seconds; `p30` fixes the P(30 days) each
new run publishes, so a test decides where its crossings are. The webhook is a real HTTP server
on 127.0.0.1 in a thread (it stops at the test's end, or by itself after a minute).
"""

from __future__ import annotations

import datetime as dt
import json
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest
from test_schedule import WATCHED, StoredFit, by_theater, new_evidence, refit_all, watched_case

from forecast import alerts

from conftest import FLAGSHIP, REPO

P = alerts.Point


# --- fixtures ------------------------------------------------------------------------------------


@pytest.fixture
def watched(fitted_store, tmp_path):
    """The fitted store plus one open theater."""
    fitted_store.ok("import", watched_case(tmp_path / f"{WATCHED}.jsonl"))
    return fitted_store


@pytest.fixture
def stored_fit(watched, monkeypatch) -> StoredFit:
    from forecast import model

    fake = StoredFit(model.fit)
    monkeypatch.setattr(model, "fit", fake)
    return fake


@pytest.fixture
def p30(monkeypatch) -> list[float]:
    """Append the P(30 days) the next runs publish, in order (a run with none left keeps its own)."""
    from forecast import predict

    queue: list[float] = []
    summarise = predict.summarise

    def fixed(draws, weights=None):
        doc = summarise(draws, weights)
        if queue:
            value = queue.pop(0)
            p = doc["prob"]["30"]
            p.update(mean=value, lo=min(p["lo"], value), hi=max(p["hi"], value))
        return doc

    monkeypatch.setattr(predict, "summarise", fixed)
    return queue


class Hook:
    """A webhook on 127.0.0.1: records each POST, answers with `statuses` in turn, then 200."""

    def __init__(self, statuses=()):
        self.statuses = list(statuses)
        self.received: list[dict] = []
        self.headers: list[dict] = []
        hook = self

        class Handler(BaseHTTPRequestHandler):
            timeout = 10

            def do_POST(self):  # noqa: N802 - http.server's name
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                hook.received.append(json.loads(body))
                hook.headers.append(dict(self.headers))
                status = hook.statuses.pop(0) if hook.statuses else 200
                self.send_response(status)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"ok")

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}/hook/SECRET-TOKEN"
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()
        self.timer = threading.Timer(60, self.server.shutdown)  # bounded: never outlives a stuck test
        self.timer.daemon = True
        self.timer.start()

    def stop(self):
        self.timer.cancel()
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=5)


@pytest.fixture(autouse=True)
def _no_proxy(monkeypatch):
    """The webhooks here are on 127.0.0.1: never through a proxy the caller's environment names."""
    monkeypatch.setenv("no_proxy", "*")


@pytest.fixture
def hook():
    server = Hook()
    yield server
    server.stop()


def closed_port() -> int:
    """A port nothing listens on (connections are refused)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rules(runs_dir: Path, url: str | None, body: str = f"[theaters.{WATCHED}]\np30_above = 0.5\n") -> Path:
    webhook = f'\n[webhook]\nurl = "{url}"\ntimeout_seconds = 2\nbackoff_seconds = 0.01\n' if url else ""
    path = runs_dir / "alerts.toml"
    path.write_text(body + webhook, encoding="utf-8")
    return path


def log_records(runs_dir: Path) -> list[dict]:
    path = runs_dir / "alerts.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def cross(cli, tmp_path, values=(0.41, 0.63)):
    """Publish a first run, then (after new evidence) a second: returns the second job's (code, summary, log)."""
    code, first, _ = refit_all(cli)
    assert code == 0 and by_theater(first)[WATCHED]["action"] == "published" and first["alerts"] == []
    new_evidence(cli, tmp_path)
    return refit_all(cli)


# --- the rules -----------------------------------------------------------------------------------


def test_check_crossings():
    a, b = P("run-a", "2022-02-01", 0.41), P("run-b", "2022-02-08", 0.63)
    above = alerts.Rules(above=(0.5,))
    [alert] = alerts.check(WATCHED, a, b, above)
    assert alert["rule"] == "p30_above" and alert["threshold"] == 0.5 and alert["as_of"] == "2022-02-08"
    assert (alert["previous_p30"], alert["new_p30"], alert["previous_run_id"], alert["new_run_id"]) == \
        (0.41, 0.63, "run-a", "run-b")
    assert alert["message"] == "P(30 days) crossed 50% (41% -> 63%)" and alert["delivered"] is False
    assert alerts.check(WATCHED, b, a, above) == []  # falling through X is not crossing it upward
    assert alerts.check(WATCHED, b, P("run-c", "2022-02-09", 0.70), above) == []  # staying above: once only
    assert alerts.check(WATCHED, None, b, above) == []  # a first run has nothing to cross from
    assert len(alerts.check(WATCHED, P("x", "2022-01-01", 0.49), P("y", "2022-01-02", 0.5), above)) == 1  # at X: above
    assert alerts.check(WATCHED, P("x", "2022-01-01", 0.5), P("y", "2022-01-02", 0.6), above) == []

    [down] = alerts.check(WATCHED, b, a, alerts.Rules(below=(0.5,)))
    assert down["rule"] == "p30_below" and down["message"] == "P(30 days) fell below 50% (63% -> 41%)"
    assert alerts.check(WATCHED, a, b, alerts.Rules(below=(0.5,))) == []

    levels = alerts.check(WATCHED, P("x", "d", 0.1), P("y", "d", 0.8), alerts.Rules(above=(0.25, 0.5, 0.9)))
    assert [x["threshold"] for x in levels] == [0.25, 0.5]  # one alert per level crossed

    move = alerts.Rules(move=0.10)
    [moved] = alerts.check(WATCHED, a, b, move)
    assert moved["rule"] == "p30_move" and moved["message"] == "P(30 days) moved +22.0 points (41% -> 63%), more than 10"
    assert len(alerts.check(WATCHED, b, a, move)) == 1  # either way
    assert alerts.check(WATCHED, a, P("c", "d", 0.51), move) == []  # exactly N is not more than N
    assert alerts.check(WATCHED, a, b, alerts.Rules()) == []


def test_alert_ids_are_stable_per_crossing():
    a, b, c = P("run-a", "d", 0.41), P("run-b", "d", 0.63), P("run-c", "d", 0.63)
    rule = alerts.Rules(above=(0.5,), move=0.1)
    first, again = alerts.check(WATCHED, a, b, rule), alerts.check(WATCHED, a, b, rule, now=dt.datetime(2030, 1, 1))
    assert [x["id"] for x in first] == [x["id"] for x in again]  # the same crossing: the same id
    assert len({x["id"] for x in first}) == 2  # two rules: two ids
    assert {x["id"] for x in alerts.check(WATCHED, a, c, rule)}.isdisjoint(x["id"] for x in first)
    assert {x["id"] for x in alerts.check("other", a, b, rule)}.isdisjoint(x["id"] for x in first)


def test_rules_file():
    cfg = alerts.parse(f"""
[theaters."*"]
p30_move = 0.15

[theaters.{WATCHED}]
p30_above = [0.5, 0.3]
p30_below = 0.2

[theaters.quiet-one]

[webhook]
url = "https://hooks.example.org/services/T/B/token"
retries = 4
""", "alerts.toml")
    assert cfg.rules_for(WATCHED) == alerts.Rules(above=(0.3, 0.5), below=(0.2,), move=None)  # replaces "*"
    assert cfg.rules_for("anything-else") == alerts.Rules(move=0.15)
    assert cfg.rules_for("quiet-one").empty
    hook = cfg.webhook
    assert (hook.retries, hook.attempts, hook.timeout_seconds, hook.backoff_seconds) == (4, 5, 5.0, 0.5)
    assert hook.shown == "https://hooks.example.org"  # never the token
    assert alerts.parse("", "x").webhook is None and alerts.parse("", "x").rules_for(WATCHED).empty


@pytest.mark.parametrize("text, key", [
    ("[theaters.w]\np30_abov = 0.5", "theaters.w.p30_abov"),
    ("[theater.w]\np30_above = 0.5", "theater"),
    ("[theaters.w]\np30_above = nan", "theaters.w.p30_above"),
    ("[theaters.w]\np30_move = inf", "theaters.w.p30_move"),
    ("[theaters.w]\np30_above = 1.5", "theaters.w.p30_above"),
    ("[theaters.w]\np30_above = 0", "theaters.w.p30_above"),
    ("[theaters.w]\np30_move = -0.1", "theaters.w.p30_move"),
    ("[theaters.w]\np30_above = true", "theaters.w.p30_above"),
    ("[theaters.w]\np30_above = '50%'", "theaters.w.p30_above"),
    ("[theaters.w]\np30_above = []", "theaters.w.p30_above"),
    ("[theaters.w]\np30_above = [0.5, 0.5]", "theaters.w.p30_above"),
    ("[theaters.Bad_Id]\np30_above = 0.5", "theaters.Bad_Id"),
    ("theaters = 3", "theaters"),
    ("[theaters]\nw = 0.5", "theaters.w"),
    ("[webhook]\nurl = 'ftp://example.org/x'", "webhook.url"),
    ("[webhook]\nurl = 'file:///etc/passwd'", "webhook.url"),
    ("[webhook]\nurl = 'http://'", "webhook.url"),
    ("[webhook]\nurl = 'http://host:99999/'", "webhook.url"),
    ("[webhook]\nurl = 3", "webhook.url"),
    ('[webhook]\nurl = "http://h/a\\u0007b"', "webhook.url"),
    ("[webhook]\nurl = 'http://h/a b'", "webhook.url"),
    ("[webhook]\ntimeout_seconds = 5", "webhook.url"),
    ("[webhook]\nurl = 'http://h/'\ntimeout_seconds = 0", "webhook.timeout_seconds"),
    ("[webhook]\nurl = 'http://h/'\ntimeout_seconds = nan", "webhook.timeout_seconds"),
    ("[webhook]\nurl = 'http://h/'\nretries = -1", "webhook.retries"),
    ("[webhook]\nurl = 'http://h/'\nretries = 1.5", "webhook.retries"),
    ("[webhook]\nurl = 'http://h/'\nbackoff_seconds = inf", "webhook.backoff_seconds"),
    ("[webhook]\nurl = 'http://h/'\nsecret = 'x'", "webhook.secret"),
    ("[theaters.w\np30_above = 0.5", "not valid TOML"),
])
def test_bad_rules_files(text, key):
    with pytest.raises(alerts.AlertConfigError) as err:
        alerts.parse(text, "/etc/forecast/alerts.toml")
    assert str(err.value).startswith("/etc/forecast/alerts.toml: ") and key in str(err.value)


def test_bad_rules_file_stops_refit_all_before_any_fit(stored_fit, watched, runs_dir, tmp_path):
    rules(runs_dir, None, f"[theaters.{WATCHED}]\np30_above = 1.5\n")
    result = watched("refit", "--all")
    assert result.exit_code == 2 and str(runs_dir / "alerts.toml") in result.stderr
    assert f"theaters.{WATCHED}.p30_above" in result.stderr and stored_fit.calls == []
    missing = tmp_path / "nowhere.toml"
    result = watched("refit", "--all", env={"FORECAST_ALERTS": str(missing)})
    assert result.exit_code == 2 and str(missing) in result.stderr and "FORECAST_ALERTS" in result.stderr
    assert stored_fit.calls == []


# --- refit --all records and posts -----------------------------------------------------------


def test_a_crossing_posts_exactly_once(stored_fit, watched, runs_dir, tmp_path, p30, hook):
    rules(runs_dir, hook.url)
    p30 += [0.41, 0.63]
    code, summary, log = cross(watched, tmp_path)
    assert code == 0 and by_theater(summary)[WATCHED]["action"] == "published"
    [alert] = summary["alerts"]
    assert alert["delivered"] is True and alert["attempts"] == 1 and alert["last_error"] is None
    assert (alert["previous_p30"], alert["new_p30"], alert["threshold"]) == (0.41, 0.63, 0.5)
    assert alert["new_run_id"] == by_theater(summary)[WATCHED]["run_id"]
    assert alert["previous_run_id"] == by_theater(summary)[WATCHED]["previous_run_id"]
    assert [line.split(" ", 1)[1] for line in log if "alert" in line] == \
        [f"{WATCHED}: alert: P(30 days) crossed 50% (41% -> 63%), posted"]
    assert log[0].split()[1] == f"{WATCHED}:" and "published" in log[0]  # the theater's line, then its alerts

    [body] = hook.received
    assert body["id"] == alert["id"] and body["theater"] == WATCHED and body["rule"] == "p30_above"
    assert body["text"] == f"{WATCHED}: P(30 days) crossed 50% (41% -> 63%)"
    assert {"previous_p30", "new_p30", "previous_run_id", "new_run_id", "as_of", "created_at"} <= body.keys()
    assert hook.headers[0]["Idempotency-Key"] == alert["id"]
    assert hook.headers[0]["Content-Type"] == "application/json"
    [record] = log_records(runs_dir)
    assert record == alert and record["delivered_at"]
    assert summary["webhook"] == f"http://127.0.0.1:{hook.server.server_port}"

    code, again, log = refit_all(watched)  # unchanged: the theater is skipped and nothing is posted
    assert code == 0 and by_theater(again)[WATCHED]["action"] == "skipped"
    assert again["alerts"] == [] and again["alerts_redelivered"] == [] and len(hook.received) == 1
    assert not [line for line in log if "alert" in line] and len(log_records(runs_dir)) == 1

    assert watched.ok("refit", "--all").stdout.splitlines()[-1].endswith("0 failed")  # no alert: not mentioned

    text = watched.ok("alerts", WATCHED).stdout
    assert "crossed 50% (41% -> 63%), posted (1 attempt)" in text and alert["new_run_id"] in text
    assert watched.json("alerts", WATCHED) == [record] == watched.json("alerts")
    for where in (text, json.dumps(summary), (runs_dir / "alerts.jsonl").read_text()):
        assert "SECRET-TOKEN" not in where  # the webhook's token is never written down


@pytest.mark.slow  # several refits through `refit --all`; the fast lane keeps one crossing
def test_webhook_errors_are_retried(stored_fit, watched, runs_dir, tmp_path, p30, hook):
    rules(runs_dir, hook.url)
    hook.statuses = [500, 503]
    p30 += [0.41, 0.63]
    code, summary, _ = cross(watched, tmp_path)
    [alert] = summary["alerts"]
    assert code == 0 and alert["delivered"] is True and alert["attempts"] == 3
    assert len(hook.received) == 3 and len({h["Idempotency-Key"] for h in hook.headers}) == 1


@pytest.mark.slow  # several refits through `refit --all`; the fast lane keeps one crossing
def test_a_refused_answer_is_not_retried_in_the_same_job(stored_fit, watched, runs_dir, tmp_path, p30, hook):
    rules(runs_dir, hook.url)
    hook.statuses = [404]
    p30 += [0.41, 0.63]
    code, summary, log = cross(watched, tmp_path)
    [alert] = summary["alerts"]
    assert code == 0 and alert["delivered"] is False and alert["attempts"] == 1 and len(hook.received) == 1
    assert alert["last_error"] == "HTTP 404 Not Found after 1 attempt"
    assert any(line.endswith("not posted: HTTP 404 Not Found after 1 attempt") for line in log)


@pytest.mark.slow  # several refits through `refit --all`; the fast lane keeps one crossing
def test_a_webhook_that_is_down_never_fails_the_job(stored_fit, watched, runs_dir, tmp_path, p30):
    rules(runs_dir, f"http://127.0.0.1:{closed_port()}/hook")
    p30 += [0.41, 0.63]
    code, summary, log = cross(watched, tmp_path)
    assert code == 0 and summary["exit_code"] == 0 and by_theater(summary)[WATCHED]["action"] == "published"
    [alert] = summary["alerts"]
    assert alert["delivered"] is False and alert["attempts"] == 3  # retries = 2 by default
    assert alert["last_error"].startswith("cannot connect") and alert["last_error"].endswith("after 3 attempts")
    [line] = [line for line in log if "alert" in line]
    assert line.split(" ", 1)[1].startswith(f"{WATCHED}: alert: P(30 days) crossed 50% (41% -> 63%), not posted: "
                                            "cannot connect")
    assert log_records(runs_dir) == [alert]
    assert "not posted: cannot connect" in watched.ok("alerts").stdout
    text = watched.ok("refit", "--all").stdout  # text mode too: the alert is retried, and fails again
    assert "not posted: cannot connect" in text and text.splitlines()[-1].endswith("; 1 alert(s), 0 posted")

    server = Hook()  # the webhook is back: the next job posts the alert once, and only once
    try:
        rules(runs_dir, server.url)
        code, later, log = refit_all(watched)
        assert code == 0 and later["alerts"] == [] and len(server.received) == 1
        [again] = later["alerts_redelivered"]
        assert again["id"] == alert["id"] and again["delivered"] and again["attempts"] == 7
        assert any(line.endswith(f"alert (raised {alert['created_at']}): {alert['message']}, posted on retry")
                   for line in log)
        code, last, _ = refit_all(watched)
        assert code == 0 and last["alerts_redelivered"] == [] and len(server.received) == 1
    finally:
        server.stop()
    assert [(r["id"], r["delivered"]) for r in log_records(runs_dir)] == [(alert["id"], True)]


class Crash(BaseException):
    """The process dies (not an error the job handles)."""


@pytest.mark.slow  # several refits through `refit --all`; the fast lane keeps one crossing
def test_a_crash_between_record_and_post_delivers_later_not_twice(stored_fit, watched, runs_dir, tmp_path, p30,
                                                                  hook, monkeypatch):
    rules(runs_dir, hook.url)
    p30 += [0.41, 0.63]
    refit_all(watched)
    new_evidence(watched, tmp_path)
    post = alerts.post

    def crash(*args, **kwargs):
        raise Crash()

    monkeypatch.setattr(alerts, "post", crash)
    with pytest.raises(Crash):
        watched("refit", "--all")
    [recorded] = log_records(runs_dir)
    assert recorded["delivered"] is False and recorded["attempts"] == 0 and hook.received == []

    monkeypatch.setattr(alerts, "post", post)
    code, summary, _ = refit_all(watched)  # the run was published before the crash: skipped now
    assert code == 0 and by_theater(summary)[WATCHED]["action"] == "skipped" and summary["alerts"] == []
    assert [a["id"] for a in summary["alerts_redelivered"]] == [recorded["id"]] and len(hook.received) == 1
    refit_all(watched)
    assert len(hook.received) == 1 and [r["delivered"] for r in log_records(runs_dir)] == [True]


@pytest.mark.slow  # several refits through `refit --all`; the fast lane keeps one crossing
def test_a_rejected_run_never_alerts_and_the_next_compares_with_the_published_one(
        stored_fit, watched, runs_dir, tmp_path, p30, hook, monkeypatch):
    from forecast import runs

    rules(runs_dir, hook.url)
    p30 += [0.41, 0.63, 0.70]
    code, first, _ = refit_all(watched)
    published = by_theater(first)[WATCHED]["run_id"]
    gate = runs.gate
    monkeypatch.setattr(runs, "gate", lambda diagnostics: ["forced by the test"])
    new_evidence(watched, tmp_path)
    code, rejected, _ = refit_all(watched)
    assert code == 3 and by_theater(rejected)[WATCHED]["action"] == "rejected" and rejected["alerts"] == []
    monkeypatch.setattr(runs, "gate", gate)
    new_evidence(watched, tmp_path, description="Test: a second embassy draws down")
    code, summary, _ = refit_all(watched)
    [alert] = summary["alerts"]
    assert code == 0 and alert["previous_run_id"] == published and alert["previous_p30"] == 0.41
    assert alert["new_p30"] == 0.70 and len(hook.received) == 1


@pytest.mark.slow  # several refits through `refit --all`; the fast lane keeps one crossing
def test_move_rule_default_and_no_webhook(stored_fit, watched, runs_dir, tmp_path, p30):
    rules(runs_dir, None, '[theaters."*"]\np30_move = 0.1\n')
    p30 += [0.30, 0.12]
    code, summary, log = cross(watched, tmp_path)
    [alert] = summary["alerts"]
    assert code == 0 and alert["rule"] == "p30_move" and alert["delivered"] is False and alert["attempts"] == 0
    assert alert["last_error"] == f"no [webhook] in {runs_dir / 'alerts.toml'}"
    assert any(line.endswith("alert: P(30 days) moved -18.0 points (30% -> 12%), more than 10, not posted: "
                             f"no [webhook] in {runs_dir / 'alerts.toml'}") for line in log)


@pytest.mark.slow  # several refits through `refit --all`; the fast lane keeps one crossing
def test_no_rules_no_alerts(stored_fit, watched, runs_dir, tmp_path, p30):
    p30 += [0.1, 0.9]
    code, summary, _ = cross(watched, tmp_path)
    assert code == 0 and summary["alerts"] == [] and summary["alert_rules"] is None
    assert not (runs_dir / "alerts.jsonl").exists()


@pytest.mark.slow  # several refits through `refit --all`; the fast lane keeps one crossing
def test_a_torn_log_line_is_skipped_and_kept(stored_fit, watched, runs_dir, tmp_path, p30, hook, capsys):
    rules(runs_dir, hook.url)
    (runs_dir / "alerts.jsonl").write_text('{"id": "torn-by-a-cr')  # a write cut short, no newline
    p30 += [0.41, 0.63]
    code, summary, _ = cross(watched, tmp_path)
    assert code == 0 and summary["alerts"][0]["delivered"]
    lines = (runs_dir / "alerts.jsonl").read_text().splitlines()
    assert lines[0] == '{"id": "torn-by-a-cr' and json.loads(lines[1])["id"] == summary["alerts"][0]["id"]
    from forecast import config

    config.reset_warnings()  # a warning is given once per process (per command in the CLI)
    assert [r["id"] for r in alerts.read_log()] == [summary["alerts"][0]["id"]]
    assert "line 1 is not an alert record (damaged?); skipped" in capsys.readouterr().err
    assert watched.json("alerts", WATCHED) == summary["alerts"]


def test_rules_for_an_unknown_theater_are_named(stored_fit, watched, runs_dir):
    rules(runs_dir, None, "[theaters.watch-ukrane]\np30_above = 0.5\n")
    code, _, log = refit_all(watched)
    assert code == 0 and any("has rules for theater 'watch-ukrane', which is not in the store" in line for line in log)


def test_post_timeouts_and_redirects(hook):
    record = alerts.check(WATCHED, P("a", "d", 0.1), P("b", "d", 0.9), alerts.Rules(above=(0.5,)))[0]
    waits: list[float] = []
    with socket.socket() as silent:  # accepts connections, never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        webhook = alerts.Webhook(f"http://127.0.0.1:{silent.getsockname()[1]}/", timeout_seconds=0.2, retries=2,
                                 backoff_seconds=0.5)
        assert alerts.post(webhook, record, sleep=waits.append) == (False, 3, "no answer within 0.2 s")
    assert waits == [0.5, 1.0]  # backoff doubles
    hook.statuses = [302]
    assert alerts.post(alerts.Webhook(hook.url), record) == \
        (False, 1, "HTTP 302 Found (a redirect: give the final URL)")
    assert "SECRET-TOKEN" not in repr(alerts.Webhook(hook.url))


# --- forecast alerts -------------------------------------------------------------------------


def test_alerts_listing(initialised_cli, runs_dir):
    assert "no alerts recorded (no rules file:" in initialised_cli.ok("alerts").stdout
    assert initialised_cli.json("alerts") == [] and initialised_cli.json("alerts", FLAGSHIP) == []
    assert f"no alerts recorded for {FLAGSHIP}" in initialised_cli.ok("alerts", FLAGSHIP).stdout
    result = initialised_cli("alerts", "no-such-theater")
    assert result.exit_code == 2 and "unknown theater" in result.stderr

    old = alerts.check(FLAGSHIP, P("a", "2022-02-01", 0.2), P("b", "2022-02-08", 0.6), alerts.Rules(above=(0.5,)),
                       now=dt.datetime(2022, 2, 8, 6))[0]
    new = alerts.check(FLAGSHIP, P("b", "2022-02-08", 0.6), P("c", "2022-02-15", 0.3), alerts.Rules(below=(0.5,)),
                       now=dt.datetime(2022, 2, 15, 6))[0]
    other = alerts.check("georgia-2008", P("x", "2008-08-01", 0.2), P("y", "2008-08-05", 0.6),
                         alerts.Rules(move=0.2), now=dt.datetime(2022, 2, 10))[0]
    for record in (old, other, new):
        alerts.append(record)
    assert [r["id"] for r in initialised_cli.json("alerts", FLAGSHIP)] == [new["id"], old["id"]]  # newest first
    assert [r["id"] for r in initialised_cli.json("alerts")] == [new["id"], other["id"], old["id"]]
    text = initialised_cli.ok("alerts", FLAGSHIP).stdout.splitlines()
    assert len(text) == 2 and "fell below 50% (60% -> 30%), not posted: not tried yet" in text[0]
    assert text[1].startswith("2022-02-08T06:00:00Z") and "crossed 50%" in text[1]


# --- the page ------------------------------------------------------------------------------------


def _page_markdown(at: AppTest) -> str:
    return "\n".join(m.value for m in at.markdown)


def test_the_page_shows_the_theaters_alerts(fitted_store, runs_dir, no_sampling):
    at = AppTest.from_file(str(REPO / "dashboards" / "app.py"), default_timeout=120)
    at.run()
    assert not at.exception, [e.message for e in at.exception]
    assert "Alerts:" not in _page_markdown(at)  # no alerts: no section

    from forecast import dashboard_view, runs

    run = runs.require_published(FLAGSHIP)
    [alert] = alerts.check(FLAGSHIP, P("earlier-run", "2022-02-08", 0.41), run, alerts.Rules(move=0.001))
    alerts.append(alert)
    assert [a["id"] for a in dashboard_view.alerts_for(FLAGSHIP)] == [alert["id"]]
    assert dashboard_view.alerts_for("georgia-2008") == []
    at.run()
    assert not at.exception, [e.message for e in at.exception]
    shown = _page_markdown(at)
    assert f"**Alerts:** {alert['message']}" in shown and run.id in shown and "not posted" in shown


@pytest.fixture
def no_sampling(monkeypatch):
    from forecast import model

    def refuse(*args, **kwargs):
        raise AssertionError("the dashboard sampled a posterior")

    monkeypatch.setattr(model, "fit", refuse)
