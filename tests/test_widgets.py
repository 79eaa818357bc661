"""Every live widget of the book redraws inside its own output, in a real kernel.

A Jupyter kernel (``jupyter_client``) runs a chapter's cells up to each ``viz.interact`` cell
(the precomputed ``viz.image_slider`` cells are skipped: they do not matter here and are slow),
then the test moves every control the way JupyterLab does, with comm ``update`` messages: each
slider to its minimum, its maximum and one value in between, each dropdown to every option.
After each update the kernel must

* raise no error (no ``error`` message, no traceback on stderr);
* publish exactly one figure, while the interact's ``Output`` widget captures that update
  (its ``msg_id`` state is the update's message id), so the figure lands inside the widget
  (none when the control already held that value: a frontend would not redraw either);
* publish nothing else: no text output, no ``execute_result`` (a returned ``(fig, ax)``), no
  figure after the ``Output`` stopped capturing.

The kernel inherits ``MPLBACKEND=Agg`` from the test session, the case where a figure is flushed
outside the widget unless the callback ends with ``plt.show()``.
"""
from __future__ import annotations

import json
import math
import queue
import re
from pathlib import Path

import pytest

jupyter_client = pytest.importorskip("jupyter_client")

ROOT = Path(__file__).resolve().parents[1]
CHAPTERS = sorted(p for p in (ROOT / "book").glob("[0-9][0-9]_*.ipynb")
                  if "viz.interact(" in p.read_text())
MSG_TIMEOUT_S = 300.0


def code_cells(path: Path) -> list[str]:
    nb = json.loads(path.read_text())
    return ["".join(c["source"]) for c in nb["cells"] if c["cell_type"] == "code"]


class Kernel:
    """A kernel and a client that records every iopub message of each request."""

    def __init__(self):
        self.km, self.kc = jupyter_client.manager.start_new_kernel(
            kernel_name="python3", cwd=str(ROOT / "book"))

    def _collect(self, msg_id: str) -> list[dict]:
        msgs = []
        while True:
            try:
                msg = self.kc.get_iopub_msg(timeout=MSG_TIMEOUT_S)
            except queue.Empty:
                raise TimeoutError(f"no idle status for {msg_id} within {MSG_TIMEOUT_S} s")
            if msg["parent_header"].get("msg_id") != msg_id and msg["msg_type"] != "comm_open":
                continue
            msgs.append(msg)
            if msg["msg_type"] == "status" and msg["content"]["execution_state"] == "idle" \
                    and msg["parent_header"].get("msg_id") == msg_id:
                return msgs

    def execute(self, code: str) -> list[dict]:
        msgs = self._collect(self.kc.execute(code))
        errors = [m["content"] for m in msgs if m["msg_type"] == "error"]
        assert not errors, f"cell raised: {errors[0]['ename']}: {errors[0]['evalue']}\n{code[:300]}"
        return msgs

    def update(self, comm_id: str, state: dict) -> tuple[str, list[dict]]:
        """Send a widget ``update`` the way a frontend does; return its id and the replies."""
        msg = self.kc.session.msg("comm_msg", {"comm_id": comm_id, "data": {
            "method": "update", "state": state, "buffer_paths": []}})
        self.kc.shell_channel.send(msg)
        return msg["header"]["msg_id"], self._collect(msg["header"]["msg_id"])

    def close(self):
        self.kc.stop_channels()
        self.km.shutdown_kernel(now=True)


def widget_models(msgs: list[dict]) -> dict[str, dict]:
    """``{comm_id: state}`` of the widgets opened in ``msgs``, with their later updates applied."""
    models: dict[str, dict] = {}
    for m in msgs:
        content = m["content"]
        if m["msg_type"] == "comm_open" and content.get("target_name") == "jupyter.widget":
            models[content["comm_id"]] = dict(content["data"]["state"])
        elif m["msg_type"] == "comm_msg" and content["comm_id"] in models \
                and content["data"].get("method") == "update":
            models[content["comm_id"]].update(content["data"]["state"])
    return models


def control_values(state: dict) -> list[dict]:
    """The updates to send to one control: its extremes and one interior value."""
    name = state["_model_name"]
    if name in ("DropdownModel", "ToggleButtonsModel", "RadioButtonsModel"):
        return [{"index": i} for i in range(len(state["_options_labels"]))]
    lo, hi = state["min"], state["max"]
    if name == "FloatLogSliderModel":
        mid = round((lo + hi) / 2 / state["step"]) * state["step"]
        return [{"value": state["base"] ** e} for e in (lo, hi, mid)]
    if name == "IntSliderModel":
        return [{"value": v} for v in (lo, hi, lo + (hi - lo) // 2 // state["step"] * state["step"])]
    if name == "FloatSliderModel":
        return [{"value": v} for v in (lo, hi, lo + round((hi - lo) / 2 / state["step"]) * state["step"])]
    raise AssertionError(f"the test does not know how to move a {name}")


def check_update(msgs: list[dict], output_id: str, msg_id: str, what: str, figures: int = 1) -> None:
    """``figures`` figures, published while the Output widget captures ``msg_id``; nothing else."""
    capturing = False
    inside = outside = 0
    for m in msgs:
        kind, content = m["msg_type"], m["content"]
        if kind == "comm_msg" and content["comm_id"] == output_id:
            state = content["data"].get("state", {})
            if "msg_id" in state:
                capturing = state["msg_id"] == msg_id
        elif kind in ("display_data", "update_display_data"):
            assert "image/png" in content["data"], f"{what}: a display without a figure: " \
                f"{content['data'].get('text/plain', '')[:200]}"
            inside += capturing
            outside += not capturing
        elif kind == "execute_result":
            raise AssertionError(f"{what}: a text repr was published: "
                                 f"{content['data'].get('text/plain', '')[:200]}")
        elif kind == "stream":
            raise AssertionError(f"{what}: text on {content['name']}: {content['text'][:300]}")
        elif kind == "error":
            raise AssertionError(f"{what}: {content['ename']}: {content['evalue']}")
    assert outside == 0, f"{what}: {outside} figure(s) published outside the widget's output"
    assert inside == figures, f"{what}: {inside} figures inside the widget's output, expected {figures}"


@pytest.fixture(scope="module")
def kernel():
    k = Kernel()
    yield k
    k.close()


UPDATES: dict[str, int] = {}


@pytest.mark.slow
@pytest.mark.parametrize("chapter", CHAPTERS, ids=lambda p: p.stem)
def test_live_widgets_redraw_inside_their_output(kernel, chapter):
    kernel.execute("%reset -f")
    widgets_seen = 0
    for code in code_cells(chapter):
        if "viz.image_slider(" in code:
            continue
        msgs = kernel.execute(code)
        if "viz.interact(" not in code:
            continue
        models = widget_models(msgs)
        boxes = [cid for cid, s in models.items() if "widget-interact" in s.get("_dom_classes", [])]
        assert len(boxes) == 1, f"{chapter.name}: one interact per widget cell, got {len(boxes)}"
        children = [re.sub("^IPY_MODEL_", "", c) for c in models[boxes[0]]["children"]]
        (output_id,) = [c for c in children if models[c]["_model_name"] == "OutputModel"]
        controls = [c for c in children if c != output_id]
        assert controls, f"{chapter.name}: an interact without controls"
        for cid in controls:
            state = models[cid]
            for value in control_values(state):
                what = f"{chapter.stem} {state.get('description')}={value}"
                # a control set to the value it holds triggers no redraw, as in a frontend
                same = all(state.get(k) == v for k, v in value.items())
                msg_id, replies = kernel.update(cid, value)
                check_update(replies, output_id, msg_id, what, figures=0 if same else 1)
                state.update(value)
                UPDATES[chapter.stem] = UPDATES.get(chapter.stem, 0) + (not same)
        widgets_seen += 1
    assert widgets_seen, f"{chapter.name} has no viz.interact cell"
    print(f"{chapter.stem}: {widgets_seen} widgets, {UPDATES[chapter.stem]} updates checked")


def test_control_values_cover_extremes():
    log = control_values({"_model_name": "FloatLogSliderModel", "min": -2, "max": 1,
                          "step": 0.1, "base": 10})
    assert [v["value"] for v in log[:2]] == [0.01, 10.0]
    assert 0.01 < log[2]["value"] < 10 and math.isclose(math.log10(log[2]["value"]), -0.5)
    assert control_values({"_model_name": "IntSliderModel", "min": 1, "max": 256, "step": 1}) == \
        [{"value": 1}, {"value": 256}, {"value": 128}]
    assert control_values({"_model_name": "DropdownModel", "_options_labels": ["u", "v"]}) == \
        [{"index": 0}, {"index": 1}]


def test_every_live_widget_has_a_static_slider():
    """A live ``viz.interact`` cell is left out of the book and followed by its kernel-free slider."""
    for chapter in CHAPTERS:
        cells = [c for c in json.loads(chapter.read_text())["cells"] if c["cell_type"] == "code"]
        for i, cell in enumerate(cells):
            src = "".join(cell["source"])
            if "viz.interact(" not in src:
                continue
            tags = cell["metadata"].get("tags", [])
            assert {"remove-output", "nbval-ignore-output"} <= set(tags), \
                f"{chapter.name}: tag the live widget cell remove-output and nbval-ignore-output"
            following = "".join(cells[i + 1]["source"]) if i + 1 < len(cells) else ""
            assert "viz.image_slider(" in following, \
                f"{chapter.name}: a live widget needs a viz.image_slider cell right after it"


def _plot_line(slope=1.0, offset=0.0):
    from matplotlib.figure import Figure

    fig = Figure(figsize=(2, 1))
    ax = fig.add_subplot()
    ax.plot([0, 1], [offset, offset + slope])
    ax.set_ylim(-3, 3)
    return fig


def test_image_slider_positions_links_and_storage():
    from kerjepa import viz

    one = viz.image_slider(_plot_line, slope=[-1.0, 1.0, 2.0], alt="a line")
    (slider,) = one.sliders
    assert slider.index == 1 and one.stack.selected_index == 1            # the plot's default
    assert slider._options_labels == ("-1", "1", "2")
    assert "kerjepa-image-slider" in one._dom_classes
    assert [c for c in one.stack.children] == one.images
    assert 'alt="a line: slope = 2"' in one.images[2].value
    pngs = [w.png for w in one.images]
    assert len(set(pngs)) == 3 and one.nbytes == sum(map(len, pngs))
    assert all(p.startswith(b"\x89PNG") for p in pngs)

    two = viz.image_slider(_plot_line, slope=[0.0, 0.0, 1.0], offset=[0.0, 1.0])
    rows = two.stack.children
    assert len(rows) == 3 and all(len(r.children) == 2 for r in rows)
    assert two.images[0][0] is two.images[1][0], "identical figures are stored once"
    assert two.nbytes == sum(len(w.png) for w in {id(w): w for row in two.images for w in row}.values())
    pairs = {(type(link).__name__, link.source[0].model_id, link.source[1],
              link.target[0].model_id, link.target[1]) for link in two.links}
    assert ("Link", two.sliders[0].model_id, "index", two.stack.model_id, "selected_index") in pairs
    for row in rows:
        assert ("DirectionalLink", two.sliders[1].model_id, "index", row.model_id,
                "selected_index") in pairs
    assert len(pairs) == 1 + len(rows)

    with pytest.raises(ValueError, match="one or two"):
        viz.image_slider(_plot_line)
    with pytest.raises(ValueError, match="2 to 32"):
        viz.image_slider(_plot_line, slope=[1.0])
    with pytest.raises(ValueError, match="colors"):
        viz.figure_png(_plot_line(), colors=1)
