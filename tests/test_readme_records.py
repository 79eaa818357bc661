"""The run results quoted in README.md and data/README.md are the committed records.

Each quote names its run; the accuracies and the wall time must be the ``init`` and ``final``
records of ``data/runs/<run>/metrics.jsonl``, rounded as printed.
"""
from __future__ import annotations

import json
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
QUOTE = re.compile(r"kNN (\d\.\d+) -> (\d\.\d+), linear probe (\d\.\d+) -> (\d\.\d+)"
                   r"(?:, online probe (\d\.\d+))?,\s+(\d+\.\d)\s+min")


def records(run: str) -> tuple[dict, dict]:
    lines = [json.loads(x) for x in (ROOT / "data" / "runs" / run / "metrics.jsonl").read_text().splitlines()
             if x.strip()]
    init = next(r for r in lines if r.get("event") == "init")
    final = next(r for r in lines if r.get("event") == "final")
    return init, final


def quotes(path: Path) -> list[tuple[str, re.Match]]:
    """(run name, quote) for every quote in ``path``; the run is the nearest name before or after it."""
    text = path.read_text()
    found = []
    for m in QUOTE.finditer(text):
        line = text[text.rfind("\n", 0, m.start()) + 1:text.find("\n", m.end())]
        near = re.findall(r"digits-cpu-[\w-]+", line) or re.findall(r"data/runs/([\w-]+)/",
                                                                   text[m.start():m.end() + 200])
        assert near, f"{path.name}: cannot tell which run {m.group(0)!r} quotes"
        found.append((near[0], m))
    return found


def check(run: str, m: re.Match) -> None:
    init, final = records(run)
    knn0, knn1, lin0, lin1, online, minutes = m.groups()
    assert float(knn0) == round(init["knn_acc"], len(knn0) - 2), (run, m.group(0))
    assert float(knn1) == round(final["knn_acc"], len(knn1) - 2), (run, m.group(0))
    assert float(lin0) == round(init["linear_probe_acc"], len(lin0) - 2), (run, m.group(0))
    assert float(lin1) == round(final["linear_probe_acc"], len(lin1) - 2), (run, m.group(0))
    if online:
        assert float(online) == round(final["online_probe_acc"], len(online) - 2), (run, m.group(0))
    assert float(minutes) == round(final["wall_time_s"] / 60, 1), (run, m.group(0))


def test_readme_quotes_the_record():
    found = quotes(ROOT / "README.md")
    assert found, "README.md quotes no run"
    for run, m in found:
        check(run, m)


def test_data_readme_quotes_the_records():
    found = quotes(ROOT / "data" / "README.md")
    assert {run for run, _ in found} == {p.name for p in (ROOT / "data" / "runs").glob("digits-cpu-*")}
    for run, m in found:
        check(run, m)
