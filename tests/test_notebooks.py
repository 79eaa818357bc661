"""Static checks on the book's chapters (fast; no execution).

Every ``book/NN_*.ipynb`` chapter must be valid nbformat JSON, committed **without outputs or
execution counts**, and follow the house chapter skeleton: a ``(label)=`` target before
the title, "What you'll learn", Summary, Exercises with solutions in dropdowns. Widgets sit
under a static figure and their cells are tagged ``nbval-ignore-output``. Executing the chapters
is the job of nbval and of the book build.
"""
from __future__ import annotations

import ast
import json
import re
from pathlib import Path

import nbformat
import pytest
from book_toc import toc_files

ROOT = Path(__file__).resolve().parents[1]
BOOK = ROOT / "book"
CHAPTERS = sorted(BOOK.glob("[0-9][0-9]_*.ipynb"))
IDS = [p.name for p in CHAPTERS]
LABEL = re.compile(r"^\((ch-[a-z0-9-]+)\)=\s*\n#\s+\S", re.M)


def _load(path: Path):
    return nbformat.read(path, as_version=4)


def _source(cell) -> str:
    return cell.source if isinstance(cell.source, str) else "".join(cell.source)


def _markdown(nb) -> str:
    return "\n".join(_source(c) for c in nb.cells if c.cell_type == "markdown")


def test_there_are_chapters():
    assert CHAPTERS, "no book/NN_*.ipynb chapters found"


@pytest.mark.parametrize("path", CHAPTERS, ids=IDS)
def test_valid_json_and_nbformat(path):
    json.loads(path.read_text(encoding="utf-8"))
    nbformat.validate(_load(path))


@pytest.mark.parametrize("path", CHAPTERS, ids=IDS)
def test_committed_without_outputs(path):
    nb = _load(path)
    dirty = [i for i, c in enumerate(nb.cells)
             if c.cell_type == "code" and (c.get("outputs") or c.get("execution_count") is not None)]
    assert not dirty, (f"{path.name}: code cells {dirty} have outputs or execution counts; strip them "
                       "(e.g. `jupyter nbconvert --clear-output --inplace`)")


@pytest.mark.parametrize("path", CHAPTERS, ids=IDS)
def test_chapter_skeleton(path):
    nb = _load(path)
    first = nb.cells[0]
    assert first.cell_type == "markdown" and LABEL.match(_source(first)), (
        f"{path.name}: the first cell must be `(ch-label)=` followed by a `# Title` line")
    text = _markdown(nb)
    assert re.search(r"What you['’]ll learn", text), f"{path.name}: no \"What you'll learn\" section"
    assert re.search(r"^##\s+Summary\s*$", text, re.M), f"{path.name}: no `## Summary` section"
    exercises = re.search(r"^##\s+Exercises\s*$", text, re.M)
    assert exercises, f"{path.name}: no `## Exercises` section"
    assert re.search(r"[`:]{3}\{dropdown\}", text[exercises.start():]), (
        f"{path.name}: the Exercises need solutions in {{dropdown}} blocks")


def test_labels_unique_and_in_toc():
    labels = {}
    for path in CHAPTERS:
        label = LABEL.match(_source(_load(path).cells[0]))
        if label:
            assert label.group(1) not in labels, f"label {label.group(1)} used twice"
            labels[label.group(1)] = path.name
    toc = set(toc_files())
    missing = [p.name for p in CHAPTERS if f"book/{p.stem}" not in toc]
    assert not missing, f"chapters not listed in _toc.yml: {missing}"


def test_toc_entries_exist():
    for entry in toc_files():
        candidates = [ROOT / f"{entry}{ext}" for ext in (".ipynb", ".md")]
        assert any(c.is_file() for c in candidates), f"_toc.yml lists {entry}, which does not exist"


@pytest.mark.parametrize("path", CHAPTERS, ids=IDS)
def test_code_conventions(path):
    nb = _load(path)
    assert nb.metadata.get("kernelspec", {}).get("name") == "python3", f"{path.name}: kernelspec must be python3"
    code = [(i, _source(c)) for i, c in enumerate(nb.cells) if c.cell_type == "code"]
    for i, src in code:
        assert not re.search(r"^\s*[!%]\s*pip\b", src, re.M), f"{path.name} cell {i}: no `!pip install`"
        assert "filterwarnings" not in src and "simplefilter" not in src, (
            f"{path.name} cell {i}: no global warning filters")
        assert "plt.show()" not in src, f"{path.name} cell {i}: plot helpers return figures; no plt.show()"
    uses_plots = any("viz." in src or "plt." in src or "matplotlib" in src for _, src in code)
    if uses_plots:
        assert any("viz.book_style()" in src for _, src in code), (
            f"{path.name}: call `viz.book_style()` in the setup cell (the book's figure style and "
            "the inline backend, so figures show even when MPLBACKEND=Agg)")


@pytest.mark.parametrize("path", CHAPTERS, ids=IDS)
def test_widgets_have_static_figures_and_ignored_output(path):
    nb = _load(path)
    seen_figure = False
    for i, cell in enumerate(nb.cells):
        if cell.cell_type != "code":
            continue
        src = _source(cell)
        if "interact(" in src:
            assert "nbval-ignore-output" in cell.metadata.get("tags", []), (
                f"{path.name} cell {i}: tag widget cells `nbval-ignore-output`")
            assert seen_figure, f"{path.name} cell {i}: a widget needs a static captioned figure above it"
        if cell.metadata.get("mystnb", {}).get("figure"):
            seen_figure = True


#: Matplotlib methods that return None, so ending a figure cell with them displays nothing extra
NONE_RETURNING = {"set_xscale", "set_yscale", "grid", "tight_layout", "set_aspect", "set_axis_off"}


def _last_statement_is_bare_expression(src: str) -> bool:
    lines = [ln for ln in src.splitlines() if not ln.lstrip().startswith(("%", "!"))]
    code = "\n".join(lines).rstrip()
    if not code or code.endswith(";"):
        return False
    try:
        body = ast.parse(code).body
    except SyntaxError:
        return False
    if not body or not isinstance(body[-1], ast.Expr):
        return False
    value = body[-1].value
    return not (isinstance(value, ast.Call) and isinstance(value.func, ast.Attribute)
                and value.func.attr in NONE_RETURNING)


@pytest.mark.parametrize("path", CHAPTERS, ids=IDS)
def test_figure_cells_display_only_the_figure(path):
    """A captioned cell must not also display a value: myst-nb would caption (and label) each
    output, and the build fails on the duplicate figure label."""
    for i, cell in enumerate(_load(path).cells):
        if cell.cell_type == "code" and cell.metadata.get("mystnb", {}).get("figure"):
            assert not _last_statement_is_bare_expression(_source(cell)), (
                f"{path.name} cell {i}: a figure cell ends with a bare expression, whose value is "
                "displayed next to the figure; end it with an assignment such as `fig = ...`")


def test_figure_names_unique_and_captioned():
    names = {}
    for path in CHAPTERS:
        for i, cell in enumerate(_load(path).cells):
            fig = cell.metadata.get("mystnb", {}).get("figure")
            if not fig:
                continue
            assert fig.get("caption") and fig.get("name"), f"{path.name} cell {i}: figure needs caption and name"
            assert fig["name"] not in names, f"figure name {fig['name']} used in {names.get(fig['name'])} and {path.name}"
            names[fig["name"]] = path.name
