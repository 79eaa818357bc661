"""What a reader sees on the built pages: no raw TeX, no math cut off, no stray reprs or warnings.

Every page of the book (landing page and chapters) is opened in headless Chromium, as in
``test_rendered_book.py`` (same browser fixture, same skip rules without a build), and its DOM is
checked once MathJax has typeset it:

* **TeX left in visible text** -- delimiters (``$``, ``$$``, ``\\(``, ``\\[``) or macros
  (``\\gamma``, ``\\frac``, ...) in any text node outside code, math and scripts, including the
  text inside closed dropdowns (solutions) and exercise lists;
* **display math wider than its column** -- a typeset display equation whose content is wider
  than the box it sits in (it would be cut off or need scrolling);
* **object reprs in outputs** -- ``<Figure size ...>``, ``<Axes: ...>`` or other Matplotlib reprs
  printed by a cell instead of (or next to) its figure;
* **warnings in outputs** -- stderr output or a ``...Warning`` in a cell's output.
"""
from __future__ import annotations

import time

import pytest
from test_rendered_book import HTML, PAGE_TIMEOUT_S, PAGES, browser  # noqa: F401

#: evaluated in the page once MathJax is done; returns lists of offending snippets per class
TEXT_REPORT_JS = r"""
(async () => {
  const sleep = ms => new Promise(r => setTimeout(r, ms));
  const t0 = Date.now();
  if (window.MathJax && MathJax.startup && MathJax.startup.promise) {
    await MathJax.startup.promise;
  }
  const views = document.querySelectorAll('script[type="application/vnd.jupyter.widget-view+json"]');
  while (views.length && document.querySelectorAll('.jupyter-widgets').length === 0
         && Date.now() - t0 < 20000) { await sleep(200); }
  await sleep(views.length ? 1000 : 0);   // let the widget manager fill its output areas
  const visibleText = el => {
    const w = document.createTreeWalker(el, NodeFilter.SHOW_TEXT, {
      acceptNode: n => n.parentElement.closest('script, style') ? NodeFilter.FILTER_REJECT
                                                                : NodeFilter.FILTER_ACCEPT});
    let s = '';
    for (let n = w.nextNode(); n; n = w.nextNode()) s += n.textContent;
    return s;
  };
  const root = document.querySelector('article') || document.body;
  const skip = 'pre, code, script, style, textarea, mjx-container, .highlight, .math';
  const walker = document.createTreeWalker(root, NodeFilter.SHOW_TEXT, {
    acceptNode: n => n.parentElement.closest(skip) ? NodeFilter.FILTER_REJECT
                                                   : NodeFilter.FILTER_ACCEPT});
  const tex = /\\[a-zA-Z]{2,}|\\[()\[\]{}]|\$\$|(^|[^\w$])\$[^$\s][^$]*\$|\^\{|_\{/;
  const rawTex = [];
  for (let n = walker.nextNode(); n; n = walker.nextNode()) {
    const t = n.textContent;
    if (tex.test(t)) rawTex.push(t.trim().slice(0, 120));
  }
  const wide = [];
  for (const el of root.querySelectorAll('mjx-container[display="true"]')) {
    const box = el.getBoundingClientRect();
    const math = el.querySelector('mjx-math');
    if (!math || box.width === 0) continue;   // inside a closed dropdown: not laid out
    const column = el.parentElement.getBoundingClientRect().width;
    const w = Math.max(math.getBoundingClientRect().width, el.scrollWidth);
    if (w > Math.min(box.width, column) + 1) wide.push({width: Math.round(w), column: Math.round(column),
      tex: (el.getAttribute('aria-label') || el.textContent).slice(0, 80)});
  }
  const outputs = Array.from(root.querySelectorAll('.cell_output'));
  const reprs = [], warnings = [];
  for (const out of outputs) {
    const t = visibleText(out);
    const m = t.match(/<(Figure size|Axes:|matplotlib\.[\w.]+ object)[^>]*>/);
    if (m) reprs.push(m[0].slice(0, 80));
    for (const s of out.querySelectorAll('.stderr, .output.stderr')) {
      const st = visibleText(s).trim();
      if (st) warnings.push(st.slice(0, 120));
    }
    const w = t.match(/\b\w*Warning\b:?[^\n]{0,80}/);
    if (w) warnings.push(w[0]);
  }
  return {rawTex, wide, reprs, warnings};
})()
"""


def page_text_report(dt, path):
    """Open ``path`` in a new tab, wait for its load event, return TEXT_REPORT_JS's value."""
    target = dt.send("Target.createTarget", {"url": "about:blank"})["targetId"]
    session = dt.send("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
    try:
        dt.events()
        dt.send("Page.enable", session=session)
        dt.send("Emulation.setDeviceMetricsOverride", {"width": 1280, "height": 900,
                "deviceScaleFactor": 1, "mobile": False}, session=session)
        dt.send("Page.navigate", {"url": path.as_uri()}, session=session)
        deadline, loaded = time.monotonic() + PAGE_TIMEOUT_S, False
        while not loaded and time.monotonic() < deadline:
            time.sleep(0.1)
            loaded = any(e.get("method") == "Page.loadEventFired" and e.get("sessionId") == session
                         for e in dt.events())
        assert loaded, f"{path.name}: load event not fired within {PAGE_TIMEOUT_S} s"
        result = dt.send("Runtime.evaluate", {"expression": TEXT_REPORT_JS, "awaitPromise": True,
                                              "returnByValue": True}, session=session,
                         timeout=PAGE_TIMEOUT_S)
        assert "exceptionDetails" not in result, result
        return result["result"]["value"]
    finally:
        dt.send("Target.closeTarget", {"targetId": target})


@pytest.fixture(scope="module")
def reports(browser):  # noqa: F811
    return {page: page_text_report(browser, HTML / f"{page}.html") for page in PAGES}


@pytest.mark.slow
@pytest.mark.parametrize("page", PAGES)
def test_no_raw_tex_in_visible_text(reports, page):
    assert not reports[page]["rawTex"], f"{page}: TeX left in the text: {reports[page]['rawTex'][:5]}"


@pytest.mark.slow
@pytest.mark.parametrize("page", PAGES)
def test_display_math_fits_its_column(reports, page):
    assert not reports[page]["wide"], f"{page}: display math wider than its column: {reports[page]['wide'][:5]}"


@pytest.mark.slow
@pytest.mark.parametrize("page", PAGES)
def test_no_object_reprs_in_outputs(reports, page):
    assert not reports[page]["reprs"], f"{page}: object reprs in cell outputs: {reports[page]['reprs'][:5]}"


@pytest.mark.slow
@pytest.mark.parametrize("page", PAGES)
def test_no_warnings_in_outputs(reports, page):
    assert not reports[page]["warnings"], f"{page}: warnings in cell outputs: {reports[page]['warnings'][:5]}"
