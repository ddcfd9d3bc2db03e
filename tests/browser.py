"""Open a page in headless Chromium (Debian's `chromium`) over the DevTools protocol
(--remote-debugging-pipe: JSON messages ending in NUL on fds 3 and 4) and report what a
reader would hit: images that did not load, console errors, titles and tables that are cut.

    with Browser() as b:
        got = b.check("file:///.../index.html")   # {"images", "broken", "cut", "errors"}
        got = b.check(url, "document.title")      # ... and "script": the expression's value
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

WIDTH, HEIGHT = 1300, 900

# Runs in the page once it has loaded: every <img> decoded; titles, captions, cells and tables
# neither overflowing their own box nor reaching past the window's right edge (the page
# itself does not scroll sideways).
CHECK_JS = r"""
(() => {
  const W = document.documentElement.clientWidth, out = {images: 0, broken: [], cut: []};
  for (const img of document.images) {
    out.images++;
    if (!(img.complete && img.naturalWidth > 0)) out.broken.push(img.alt || img.src.slice(0, 80));
    else if (img.getBoundingClientRect().right > W + 1) out.cut.push('img ' + (img.alt || '').slice(0, 60));
  }
  for (const el of document.querySelectorAll('h1, h2, h3, h4, figcaption, th, td, table, p, li')) {
    const r = el.getBoundingClientRect();
    if (el.scrollWidth > el.clientWidth + 1 || r.right > W + 1)
      out.cut.push(el.tagName.toLowerCase() + ': ' + el.textContent.trim().slice(0, 60));
  }
  if (document.documentElement.scrollWidth > W + 1) out.cut.push('page scrolls sideways');
  return out;
})()
"""


_TRAMPOLINE = """
import fcntl, os, sys
a, b = (fcntl.fcntl(int(fd), fcntl.F_DUPFD, 10) for fd in sys.argv[1:3])  # out of the way of 3 and 4
os.dup2(a, 3)
os.dup2(b, 4)
os.execv(sys.argv[3], sys.argv[3:])
"""


def chromium() -> str | None:
    for name in (os.environ.get("SING_CHROMIUM"), "chromium", "chromium-browser", "google-chrome"):
        if name and shutil.which(name):
            return shutil.which(name)
    return None


class Browser:
    def __init__(self, timeout: float = 30.0):
        self.timeout, self._id, self._buf = timeout, 0, b""

    def __enter__(self):
        self.profile = tempfile.mkdtemp(prefix="sing-chromium-")
        cmd_r, self._cmd_w = os.pipe()  # we write commands, Chromium reads them on fd 3
        self._res_r, res_w = os.pipe()  # Chromium writes replies on fd 4
        args = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                "--disable-component-update", "--disable-sync", "--no-first-run", "--hide-scrollbars",
                f"--user-data-dir={self.profile}", "--remote-debugging-pipe", "about:blank"]
        # a tiny Python trampoline puts the pipe ends on fds 3 and 4, then becomes Chromium (no
        # preexec_fn: pytest runs threads; no shell: dash takes single-digit fds only)
        self.proc = subprocess.Popen([sys.executable, "-c", _TRAMPOLINE, str(cmd_r), str(res_w), chromium(), *args],
                                     pass_fds=(cmd_r, res_w), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        os.close(cmd_r)
        os.close(res_w)
        return self

    def __exit__(self, *exc):
        self.proc.kill()
        self.proc.wait()
        os.close(self._cmd_w)
        os.close(self._res_r)
        shutil.rmtree(self.profile, ignore_errors=True)

    def _read(self) -> dict:
        while b"\0" not in self._buf:
            chunk = os.read(self._res_r, 1 << 16)
            if not chunk:
                raise RuntimeError("chromium closed the DevTools pipe")
            self._buf += chunk
        msg, self._buf = self._buf.split(b"\0", 1)
        return json.loads(msg)

    def send(self, method: str, params: dict | None = None, session: str | None = None,
             events: list | None = None) -> dict:
        """A command's result; events that arrive meanwhile are appended to `events`."""
        self._id += 1
        msg = {"id": self._id, "method": method, "params": params or {}}
        if session:
            msg["sessionId"] = session
        os.write(self._cmd_w, json.dumps(msg).encode() + b"\0")
        end = time.monotonic() + self.timeout
        while time.monotonic() < end:
            m = self._read()
            if m.get("id") == self._id:
                if "error" in m:
                    raise RuntimeError(f"{method}: {m['error']}")
                return m["result"]
            if events is not None and "method" in m:
                events.append(m)
        raise TimeoutError(method)

    def check(self, url: str, script: str | None = None) -> dict:
        """Load `url` in a fresh tab of WIDTH x HEIGHT; returns CHECK_JS's findings plus the
        console errors (console.error, uncaught exceptions, failed loads), and under "script"
        the value of the JavaScript expression `script` evaluated after the check (clicks,
        reading the page back), whose own errors are counted too."""
        events: list[dict] = []
        target = self.send("Target.createTarget", {"url": "about:blank"})["targetId"]
        s = self.send("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
        for m in ("Page.enable", "Runtime.enable", "Log.enable"):
            self.send(m, session=s, events=events)
        self.send("Emulation.setDeviceMetricsOverride", {"width": WIDTH, "height": HEIGHT, "deviceScaleFactor": 1,
                                                         "mobile": False}, session=s, events=events)
        self.send("Page.navigate", {"url": url}, session=s, events=events)
        end = time.monotonic() + self.timeout
        while not any(e["method"] == "Page.loadEventFired" for e in events):
            if time.monotonic() > end:
                raise TimeoutError(f"{url} did not load")
            m = self._read()
            if "method" in m:
                events.append(m)
        got = self.send("Runtime.evaluate", {"expression": CHECK_JS, "returnByValue": True}, session=s,
                        events=events)["result"]["value"]
        if script is not None:
            res = self.send("Runtime.evaluate", {"expression": script, "returnByValue": True}, session=s,
                            events=events)
            if "exceptionDetails" in res:
                events.append({"method": "Runtime.exceptionThrown", "params": res})
            got["script"] = res["result"].get("value")
        self.send("Target.closeTarget", {"targetId": target}, events=events)
        got["errors"] = [_error_text(e) for e in events if _is_error(e)]
        return got


def _is_error(e: dict) -> bool:
    p = e.get("params", {})
    return (e["method"] == "Runtime.exceptionThrown" or (e["method"] == "Runtime.consoleAPICalled"
            and p.get("type") == "error") or (e["method"] == "Log.entryAdded" and p["entry"]["level"] == "error"))


def _error_text(e: dict) -> str:
    p = e["params"]
    if e["method"] == "Log.entryAdded":
        return f"{p['entry'].get('text')} {p['entry'].get('url', '')}"
    if e["method"] == "Runtime.exceptionThrown":
        return p["exceptionDetails"].get("text", "exception")
    return " ".join(str(a.get("value", a.get("description", ""))) for a in p.get("args", []))
