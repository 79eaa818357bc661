"""Copy the book's JavaScript dependencies into ``book/_vendor/static`` for an offline build.

The rendered pages must work without a network, so nothing is loaded from a CDN:

* MathJax 3 (``es5`` build) comes from the PyPI package ``django-static-mathjax``
  (import name ``mathjax``), already installed with the Python requirements.
* The ipywidgets HTML manager (``@jupyter-widgets/html-manager`` 1.0.x, the version that renders
  ipywidgets 8 state) and ``requirejs`` come from npm. They are installed into the gitignored
  ``book/_vendor/npm`` unless already there; this is the only step that needs the npm registry.

``_config.yml`` points ``mathjax_path`` and ``nb_ipywidgets_js`` at the copies, which Sphinx
serves from ``_build/html/_static/vendor/``. Run from anywhere, before ``jupyter-book build``::

    python book/vendor_assets.py          # add --check to only verify the files are in place
"""
from __future__ import annotations

import argparse
import importlib.util
import shutil
import subprocess
import sys
from pathlib import Path

BOOK = Path(__file__).resolve().parent
VENDOR = BOOK / "_vendor"
STATIC = VENDOR / "static" / "vendor"
NPM_PREFIX = VENDOR / "npm"

HTML_MANAGER = "@jupyter-widgets/html-manager@~1.0.15"
REQUIREJS = "requirejs@2.3.8"

#: files the pages load; ``--check`` verifies them
REQUIRED = (
    STATIC / "mathjax" / "tex-chtml.js",
    STATIC / "mathjax" / "output" / "chtml" / "fonts" / "woff-v2",
    STATIC / "widgets" / "require.js",
    STATIC / "widgets" / "embed-amd.js",
    STATIC / "widgets" / "libembed-amd.js",
)


def mathjax_source() -> Path:
    """The ``es5`` folder of MathJax 3 inside the ``django-static-mathjax`` package."""
    spec = importlib.util.find_spec("mathjax")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("MathJax not found: pip install django-static-mathjax (see requirements.txt)")
    es5 = Path(list(spec.submodule_search_locations)[0]) / "static" / "mathjax" / "es5"
    if not (es5 / "tex-chtml.js").is_file():
        raise SystemExit(f"{es5} has no tex-chtml.js; is django-static-mathjax a MathJax 3 release?")
    return es5


def npm_install() -> Path:
    """Install the widget manager and require.js into ``book/_vendor/npm`` (once)."""
    modules = NPM_PREFIX / "node_modules"
    if not (modules / "@jupyter-widgets" / "html-manager" / "dist" / "embed-amd.js").is_file() \
            or not (modules / "requirejs" / "require.js").is_file():
        npm = shutil.which("npm")
        if npm is None:
            raise SystemExit("npm not found: install Node.js/npm, or copy an existing book/_vendor/npm")
        NPM_PREFIX.mkdir(parents=True, exist_ok=True)
        subprocess.run([npm, "install", "--prefix", str(NPM_PREFIX), "--no-save", "--no-audit",
                        "--no-fund", "--no-package-lock", "--ignore-scripts",
                        HTML_MANAGER, REQUIREJS], check=True)
    return modules


def copy_tree(src: Path, dst: Path) -> None:
    if dst.exists():
        shutil.rmtree(dst)
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns("*.map"))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="only verify the vendored files exist")
    args = parser.parse_args(argv)
    if not args.check:
        copy_tree(mathjax_source(), STATIC / "mathjax")
        modules = npm_install()
        copy_tree(modules / "@jupyter-widgets" / "html-manager" / "dist", STATIC / "widgets")
        shutil.copy2(modules / "requirejs" / "require.js", STATIC / "widgets" / "require.js")
    missing = [str(p.relative_to(BOOK.parent)) for p in REQUIRED if not p.exists()]
    if missing:
        print("missing vendored assets: " + ", ".join(missing), file=sys.stderr)
        return 1
    print(f"offline assets ready in {STATIC.relative_to(BOOK.parent)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
