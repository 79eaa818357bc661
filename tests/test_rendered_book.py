"""The built book renders offline: open every page of ``_build/html`` in headless Chromium.

For every chapter page (and the landing page) the test checks that

* MathJax typeset the math: ``mjx-container`` elements exist, every Sphinx ``.math`` element
  holds one, and no raw ``\\(``, ``\\[`` or ``$$`` is left in the text outside code;
* every image on the page loaded (``naturalWidth > 0``), and a chapter shows at least one figure;
* embedded ipywidgets were rendered by the vendored widget manager;
* the console shows no errors and no exception was thrown;
* nothing was requested from the network (only ``file:``, ``data:``, ``blob:`` and ``about:``).

Chromium is driven through the DevTools protocol over ``--remote-debugging-pipe`` (file
descriptors 3 and 4), so no WebSocket client or free port is needed. Build the book first::

    python book/vendor_assets.py && jupyter-book build -W -n --keep-going .

Without ``_build/html`` the test skips, unless ``KERJEPA_REQUIRE_BUILD=1`` (as in CI), when it
fails. The browser is ``$KERJEPA_CHROMIUM`` or the first of ``chromium``/``chromium-browser``/
``google-chrome`` on the ``PATH`` (Debian package ``chromium``).
"""
from __future__ import annotations

import fcntl
import json
import os
import queue
import re
import shutil
import subprocess
import tempfile
import threading
import time
from pathlib import Path

import pytest
from book_toc import toc_files

ROOT = Path(__file__).resolve().parents[1]
HTML = ROOT / "_build" / "html"
REQUIRE_BUILD = os.environ.get("KERJEPA_REQUIRE_BUILD") == "1"
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--no-first-run",
                  "--disable-dev-shm-usage", "--remote-debugging-pipe"]
PAGE_TIMEOUT_S = 60.0


CHAPTERS = [f for f in toc_files() if re.search(r"(^|/)\d\d_[^/]*$", f)]
PAGES = [toc_files()[0]] + CHAPTERS


def _chromium() -> str | None:
    candidates = [os.environ.get("KERJEPA_CHROMIUM"), "chromium", "chromium-browser", "google-chrome"]
    for name in candidates:
        if name and shutil.which(name):
            return shutil.which(name)
    return None


class DevTools:
    """A minimal Chrome DevTools protocol client over ``--remote-debugging-pipe``."""

    def __init__(self, executable: str):
        self.profile = tempfile.mkdtemp(prefix="kerjepa-chromium-")
        cmd_read, self._cmd_write = os.pipe()   # we write commands; Chromium reads fd 3
        self._res_read, res_write = os.pipe()   # Chromium writes fd 4; we read

        def child_fds():
            a = fcntl.fcntl(cmd_read, fcntl.F_DUPFD, 10)
            b = fcntl.fcntl(res_write, fcntl.F_DUPFD, 10)
            os.dup2(a, 3)
            os.dup2(b, 4)

        self.proc = subprocess.Popen(
            [executable, *CHROMIUM_FLAGS, f"--user-data-dir={self.profile}", "about:blank"],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
            preexec_fn=child_fds, close_fds=False)
        os.close(cmd_read)
        os.close(res_write)
        self._next_id = 0
        self._replies: dict[int, dict] = {}
        self._events: queue.Queue = queue.Queue()
        self._cond = threading.Condition()
        self._stderr: list[bytes] = []
        threading.Thread(target=self._read_loop, daemon=True).start()
        threading.Thread(target=lambda: self._stderr.extend(self.proc.stderr), daemon=True).start()

    def _read_loop(self):
        buf = b""
        while True:
            chunk = os.read(self._res_read, 1 << 16)
            if not chunk:
                break
            buf += chunk
            while b"\0" in buf:
                raw, buf = buf.split(b"\0", 1)
                msg = json.loads(raw)
                if "id" in msg:
                    with self._cond:
                        self._replies[msg["id"]] = msg
                        self._cond.notify_all()
                else:
                    self._events.put(msg)

    def send(self, method: str, params: dict | None = None, session: str | None = None,
             timeout: float = 30.0) -> dict:
        self._next_id += 1
        msg = {"id": self._next_id, "method": method, "params": params or {}}
        if session:
            msg["sessionId"] = session
        os.write(self._cmd_write, json.dumps(msg).encode() + b"\0")
        deadline = time.monotonic() + timeout
        with self._cond:
            while self._next_id not in self._replies:
                left = deadline - time.monotonic()
                if left <= 0 or self.proc.poll() is not None:
                    raise TimeoutError(f"no reply to {method}; chromium stderr: "
                                       + b"".join(self._stderr)[-2000:].decode(errors="replace"))
                self._cond.wait(min(left, 0.5))
            reply = self._replies.pop(self._next_id)
        if "error" in reply:
            raise RuntimeError(f"{method}: {reply['error']}")
        return reply.get("result", {})

    def events(self) -> list[dict]:
        out = []
        while True:
            try:
                out.append(self._events.get_nowait())
            except queue.Empty:
                return out

    def close(self):
        try:
            self.send("Browser.close", timeout=5)
        except Exception:
            pass
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        os.close(self._cmd_write)
        shutil.rmtree(self.profile, ignore_errors=True)


#: evaluated in the page once it has loaded; resolves to a JSON-able report
PAGE_REPORT_JS = r"""
(async () => {
  const sleep = ms => new Promise(r => setTimeout(r, ms));
  const t0 = Date.now();
  if (window.MathJax && MathJax.startup && MathJax.startup.promise) {
    await MathJax.startup.promise;
  }
  const views = document.querySelectorAll('script[type="application/vnd.jupyter.widget-view+json"]');
  while (views.length && document.querySelectorAll('.jupyter-widgets').length === 0
         && Date.now() - t0 < 20000) { await sleep(200); }
  const imgs = Array.from(document.images);
  while (imgs.some(i => !i.complete) && Date.now() - t0 < 20000) { await sleep(200); }
  const root = document.querySelector('article') || document.body;
  const walker = document.createTreeWalker(root, NodeFilter.SHOW_TEXT, {
    acceptNode: n => n.parentElement.closest('pre, code, script, style, textarea, mjx-container, .highlight')
      ? NodeFilter.FILTER_REJECT : NodeFilter.FILTER_ACCEPT});
  const raw = [];
  for (let n = walker.nextNode(); n; n = walker.nextNode()) {
    const t = n.textContent;
    if (/\\\(|\\\[|\$\$/.test(t)) raw.push(t.trim().slice(0, 120));
  }
  const mathEls = Array.from(root.querySelectorAll('.math'));
  return {
    mathjax: !!(window.MathJax && MathJax.version),
    mjx: root.querySelectorAll('mjx-container').length,
    mathUntypeset: mathEls.filter(e => !e.querySelector('mjx-container')).map(e => e.textContent.slice(0, 80)),
    raw: raw,
    images: imgs.map(i => ({src: i.src.slice(-80), complete: i.complete, w: i.naturalWidth})),
    figures: root.querySelectorAll('img').length,
    widgetViews: views.length,
    widgetsRendered: document.querySelectorAll('.jupyter-widgets').length,
    title: document.title,
  };
})()
"""


@pytest.fixture(scope="module")
def browser():
    if not (HTML / "index.html").is_file():
        msg = (f"{HTML} has no built book; run `python book/vendor_assets.py && "
               "jupyter-book build -W -n --keep-going .` first")
        if REQUIRE_BUILD:
            pytest.fail(msg + " (KERJEPA_REQUIRE_BUILD=1)")
        pytest.skip(msg)
    exe = _chromium()
    if exe is None:
        msg = "no Chromium found (apt-get install chromium, or set KERJEPA_CHROMIUM)"
        if REQUIRE_BUILD:
            pytest.fail(msg)
        pytest.skip(msg)
    dt = DevTools(exe)
    yield dt
    dt.close()


def open_page(dt: DevTools, path: Path) -> tuple[str, str, list[dict]]:
    """Open ``path`` in a new tab and wait for its load event.

    Returns:
        ``(target_id, session_id, events)``: the tab, its DevTools session (with the Page,
        Runtime, Log and Network domains enabled) and the events received so far.
    """
    target = dt.send("Target.createTarget", {"url": "about:blank"})["targetId"]
    session = dt.send("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
    dt.events()
    for domain in ("Page", "Runtime", "Log", "Network"):
        dt.send(f"{domain}.enable", session=session)
    dt.send("Emulation.setDeviceMetricsOverride", {"width": 1280, "height": 900,
            "deviceScaleFactor": 1, "mobile": False}, session=session)
    dt.send("Page.navigate", {"url": path.as_uri()}, session=session)
    events: list[dict] = []
    deadline = time.monotonic() + PAGE_TIMEOUT_S
    loaded = False
    while not loaded and time.monotonic() < deadline:
        time.sleep(0.1)
        new = dt.events()
        events += new
        loaded = any(e.get("method") == "Page.loadEventFired" and e.get("sessionId") == session
                     for e in new)
    assert loaded, f"{path.name}: load event not fired within {PAGE_TIMEOUT_S} s"
    return target, session, events


def evaluate(dt: DevTools, session: str, expression: str):
    """The JSON value of ``expression`` evaluated in the page (promises are awaited)."""
    result = dt.send("Runtime.evaluate", {"expression": expression, "awaitPromise": True,
                                          "returnByValue": True}, session=session,
                     timeout=PAGE_TIMEOUT_S)
    assert "exceptionDetails" not in result, result
    return result["result"].get("value")


def close_page(dt: DevTools, target: str) -> None:
    dt.send("Target.closeTarget", {"targetId": target})


def page_errors(events: list[dict], session: str) -> tuple[list[str], list[str]]:
    """Console errors and exceptions, and URLs requested off the machine, in ``events``."""
    errors: list[str] = []
    remote: list[str] = []
    for e in events:
        if e.get("sessionId") != session:
            continue
        m, p = e.get("method"), e.get("params", {})
        if m == "Runtime.consoleAPICalled" and p.get("type") in ("error", "assert"):
            errors.append("console: " + " ".join(str(a.get("value", a.get("description", "")))
                                                 for a in p.get("args", [])))
        elif m == "Runtime.exceptionThrown":
            d = p.get("exceptionDetails", {})
            errors.append("exception: " + d.get("exception", {}).get("description", d.get("text", "")))
        elif m == "Log.entryAdded" and p.get("entry", {}).get("level") == "error":
            errors.append(f"log: {p['entry'].get('text')} {p['entry'].get('url', '')}")
        elif m == "Network.requestWillBeSent":
            url = p.get("request", {}).get("url", "")
            if not url.startswith(("file:", "data:", "blob:", "about:")):
                remote.append(url)
        elif m == "Network.loadingFailed":
            errors.append(f"network: {p.get('errorText')} ({p.get('type')})")
    return errors, remote


def render(dt: DevTools, path: Path) -> tuple[dict, list[str], list[str]]:
    """Load ``path``; return (page report, console errors, network URLs that left the machine)."""
    target, session, events = open_page(dt, path)
    report = evaluate(dt, session, PAGE_REPORT_JS)
    time.sleep(0.3)
    events += dt.events()
    errors, remote = page_errors(events, session)
    close_page(dt, target)
    return report, errors, remote


def test_toc_lists_chapters():
    assert CHAPTERS, "_toc.yml lists no book/NN_*.ipynb chapter"


@pytest.mark.slow
@pytest.mark.parametrize("page", PAGES)
def test_page_renders_offline(browser, page):
    html = HTML / f"{page}.html"
    assert html.is_file(), f"{html} was not built; is {page} in _toc.yml and the build complete?"
    report, errors, remote = render(browser, html)
    assert not remote, f"{page}: requested over the network: {remote}"
    assert not errors, f"{page}: console errors: {errors}"
    assert report["mathjax"], f"{page}: MathJax did not load (mathjax_path / vendored assets)"
    assert report["mjx"] > 0, f"{page}: no typeset math (no mjx-container elements)"
    assert not report["mathUntypeset"], f"{page}: math left untypeset: {report['mathUntypeset'][:5]}"
    assert not report["raw"], f"{page}: raw TeX delimiters in the text: {report['raw'][:5]}"
    broken = [i for i in report["images"] if not i["complete"] or i["w"] == 0]
    assert not broken, f"{page}: images that did not load: {broken}"
    if page in CHAPTERS:
        assert report["figures"], f"{page}: a chapter without a single figure (is the kernel's " \
            "Matplotlib backend non-inline? chapters run `%matplotlib inline` in their setup cell)"
    if report["widgetViews"]:
        assert report["widgetsRendered"] > 0, f"{page}: ipywidgets were embedded but not rendered"
