"""The book's precomputed sliders move without a kernel: drive each one in headless Chromium.

Every ``kerjepa.viz.image_slider`` on a built chapter page is a box of ``SelectionSlider``s and
a ``Stack`` of figures, linked in the browser. For each of them the test reads the stored figure
of every position from the page's embedded widget state, then presses the arrow keys on each
slider's handle (real key events through the DevTools protocol, as a reader would) and checks,
after every key, that the visible figure is the stored one for the new position, that it has
its alternative text, and that the readout shows the parameter's value. With two parameters the
first slider is driven with the second at its start, then the second with the first at its end.

Uses the browser and page helpers of ``test_rendered_book`` (build the book first; without a
build the test skips, unless ``KERJEPA_REQUIRE_BUILD=1``).
"""
from __future__ import annotations

import html
import json
import re
import time

import pytest
from test_rendered_book import (HTML, PAGES, browser, close_page, evaluate,  # noqa: F401
                                open_page, page_errors)

from kerjepa.viz import SLIDER_CLASS

STATE_RE = re.compile(r'<script type="application/vnd\.jupyter\.widget-state\+json">(.*?)</script>',
                      re.S)
KEY_TIMEOUT_S = 5.0


def widget_state(page_html: str) -> dict:
    """``{model_id: {"model_name": ..., "state": ...}}`` embedded in a built page."""
    state: dict = {}
    for block in STATE_RE.findall(page_html):
        state.update(json.loads(html.unescape(block) if "&quot;" in block else block)["state"])
    return state


def _ref(value: str) -> str:
    return value.removeprefix("IPY_MODEL_")


def image_sliders(state: dict) -> dict[str, dict]:
    """Each slider box of ``state``: its sliders' labels and start, and the figure sources.

    Returns:
        ``{box_model_id: {"labels": [[str]], "start": [int], "src": nested list of data URLs}}``
        with ``src[i]`` (one slider) or ``src[i][j]`` (two sliders) the figure at that position.
    """
    def src(model_id: str):
        model = state[model_id]
        if model["model_name"] == "StackModel":
            return [src(_ref(c)) for c in model["state"]["children"]]
        match = re.search(r'src="(data:image/png;base64,[^"]+)"', model["state"]["value"])
        assert match, f"stack child {model_id} holds no inline PNG"
        return match.group(1)

    boxes = {}
    for model_id, model in state.items():
        if SLIDER_CLASS not in model["state"].get("_dom_classes", []):
            continue
        children = [state[_ref(c)] for c in model["state"]["children"]]
        sliders = [c for c in children if c["model_name"] == "SelectionSliderModel"]
        (stack_id,) = [_ref(c) for c in model["state"]["children"]
                       if state[_ref(c)]["model_name"] == "StackModel"]
        boxes[model_id] = {"labels": [s["state"]["_options_labels"] for s in sliders],
                           "start": [s["state"]["index"] for s in sliders],
                           "src": src(stack_id)}
    return boxes


def pages_with_sliders() -> list[str]:
    if not (HTML / "index.html").is_file():
        return PAGES  # the browser fixture skips (or fails under KERJEPA_REQUIRE_BUILD=1)
    return [p for p in PAGES
            if (HTML / f"{p}.html").is_file() and SLIDER_CLASS in (HTML / f"{p}.html").read_text()]


#: finds the rendered slider boxes and keeps them as window.__sliders[model_id]
FIND_JS = """
(async () => {
  const t0 = Date.now();
  const sleep = ms => new Promise(r => setTimeout(r, ms));
  const views = () => Array.from(document.querySelectorAll(
      'script[type="application/vnd.jupyter.widget-view+json"]'));
  window.__sliders = {};
  while (Date.now() - t0 < 30000) {
    for (const s of views()) {
      const area = s.previousElementSibling;
      const box = area && area.querySelector('.%(cls)s');
      if (box) window.__sliders[JSON.parse(s.textContent).model_id] = box;
    }
    if (Object.keys(window.__sliders).length >= %(n)d) break;
    await sleep(200);
  }
  return Object.keys(window.__sliders);
})()
"""

#: the visible figure and the readouts of one slider box
SHOWN_JS = """
(() => {
  const box = window.__sliders[%(id)s];
  const imgs = Array.from(box.lastElementChild.querySelectorAll('img'))
      .filter(i => i.offsetWidth > 0 && i.offsetHeight > 0);
  return {src: imgs.map(i => i.getAttribute('src')), alt: imgs.map(i => i.alt),
          complete: imgs.map(i => i.complete && i.naturalWidth > 0),
          readouts: Array.from(box.querySelectorAll('.widget-readout')).map(r => r.textContent)};
})()
"""


def press(dt, session: str, box_id: str, slider: int, key: str) -> None:
    """Focus the handle of ``slider`` in the box and press ``key`` (ArrowLeft/ArrowRight)."""
    focused = evaluate(dt, session, f"""(() => {{
        const h = window.__sliders[{json.dumps(box_id)}].querySelectorAll('.noUi-handle')[{slider}];
        h.scrollIntoView({{block: 'center'}}); h.focus(); return document.activeElement === h;
    }})()""")
    assert focused, f"could not focus the handle of slider {slider} in {box_id}"
    code = {"ArrowLeft": 37, "ArrowRight": 39}[key]
    for kind in ("keyDown", "keyUp"):
        dt.send("Input.dispatchKeyEvent", {"type": kind, "key": key, "code": key,
                                           "windowsVirtualKeyCode": code}, session=session)


def wait_shown(dt, session: str, box_id: str, want_src: str, want_readouts: list[str]) -> dict:
    deadline = time.monotonic() + KEY_TIMEOUT_S
    while True:
        shown = evaluate(dt, session, SHOWN_JS % {"id": json.dumps(box_id)})
        if (shown["src"] == [want_src] and shown["readouts"] == want_readouts
                and all(shown["complete"])) or time.monotonic() > deadline:
            return shown
        time.sleep(0.05)


def position_src(src, index: list[int]) -> str:
    for i in index:
        src = src[i]
    return src


@pytest.mark.slow
@pytest.mark.parametrize("page", pages_with_sliders())
def test_image_sliders_move_offline(browser, page):  # noqa: F811 (the imported fixture)
    path = HTML / f"{page}.html"
    boxes = image_sliders(widget_state(path.read_text()))
    assert boxes, f"{page}: no image slider in the embedded widget state"
    target, session, events = open_page(browser, path)
    try:
        found = evaluate(browser, session, FIND_JS % {"cls": SLIDER_CLASS, "n": len(boxes)})
        assert sorted(found) == sorted(boxes), f"{page}: rendered sliders {found}, stored {list(boxes)}"
        for box_id, box in boxes.items():
            index = list(box["start"])
            labels = box["labels"]
            sources = set()

            def check(what: str):
                want = position_src(box["src"], index)
                readouts = [labels[k][i] for k, i in enumerate(index)]
                shown = wait_shown(browser, session, box_id, want, readouts)
                assert shown["src"] == [want], \
                    f"{page} {box_id} {what}: figure at {index} is not the stored one"
                assert shown["readouts"] == readouts, f"{page} {box_id} {what}: {shown['readouts']}"
                assert all(shown["complete"]), f"{page} {box_id} {what}: figure did not load"
                assert shown["alt"][0].strip(), f"{page} {box_id} {what}: no alternative text"
                assert all(v in shown["alt"][0] for v in readouts), \
                    f"{page} {box_id} {what}: alt text {shown['alt'][0]!r} lacks {readouts}"
                sources.add(want)

            check("at start")
            order = range(len(labels)) if len(labels) == 1 else (0, 1)
            for k in order:
                while index[k] > 0:                 # to the first position ...
                    press(browser, session, box_id, k, "ArrowLeft")
                    index[k] -= 1
                    check(f"slider {k} left")
                while index[k] < len(labels[k]) - 1:   # ... then through every position
                    press(browser, session, box_id, k, "ArrowRight")
                    index[k] += 1
                    check(f"slider {k} right")
            assert len(sources) > 1, f"{page} {box_id}: the figure never changed"
        time.sleep(0.3)
        errors, remote = page_errors(events + browser.events(), session)
        assert not errors, f"{page}: console errors while sliding: {errors}"
        assert not remote, f"{page}: requested over the network: {remote}"
    finally:
        close_page(browser, target)
