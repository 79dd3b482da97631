"""Screenshot a running dashboard the way a person sees it: headless Chromium, driven over DevTools.

    python dashboards/screenshot.py http://127.0.0.1:8501/ --out dashboards/screenshot.png \
        [--dom page.html] [--wait-text "to escalate"] [--size 1400,2000]

`chromium --headless --screenshot --virtual-time-budget=...` is not enough for Streamlit: the page
is drawn from messages on a WebSocket, which virtual time does not wait for, so the shot races the
app. Here Chromium is started with a DevTools pipe-free port, the page is loaded, and the script
waits (in real time) until the text is on the page and every chart has drawn, then captures the
PNG and the DOM. Needs Debian's `chromium` (or CHROMIUM=path) and the `websockets` package.
"""

from __future__ import annotations

import argparse
import base64
import itertools
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

READY_JS = """(() => {
  const text = document.body ? document.body.innerText : "";
  const running = !!document.querySelector('[data-testid="stStatusWidget"]');
  const skeleton = !!document.querySelector('[data-testid="stSkeleton"], [data-testid="stAppSkeleton"]');
  const charts = document.querySelectorAll('[data-testid="stVegaLiteChart"]').length;
  const drawn = document.querySelectorAll('[data-testid="stVegaLiteChart"] canvas, '
                                          + '[data-testid="stVegaLiteChart"] svg.marks').length;
  // Where the waited-for text ends on the screen: is it visible without scrolling?
  const holder = [...document.querySelectorAll('h1, h2, h3, p')].find(e => e.innerText.includes(WAIT));
  const bottom = holder ? holder.getBoundingClientRect().bottom : -1;
  return JSON.stringify({text: text.includes(WAIT), running, skeleton, charts, drawn, text_bottom: bottom});
})()"""


def chromium_binary() -> str:
    found = os.environ.get("CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser") \
        or shutil.which("google-chrome")
    if not found:
        raise FileNotFoundError("no chromium on PATH (Debian: apt-get install chromium)")
    return found


class DevTools:
    """The smallest DevTools client: one page target, commands answered in order."""

    def __init__(self, ws_url: str):
        from websockets.sync.client import connect

        self.ws = connect(ws_url, max_size=64 * 2**20, open_timeout=30)
        self.ids = itertools.count(1)

    def call(self, method: str, **params):
        msg_id = next(self.ids)
        self.ws.send(json.dumps({"id": msg_id, "method": method, "params": params}))
        while True:
            reply = json.loads(self.ws.recv(timeout=60))
            if reply.get("id") == msg_id:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply.get("result", {})

    def evaluate(self, expression: str):
        result = self.call("Runtime.evaluate", expression=expression, returnByValue=True)
        return result.get("result", {}).get("value")

    def close(self) -> None:
        self.ws.close()


def capture(url: str, out: Path, dom: Path | None = None, wait_text: str = "", size=(1400, 2000),
            timeout: float = 90.0, settle: float = 1.5) -> dict:
    """Load `url`, wait until `wait_text` shows and the charts have drawn, save the PNG (and DOM)."""
    profile = tempfile.mkdtemp(prefix="dashboard-chromium-")
    width, height = size
    proc = subprocess.Popen(
        [chromium_binary(), "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
         "--disable-dev-shm-usage", "--no-first-run", "--mute-audio", f"--user-data-dir={profile}",
         "--remote-debugging-port=0", "--remote-debugging-address=127.0.0.1", f"--window-size={width},{height}",
         "about:blank"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    client = None
    try:
        port_file = Path(profile) / "DevToolsActivePort"
        deadline = time.monotonic() + 30
        while not port_file.exists() or not port_file.read_text().strip():
            if time.monotonic() > deadline or proc.poll() is not None:
                raise RuntimeError("chromium did not open its DevTools port")
            time.sleep(0.1)
        port = int(port_file.read_text().split()[0])
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=10) as resp:
            pages = [t for t in json.load(resp) if t.get("type") == "page"]
        client = DevTools(pages[0]["webSocketDebuggerUrl"])
        client.call("Emulation.setDeviceMetricsOverride", width=width, height=height, deviceScaleFactor=1,
                    mobile=False)
        client.call("Page.enable")
        client.call("Page.navigate", url=url)
        deadline = time.monotonic() + timeout
        state: dict = {}
        stable_since = None
        while time.monotonic() < deadline:
            raw = client.evaluate(READY_JS.replace("WAIT", json.dumps(wait_text)))
            state = json.loads(raw) if raw else {}
            ready = state.get("text") and not state.get("running") and not state.get("skeleton") \
                and state.get("drawn", 0) >= state.get("charts", 0)
            if ready:
                stable_since = stable_since or time.monotonic()
                if time.monotonic() - stable_since >= settle:  # let transitions finish
                    break
            else:
                stable_since = None
            time.sleep(0.25)
        else:
            raise TimeoutError(f"page not ready after {timeout:.0f} s: {state}")
        shot = client.call("Page.captureScreenshot", format="png",
                           clip={"x": 0, "y": 0, "width": width, "height": height, "scale": 1})
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_bytes(base64.b64decode(shot["data"]))
        if dom is not None:
            dom.write_text(client.evaluate("document.documentElement.outerHTML"), encoding="utf-8")
        return state
    finally:
        if client is not None:
            client.close()
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
        shutil.rmtree(profile, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("url")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--dom", type=Path)
    parser.add_argument("--wait-text", default="to escalate within")
    parser.add_argument("--size", default="1400,2000")
    parser.add_argument("--timeout", type=float, default=90.0)
    args = parser.parse_args(argv)
    size = tuple(int(v) for v in args.size.split(","))
    state = capture(args.url, args.out, args.dom, args.wait_text, size, args.timeout)
    print(json.dumps({"out": str(args.out), **state}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
