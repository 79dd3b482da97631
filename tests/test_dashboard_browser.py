"""The dashboard as a person sees it: `forecast dashboard` serving the fitted flagship, headless Chromium.

Starts the real server (the installed `forecast dashboard` command, on a free loopback port)
against the test's store and runs, loads the page in Debian's `chromium` driven over DevTools
(dashboards/screenshot.py: it waits until the headline is on the page and the charts have
drawn), and checks the screenshot is a real page and the DOM carries the headline.

Set FORECAST_SAVE_SCREENSHOT=dashboards/screenshot.png to keep the screenshot (the README's).
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import signal
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from forecast import wording

from conftest import FLAGSHIP, REPO, console_script

pytestmark = [
    pytest.mark.skipif(shutil.which("chromium") is None and not os.environ.get("CHROMIUM")
                       and not os.environ.get("CI"), reason="needs Debian's chromium (installed by .ci/run)"),
    pytest.mark.slow,  # the page of a real fit, in a real browser
]


def _screenshot_module():
    spec = importlib.util.spec_from_file_location("dashboard_screenshot", REPO / "dashboards" / "screenshot.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def dashboard_url(sampled_store, tmp_path):
    """`forecast dashboard --port N` serving this test's store; stopped (its process group) afterwards."""
    port = free_port()
    log = open(tmp_path / "dashboard.log", "w")
    proc = subprocess.Popen([str(console_script()), "dashboard", "--port", str(port)], stdout=log,
                            stderr=subprocess.STDOUT, cwd=tmp_path, env=dict(os.environ), start_new_session=True)
    url = f"http://127.0.0.1:{port}/"
    try:
        deadline = time.monotonic() + 120
        while True:
            if proc.poll() is not None:
                pytest.fail(f"the dashboard exited {proc.returncode}:\n{(tmp_path / 'dashboard.log').read_text()}")
            try:
                with urllib.request.urlopen(url + "_stcore/health", timeout=2) as resp:
                    if resp.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                pytest.fail("the dashboard did not answer in 2 minutes")
            time.sleep(0.3)
        yield url
    finally:
        try:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout=15)
        except ProcessLookupError:
            pass
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=5)
        log.close()


def _outside_address() -> str | None:
    """This machine's address on its default route (not loopback), if it has one."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.connect(("10.254.254.254", 1))  # no packet is sent
            address = s.getsockname()[0]
        except OSError:
            return None
    return None if address.startswith("127.") else address


def test_screenshot_shows_the_headline_and_charts(dashboard_url, tmp_path):
    from PIL import Image

    from forecast import runs

    doc = runs.require_published(FLAGSHIP).document()
    headline = f"to escalate within 30 days — {wording.pct(doc['prob']['30']['mean'])}"
    png, dom = tmp_path / "dashboard.png", tmp_path / "dashboard.html"
    started = time.perf_counter()
    state = _screenshot_module().capture(dashboard_url, png, dom, wait_text=headline, size=(1400, 2000),
                                         timeout=150)
    print(f"page ready and captured in {time.perf_counter() - started:.1f} s: {state}")
    keep = os.environ.get("FORECAST_SAVE_SCREENSHOT")
    if keep:
        shutil.copyfile(png, Path(keep))

    # The DOM carries the headline, the run and the tabs; the forecast tab's three charts drew.
    html = dom.read_text(encoding="utf-8")
    assert headline in html
    assert doc["words"].capitalize() in html
    assert doc["run_id"] in html
    for tab in ("Forecast", "Drivers", "Evidence", "Priors", "Diagnostics", "Compare", "Export"):
        assert f">{tab}<" in html
    assert state["charts"] == 4 and state["drawn"] >= 4  # the spread of P(30 days), history, evidence, timing

    # Bound to localhost by default: not reachable on the machine's other address.
    outside = _outside_address()
    if outside:
        port = int(dashboard_url.rsplit(":", 1)[1].strip("/"))
        with pytest.raises(OSError):
            socket.create_connection((outside, port), timeout=2).close()

    # The PNG is the page, not a blank or a loading skeleton.
    image = Image.open(png).convert("RGB")
    assert image.size == (1400, 2000)
    pixels = np.asarray(image.resize((350, 500))).reshape(-1, 3).astype(int)
    ink = float(np.mean(pixels.min(axis=1) < 235))
    colours = len(np.unique(pixels, axis=0))
    print(f"screenshot: {ink:.1%} of the page drawn on, {colours} colours")
    assert ink > 0.08, f"only {ink:.1%} of the page is drawn on"
    assert colours > 1500, f"only {colours} colours: charts missing?"
    # Line colours at full resolution: downsampling blends a 2-pixel line into the band behind it.
    r, g, b = np.asarray(image).reshape(-1, 3).astype(int).T
    assert np.sum((b > 100) & (r < 60)) > 200, "the history line (dark blue) is not on the page"
    assert np.sum((r > 150) & (g < 80) & (b < 80)) > 200, "the timing curve (red) is not on the page"


def test_a_link_by_theater_id_opens_that_theater_with_the_number_in_view(dashboard_url, tmp_path):
    """?theater=ID&tab=Drivers opens the flagship, before and after another theater gets a run; at 1024 x 768
    the 30-day number is on screen without scrolling; an unknown id says so and shows nothing else."""
    import datetime as dt

    from forecast import refit, runs, store

    from prior_sampling import prior_sample

    doc = runs.require_published(FLAGSHIP).document()
    headline = f"to escalate within 30 days — {wording.pct(doc['prob']['30']['mean'])}"
    link = dashboard_url + f"?theater={FLAGSHIP}&tab=Drivers"
    shoot = _screenshot_module().capture
    for step in ("before", "after"):
        png, dom = tmp_path / f"link-{step}.png", tmp_path / f"link-{step}.html"
        state = shoot(link, png, dom, wait_text=headline, size=(1024, 768), timeout=150)
        html = dom.read_text(encoding="utf-8")
        assert "What drives the forecast" in html, step  # the Drivers tab, from the link
        assert 0 < state["text_bottom"] <= 768, f"{step}: the 30-day number ends at {state['text_bottom']} px"
        if step == "before":
            keep = os.environ.get("FORECAST_SAVE_SCREENSHOT_1024")
            if keep:
                shutil.copyfile(png, Path(keep))
            # Another theater gets a (quick, prior-draw) run: the link must still open the flagship.
            run = refit.refit(store.engine(), "zapad-2017", dt.date(2017, 8, 15), sample=prior_sample)
            assert run.published
    missing = tmp_path / "missing.html"
    shoot(dashboard_url + "?theater=atlantis-2099", tmp_path / "missing.png", missing,
          wait_text="No theater with id", size=(1024, 768), timeout=150)
    text = missing.read_text(encoding="utf-8")
    assert "atlantis-2099" in text and "to escalate within 30 days" not in text


def test_a_row_recorded_after_the_run_moves_the_headline_in_the_browser(dashboard_url, sampled_store, tmp_path):
    """The live loop as a person sees it: a row recorded after the fit shows the instant update, with its k."""
    import json

    row = {"kind": "sign", "theater": FLAGSHIP, "date": "2022-02-14", "category": "medical",
           "description": "Browser test: blood supplies moved forward", "source": "test desk"}
    sampled_store.ok("add", FLAGSHIP, "--kind", row["kind"], "--date", row["date"], "--source", row["source"],
                     "--category", row["category"], "--description", row["description"], "--reason", "browser test")
    png, dom = tmp_path / "live.png", tmp_path / "live.html"
    _screenshot_module().capture(dashboard_url, png, dom, wait_text="Instant update", size=(1400, 1400), timeout=150)
    html = dom.read_text(encoding="utf-8")
    assert "Instant update" in html and "Pareto k" in html and "Stale forecast" in html
    assert json.loads(sampled_store.ok("show", FLAGSHIP, "--json").stdout)["stale"]["added"] == 1
