"""The errata table of the chapter on choosing a regularizer names tests that exist.

The table is Markdown in ``book/07_choosing.ipynb``; every ``tests/<file>.py::<name>`` it cites
must be a test function in that file, so renaming a test without updating the book fails here.
"""
from __future__ import annotations

import ast
import json
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CHAPTER = ROOT / "book" / "07_choosing.ipynb"
REFERENCE = re.compile(r"`(tests/[\w/]+\.py)::(\w+)`")


def errata_rows() -> list[str]:
    cells = json.loads(CHAPTER.read_text())["cells"]
    text = next("".join(c["source"]) for c in cells
                if c["cell_type"] == "markdown" and "## The paper's errata" in "".join(c["source"]))
    return [line for line in text.splitlines() if re.match(r"\| \d+ \|", line)]


def test_every_row_is_guarded():
    rows = errata_rows()
    assert len(rows) >= 12
    numbers = [int(row.split("|")[1]) for row in rows]
    assert numbers == list(range(1, len(rows) + 1)), numbers
    kinds = ("rejects the printed form", "checks the corrected form", "cannot be told apart",
             "nothing to compute")
    for row in rows:
        guard = row.rstrip(" |").rsplit("|", 1)[-1]
        assert any(k in guard for k in kinds), row


def test_cited_tests_exist():
    cited = [m.groups() for row in errata_rows() for m in REFERENCE.finditer(row)]
    assert len(cited) >= 10
    missing = []
    for path, name in cited:
        tree = ast.parse((ROOT / path).read_text())
        if name not in {n.name for n in ast.walk(tree) if isinstance(n, ast.FunctionDef)}:
            missing.append(f"{path}::{name}")
    assert not missing, f"the errata table cites tests that do not exist: {missing}"
