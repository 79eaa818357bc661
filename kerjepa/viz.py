"""Figure and widget helpers shared by the book's chapters.

:func:`book_style` applies the committed ``book.mplstyle`` (mathtext rather than LaTeX, the
Okabe–Ito colour-blind-safe cycle, small figures). Every plotting helper returns ``(fig, ax)``
and never calls ``plt.show()``: in a notebook the figure is displayed because it is the cell's
last value or because the cell ends, and tests can inspect it. Only the callback that
:func:`interact` builds calls ``plt.show()``.

A chapter's interactive figure is a plain function ``plot_x(**params) -> Figure``, driven two
ways:

* :func:`interact` -- sliders that redraw it in a live kernel;
* :func:`image_slider` -- sliders over figures precomputed at a few positions, switched in the
  browser, so they also move in the rendered book, where no kernel runs.
"""
from __future__ import annotations

import base64
import hashlib
import html
import io
from pathlib import Path
from typing import Callable, Sequence

import matplotlib.pyplot as plt

__all__ = ["STYLE_PATH", "book_style", "subplots", "plot_curves",
           "interact", "image_slider", "figure_png", "SLIDER_CLASS"]

#: the CSS class of every :func:`image_slider` (the rendered-page test finds them by it)
SLIDER_CLASS = "kerjepa-image-slider"

#: the committed style sheet that :func:`book_style` loads
STYLE_PATH = Path(__file__).with_name("book.mplstyle")


def book_style() -> None:
    """Apply the book's Matplotlib style globally (idempotent).

    Inside a Jupyter kernel it also selects the inline backend, so a chapter shows its figures
    even when the environment sets ``MPLBACKEND=Agg`` (which the kernel would otherwise obey,
    leaving the built book without figures). Outside a kernel the backend is left alone.

    Example:
        >>> import matplotlib
        >>> book_style()
        >>> matplotlib.rcParams["text.usetex"]
        False
    """
    plt.style.use(str(STYLE_PATH))
    _inline_backend_in_kernel()


def _inline_backend_in_kernel() -> None:
    try:
        from IPython import get_ipython
    except ImportError:  # plain Python without IPython
        return
    shell = get_ipython()
    if shell is not None and getattr(shell, "kernel", None) is not None:
        shell.run_line_magic("matplotlib", "inline")
        plt.style.use(str(STYLE_PATH))  # the magic resets some rcParams; apply the style last


def subplots(ncols: int = 1, nrows: int = 1, width: float | None = None,
             height: float | None = None, **kwargs):
    """``plt.subplots`` with a size that grows with the number of panels.

    Args:
        ncols, nrows: panel grid.
        width, height: figure size in inches; defaults scale the style's size per panel.

    Returns:
        ``(fig, ax)`` exactly as ``matplotlib.pyplot.subplots`` returns them.
    """
    base_w, base_h = plt.rcParams["figure.figsize"]
    if width is None:
        width = base_w if ncols == 1 else min(3.0 * ncols, 9.5)
    if height is None:
        height = base_h if nrows == 1 else 2.6 * nrows
    return plt.subplots(nrows, ncols, figsize=(width, height), **kwargs)


def plot_curves(x, curves: dict, ax=None, xlabel: str = "", ylabel: str = "",
                title: str = "", logy: bool = False, styles: dict | None = None):
    """Plot several named curves against a common ``x``.

    Args:
        x: 1-D array-like.
        curves: ``{label: y}`` with each ``y`` of the same length as ``x``.
        ax: axes to draw on (default: a new figure).
        xlabel, ylabel, title: labels (mathtext allowed).
        logy: logarithmic y axis.
        styles: optional ``{label: dict of Line2D keyword arguments}``.

    Returns:
        ``(fig, ax)``.
    """
    if ax is None:
        fig, ax = subplots()
    else:
        fig = ax.figure
    styles = styles or {}
    for label, y in curves.items():
        ax.plot(_np(x), _np(y), label=label, **styles.get(label, {}))
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if title:
        ax.set_title(title)
    if logy:
        ax.set_yscale("log")
    if len(curves) > 1:
        ax.legend()
    return fig, ax


def interact(plot: Callable, **controls) -> None:
    """Sliders that redraw ``plot(**params)`` inside their own output area, in a live kernel.

    ``ipywidgets.interact`` on a callback that calls ``plot`` and ends with ``plt.show()``,
    returning ``None``: the figure is shown inside the widget's ``Output`` whatever the
    Matplotlib backend is called, and no ``(fig, ax)`` repr is printed under it.

    Args:
        plot: ``plot(**params)`` draws one figure (its return value is ignored).
        **controls: ``ipywidgets.interact`` abbreviations or widgets, one per parameter;
            parameters not named keep ``plot``'s defaults.

    Returns:
        ``None`` (the widget is displayed).
    """
    import ipywidgets

    def redraw(**params):
        plot(**params)
        plt.show()

    redraw.__name__ = redraw.__qualname__ = plot.__name__
    redraw.__doc__ = plot.__doc__
    ipywidgets.interact(redraw, **controls)


def figure_png(fig, dpi: float = 72, colors: int = 64) -> bytes:
    """``fig`` as a palette PNG (``colors`` colours), then closed.

    Line plots need few colours: the median-cut palette keeps them exact and the antialiased
    edges close, at a third to a tenth of the bytes of a true-colour PNG.

    Args:
        fig: a Matplotlib figure (pyplot-managed or a bare ``matplotlib.figure.Figure``).
        dpi: resolution of the bitmap.
        colors: size of the palette, 2 to 256.

    Returns:
        The PNG file's bytes.

    Raises:
        ValueError: if ``colors`` is not in [2, 256].

    Example:
        >>> from matplotlib.figure import Figure
        >>> fig = Figure(figsize=(2, 1))
        >>> _ = fig.add_subplot().plot([0, 1], [1, 0])
        >>> figure_png(fig)[:8] == b"\\x89PNG\\r\\n\\x1a\\n"
        True
    """
    from PIL import Image

    if not 2 <= int(colors) <= 256:
        raise ValueError(f"colors must be in [2, 256], got {colors!r}")
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, facecolor="white")
    plt.close(fig)
    buf.seek(0)
    rgb = Image.open(buf).convert("RGB")
    out = io.BytesIO()
    rgb.quantize(colors=int(colors), method=Image.Quantize.MEDIANCUT,
                 dither=Image.Dither.NONE).save(out, format="png", optimize=True)
    return out.getvalue()


def image_slider(plot: Callable, *, fixed: dict | None = None, caption: str = "",
                 alt: str | None = None, dpi: float = 72, colors: int = 64,
                 fmt: Callable[[object], str] = "{:g}".format, **axes: Sequence):
    """A slider over figures of ``plot`` precomputed at a few positions; it needs no kernel.

    Every position is drawn once, saved as a palette PNG (:func:`figure_png`) and held, as an
    inline ``<img>`` with its alternative text, by an ``ipywidgets.HTML`` in an
    ``ipywidgets.Stack`` (``ipywidgets.Image`` has no alternative text); each parameter's slider
    is a ``SelectionSlider`` whose readout shows the value, linked in the browser to the stack's
    ``selected_index`` with ``jslink`` on its ``index``. With two parameters the stacks are
    nested: the first slider picks a row, the second (``jsdlink``-ed to every row) a column.
    The links run in JavaScript, so the widget works in the static HTML of the book as well
    as in a live notebook. Identical images are stored once.

    Args:
        plot: ``plot(**params) -> Figure`` (a ``(fig, ...)`` tuple is accepted too).
        fixed: keyword arguments passed at every position.
        caption: a line shown above the sliders.
        alt: text alternative of the figure; the parameter values of the position are
            appended. Default: ``plot``'s name.
        dpi, colors: bitmap resolution and palette size (:func:`figure_png`).
        fmt: formats a parameter value for the readout and the alternative text.
        **axes: one or two parameters of ``plot``, each with its values (2 to 32 of them).
            The slider starts at ``plot``'s default value when it is one of them.

    Returns:
        ``ipywidgets.VBox`` of the caption, the sliders and the stack, with attributes
        ``sliders`` (one per axis), ``stack`` (the outer ``Stack``), ``images`` (the ``HTML``
        widget at each position, a list, or a list of rows with two axes; its ``png``
        attribute holds the PNG bytes), ``links`` (the ``jslink`` and ``jsdlink`` widgets) and
        ``nbytes`` (PNG bytes stored, after de-duplication).

    Raises:
        ValueError: for no or more than two axes, or fewer than 2 or more than 32 values.

    Example:
        >>> from matplotlib.figure import Figure
        >>> def plot_line(slope=1.0):
        ...     fig = Figure(figsize=(2, 1))
        ...     fig.add_subplot().plot([0, 1], [0, slope])
        ...     return fig
        >>> w = image_slider(plot_line, slope=[0.5, 1.0, 2.0])
        >>> w.sliders[0].index, w.stack.selected_index, len(w.images)
        (1, 1, 3)
    """
    import inspect

    import ipywidgets

    if not 1 <= len(axes) <= 2:
        raise ValueError(f"image_slider takes one or two parameters to slide, got {list(axes)}")
    fixed = dict(fixed or {})
    names = list(axes)
    values = {name: list(axes[name]) for name in names}
    for name, vals in values.items():
        if not 2 <= len(vals) <= 32:
            raise ValueError(f"{name} needs 2 to 32 values, got {len(vals)}")
    defaults = {k: p.default for k, p in inspect.signature(plot).parameters.items()
                if p.default is not inspect.Parameter.empty}
    alt = plot.__name__ if alt is None else alt
    stored: dict[str, ipywidgets.HTML] = {}

    def image(params: dict) -> ipywidgets.HTML:
        fig = plot(**fixed, **params)
        png = figure_png(fig[0] if isinstance(fig, tuple) else fig, dpi=dpi, colors=colors)
        key = hashlib.sha256(png).hexdigest()
        if key not in stored:
            text = alt + ": " + ", ".join(f"{k} = {fmt(v)}" for k, v in params.items())
            stored[key] = ipywidgets.HTML(_img_tag(png, text))
            stored[key].png = png
        return stored[key]

    def start(name: str) -> int:
        default = fixed.get(name, defaults.get(name))
        return values[name].index(default) if default in values[name] else 0

    sliders = [ipywidgets.SelectionSlider(
        options=[(fmt(v), i) for i, v in enumerate(values[name])], index=start(name),
        description=name, continuous_update=True, readout=True,
        style={"description_width": "initial"}, layout={"width": "26em"}) for name in names]
    links = []
    if len(names) == 1:
        images = [image({names[0]: v}) for v in values[names[0]]]
        stack = ipywidgets.Stack(images, selected_index=sliders[0].index)
    else:
        images = [[image({names[0]: a, names[1]: b}) for b in values[names[1]]]
                  for a in values[names[0]]]
        rows = [ipywidgets.Stack(row, selected_index=sliders[1].index) for row in images]
        stack = ipywidgets.Stack(rows, selected_index=sliders[0].index)
        links = [ipywidgets.jsdlink((sliders[1], "index"), (row, "selected_index")) for row in rows]
    links = [ipywidgets.jslink((sliders[0], "index"), (stack, "selected_index")), *links]
    head = [ipywidgets.HTML(f"<em>{html.escape(caption, quote=False)}</em>")] if caption else []
    box = ipywidgets.VBox([*head, *sliders, stack])
    box.add_class(SLIDER_CLASS)
    box.sliders, box.stack, box.images, box.links = sliders, stack, images, links
    box.nbytes = sum(len(w.png) for w in stored.values())
    return box


def _img_tag(png: bytes, alt: str) -> str:
    """An ``<img>`` holding ``png`` inline, with its alternative text."""
    return (f'<img src="data:image/png;base64,{base64.b64encode(png).decode()}" '
            f'alt="{html.escape(alt)}" style="max-width: 100%; height: auto;">')


def _np(a):
    """A NumPy view of a tensor or array-like (detached, on the CPU)."""
    if hasattr(a, "detach"):
        return a.detach().cpu().numpy()
    return a
