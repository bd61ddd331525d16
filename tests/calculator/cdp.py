"""A small Chrome DevTools Protocol client over ``--remote-debugging-pipe`` (no websocket, no
port): headless Chromium reads commands on its fd 3 and writes replies and events on fd 4, each
message JSON terminated by a NUL byte."""

from __future__ import annotations

import base64
import contextlib
import fcntl
import json
import os
import select
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

#: flags for a root user in a container; no background traffic of the browser's own
FLAGS = (
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--disable-default-apps", "--disable-extensions", "--hide-scrollbars",
    "--remote-debugging-pipe",
)


class CDPError(RuntimeError):
    """The browser answered a command with an error, died, or did not answer in time."""


def find_chromium() -> str | None:
    """Path of Debian's ``chromium`` (or another Chromium/Chrome on PATH), or None."""
    for name in ("chromium", "chromium-browser", "google-chrome", "chrome"):
        path = shutil.which(name)
        if path:
            return path
    return None


class Browser:
    """One headless Chromium with one page (tab) attached.

    ``events``: every event received so far (``{"method", "params"}``), e.g. console calls,
    exceptions, network requests; :meth:`clear_events` empties it.
    """

    def __init__(self, executable: str, width: int = 1400, height: int = 1000) -> None:
        self._profile = tempfile.mkdtemp(prefix="myocomp-chromium-")
        to_child_r, self._to_child = os.pipe()
        self._from_child, from_child_w = os.pipe()
        # the child's ends above 10; bash (dash knows only fds 0-9) moves them onto 3 and 4 and execs the browser
        a = fcntl.fcntl(to_child_r, fcntl.F_DUPFD, 10)
        b = fcntl.fcntl(from_child_w, fcntl.F_DUPFD, 10)
        os.close(to_child_r)
        os.close(from_child_w)
        wire = f'exec "$@" 3<&{a} 4>&{b} {a}<&- {b}>&-'
        self.proc = subprocess.Popen(
            [shutil.which("bash") or "/bin/bash", "-c", wire, "bash", executable, *FLAGS,
             f"--user-data-dir={self._profile}", f"--window-size={width},{height}",
             "about:blank"],
            pass_fds=(a, b), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL)
        os.close(a)
        os.close(b)
        self._buf = b""
        self._id = 0
        self.width, self.height = width, height
        self.events: list[dict[str, Any]] = []
        self.session: str | None = None
        target = self.call("Target.createTarget", {"url": "about:blank"}, session=False)
        self.session = self.call("Target.attachToTarget", {"targetId": target["targetId"],
                                                           "flatten": True},
                                 session=False)["sessionId"]
        for domain in ("Page", "Runtime", "Network", "Log"):
            self.call(f"{domain}.enable")
        self.call("Emulation.setDeviceMetricsOverride",
                  {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": False})

    # protocol --------------------------------------------------------------------------------
    def _read_message(self, deadline: float) -> dict[str, Any]:
        while b"\0" not in self._buf:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([self._from_child], [], [], left)[0]:
                raise CDPError("no answer from the browser in time")
            chunk = os.read(self._from_child, 1 << 16)
            if not chunk:
                raise CDPError("the browser closed the pipe (crashed?)")
            self._buf += chunk
        raw, self._buf = self._buf.split(b"\0", 1)
        return json.loads(raw)

    def call(self, method: str, params: dict[str, Any] | None = None, *,
             session: bool = True, timeout: float = 60.0) -> dict[str, Any]:
        """Send a command and return its result; events that arrive meanwhile are kept."""
        self._id += 1
        msg: dict[str, Any] = {"id": self._id, "method": method, "params": params or {}}
        if session and self.session:
            msg["sessionId"] = self.session
        os.write(self._to_child, json.dumps(msg).encode() + b"\0")
        deadline = time.monotonic() + timeout
        while True:
            reply = self._read_message(deadline)
            if reply.get("id") == self._id:
                if "error" in reply:
                    raise CDPError(f"{method}: {reply['error']}")
                return reply.get("result", {})
            if "method" in reply:
                self.events.append(reply)

    def wait_for_event(self, method: str, timeout: float = 60.0) -> dict[str, Any]:
        """The first event ``method`` not yet seen (waiting for it)."""
        deadline = time.monotonic() + timeout
        for ev in self.events:
            if ev["method"] == method and not ev.get("_seen"):
                ev["_seen"] = True
                return ev
        while True:
            ev = self._read_message(deadline)
            if "method" in ev:
                self.events.append(ev)
                if ev["method"] == method:
                    ev["_seen"] = True
                    return ev

    def clear_events(self) -> None:
        self.events.clear()

    # page ------------------------------------------------------------------------------------
    def goto(self, url: str, timeout: float = 60.0) -> None:
        """Navigate and wait for the load event."""
        self.clear_events()
        result = self.call("Page.navigate", {"url": url})
        if result.get("errorText"):
            raise CDPError(f"navigation to {url} failed: {result['errorText']}")
        self.wait_for_event("Page.loadEventFired", timeout)

    def evaluate(self, expression: str) -> Any:
        """Value of a JavaScript expression in the page (JSON-serialisable values)."""
        result = self.call("Runtime.evaluate", {"expression": expression, "returnByValue": True,
                                                "awaitPromise": True})
        if "exceptionDetails" in result:
            raise CDPError(f"{expression!r} threw: {result['exceptionDetails']}")
        return result["result"].get("value")

    def screenshot(self, path: Path, width: int = 1400) -> Path:
        """Full-page PNG at ``width`` CSS px."""
        height = int(self.evaluate("Math.ceil(document.documentElement.scrollHeight)"))
        self.call("Emulation.setDeviceMetricsOverride",
                  {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": False})
        shot = self.call("Page.captureScreenshot", {"format": "png", "captureBeyondViewport": True})
        path.write_bytes(base64.b64decode(shot["data"]))
        self.call("Emulation.setDeviceMetricsOverride",
                  {"width": self.width, "height": self.height, "deviceScaleFactor": 1,
                   "mobile": False})
        return path

    def console_errors(self) -> list[str]:
        """Console errors, uncaught exceptions and browser log errors since the last goto."""
        out = []
        for ev in self.events:
            p = ev.get("params", {})
            if ev["method"] == "Runtime.exceptionThrown":
                out.append(json.dumps(p.get("exceptionDetails", {}))[:500])
            elif ev["method"] == "Runtime.consoleAPICalled" and p.get("type") in ("error", "assert"):
                out.append(json.dumps(p.get("args", []))[:500])
            elif ev["method"] == "Log.entryAdded" and p.get("entry", {}).get("level") == "error":
                out.append(p["entry"].get("text", "")[:500])
        return out

    def requests(self) -> list[str]:
        """URLs of every network request the page made since the last goto."""
        return [ev["params"]["request"]["url"] for ev in self.events
                if ev["method"] == "Network.requestWillBeSent"]

    def close(self) -> None:
        with contextlib.suppress(CDPError, OSError):
            self.call("Browser.close", session=False, timeout=10)
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        for fd in (self._to_child, self._from_child):
            with contextlib.suppress(OSError):
                os.close(fd)
        shutil.rmtree(self._profile, ignore_errors=True)
