"""A small headless-Chromium driver over the Chrome DevTools protocol, for the report tests.

    with Browser.launch(tmp_path / "chromium") as browser:
        page = browser.open(path.as_uri())       # PageVisit: console errors, requests, dialogs
        browser.evaluate("document.title")
        browser.screenshot(tmp_path / "page.png")

Debian's ``chromium`` (``make browser`` installs it) runs with a fresh profile in a temporary
folder, no network services of its own, and ``--remote-debugging-port=0``: Chromium picks a
free port and writes it to ``DevToolsActivePort`` in the profile. The client is
``websocket-client`` (the ``test`` extra); one page target, one message loop.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

CANDIDATES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-extensions", "--disable-default-apps", "--hide-scrollbars", "--mute-audio",
         "--no-default-browser-check", "--window-size=1280,900")


class BrowserMissing(RuntimeError):
    pass


class BrowserError(RuntimeError):
    pass


def find_chromium() -> str:
    """The Chromium executable, or BrowserMissing with what to run."""
    explicit = os.environ.get("CHROMIUM")
    for name in ((explicit,) if explicit else ()) + CANDIDATES:
        path = shutil.which(name)
        if path:
            return path
    raise BrowserMissing("headless Chromium is not installed: run `make browser` "
                         "(installs Debian's chromium), or point $CHROMIUM at a Chromium/Chrome binary")


@dataclass
class PageVisit:
    url: str
    console_errors: list[str] = field(default_factory=list)   # console.error, uncaught exceptions, Log errors (CSP, loads)
    requests: list[str] = field(default_factory=list)          # every URL the page asked for
    dialogs: list[str] = field(default_factory=list)           # alert/confirm/prompt messages (dismissed)


class Browser:
    def __init__(self, process: subprocess.Popen, ws, profile: Path, own_profile: bool):
        self._process, self._ws, self._profile, self._own_profile = process, ws, profile, own_profile
        self._next_id = 0
        self._visit: PageVisit | None = None

    # ------------------------------------------------------------------ start and stop

    @classmethod
    def launch(cls, profile: Path | None = None, timeout: float = 60.0) -> "Browser":
        import websocket  # websocket-client

        binary = find_chromium()
        own = profile is None
        profile = Path(tempfile.mkdtemp(prefix="chromium-profile-")) if own else Path(profile)
        profile.mkdir(parents=True, exist_ok=True)
        log = open(profile / "chromium.log", "wb")
        process = subprocess.Popen(
            [binary, *FLAGS, f"--user-data-dir={profile}", "--remote-debugging-port=0", "about:blank"],
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        log.close()
        try:
            port = cls._wait_port(process, profile, timeout)
            target = cls._page_target(port, timeout)
            ws = websocket.create_connection(target, timeout=timeout, suppress_origin=True)
        except BaseException:
            process.kill()
            process.wait()
            raise
        browser = cls(process, ws, profile, own)
        for domain in ("Page", "Runtime", "Log", "Network"):
            browser.call(f"{domain}.enable")
        return browser

    @staticmethod
    def _wait_port(process: subprocess.Popen, profile: Path, timeout: float) -> int:
        marker = profile / "DevToolsActivePort"
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if process.poll() is not None:
                tail = (profile / "chromium.log").read_text(errors="replace")[-2000:]
                raise BrowserError(f"chromium exited with status {process.returncode}:\n{tail}")
            if marker.exists():
                first = marker.read_text().splitlines()[:1]
                if first and first[0].strip().isdigit():
                    return int(first[0])
            time.sleep(0.1)
        raise BrowserError(f"chromium did not open its DevTools port within {timeout:.0f}s")

    @staticmethod
    def _page_target(port: int, timeout: float) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=5) as response:
                targets = json.load(response)
            pages = [t for t in targets if t.get("type") == "page" and t.get("webSocketDebuggerUrl")]
            if pages:
                return pages[0]["webSocketDebuggerUrl"]
            time.sleep(0.1)
        raise BrowserError("chromium has no page target")

    def close(self) -> None:
        try:
            self._ws.close()
        finally:
            self._process.terminate()
            try:
                self._process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()
            if self._own_profile:
                shutil.rmtree(self._profile, ignore_errors=True)

    def __enter__(self) -> "Browser":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # ------------------------------------------------------------------ protocol

    def call(self, method: str, params: dict | None = None, timeout: float = 60.0) -> dict:
        self._next_id += 1
        call_id = self._next_id
        self._ws.send(json.dumps({"id": call_id, "method": method, "params": params or {}}))
        deadline = time.monotonic() + timeout
        while True:
            message = self._receive(deadline, method)
            if message.get("id") == call_id:
                if "error" in message:
                    raise BrowserError(f"{method}: {message['error']}")
                return message.get("result", {})

    def _receive(self, deadline: float, waiting_for: str) -> dict:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise BrowserError(f"timed out waiting for {waiting_for}")
        self._ws.settimeout(remaining)
        message = json.loads(self._ws.recv())
        if "method" in message:
            self._on_event(message["method"], message.get("params", {}))
        return message

    def _wait_event(self, name: str, timeout: float = 60.0) -> dict:
        deadline = time.monotonic() + timeout
        while True:
            message = self._receive(deadline, name)
            if message.get("method") == name:
                return message.get("params", {})

    def _on_event(self, method: str, params: dict) -> None:
        visit = self._visit
        if method == "Page.javascriptDialogOpening":
            if visit is not None:
                visit.dialogs.append(params.get("message", ""))
            self._ws.send(json.dumps({"id": 10**9 + self._next_id, "method": "Page.handleJavaScriptDialog",
                                      "params": {"accept": False}}))
        if visit is None:
            return
        if method == "Runtime.consoleAPICalled" and params.get("type") in ("error", "assert"):
            visit.console_errors.append(" ".join(str(a.get("value", a.get("description", ""))) for a in params.get("args", [])))
        elif method == "Runtime.exceptionThrown":
            details = params.get("exceptionDetails", {})
            visit.console_errors.append(details.get("exception", {}).get("description") or details.get("text", "exception"))
        elif method == "Log.entryAdded" and params.get("entry", {}).get("level") == "error":
            entry = params["entry"]
            visit.console_errors.append(f"{entry.get('source')}: {entry.get('text')} {entry.get('url', '')}".strip())
        elif method == "Network.requestWillBeSent":
            visit.requests.append(params.get("request", {}).get("url", ""))
        elif method == "Network.loadingFailed":
            visit.console_errors.append(f"network: {params.get('errorText')} ({params.get('type')})")

    # ------------------------------------------------------------------ pages

    def open(self, url: str, settle: float = 0.3, timeout: float = 60.0) -> PageVisit:
        """Navigate and wait for the load event (and ``settle`` seconds for late events)."""
        self._visit = PageVisit(url)
        result = self.call("Page.navigate", {"url": url}, timeout)
        if result.get("errorText"):
            raise BrowserError(f"cannot open {url}: {result['errorText']}")
        self._wait_event("Page.loadEventFired", timeout)
        end = time.monotonic() + settle
        while time.monotonic() < end:
            try:
                self._receive(end, "late events")
            except Exception:  # noqa: BLE001 - nothing more arrived in the settle window
                break
        return self._visit

    def evaluate(self, expression: str):
        result = self.call("Runtime.evaluate", {"expression": expression, "returnByValue": True, "awaitPromise": True})
        if "exceptionDetails" in result:
            raise BrowserError(f"{expression!r} raised {result['exceptionDetails'].get('text')}")
        return result.get("result", {}).get("value")

    def screenshot(self, path: Path, full_page: bool = True) -> Path:
        params: dict = {"format": "png"}
        if full_page:
            size = self.call("Page.getLayoutMetrics")["cssContentSize"]
            params.update(captureBeyondViewport=True,
                          clip={"x": 0, "y": 0, "width": size["width"], "height": min(size["height"], 8000), "scale": 1})
        data = self.call("Page.captureScreenshot", params)["data"]
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(base64.b64decode(data))
        return path
