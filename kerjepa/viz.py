"""Figure helpers shared by the book's chapters.

:func:`book_style` applies the committed ``book.mplstyle`` (mathtext rather than LaTeX, the
Okabe–Ito colour-blind-safe cycle, small figures). Every plotting helper returns ``(fig, ax)``
and never calls ``plt.show()``: in a notebook the figure is displayed because it is the cell's
last value or because the cell ends, and tests can inspect it.
"""
from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt

__all__ = ["STYLE_PATH", "book_style", "subplots", "plot_curves"]

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


def _np(a):
    """A NumPy view of a tensor or array-like (detached, on the CPU)."""
    if hasattr(a, "detach"):
        return a.detach().cpu().numpy()
    return a
