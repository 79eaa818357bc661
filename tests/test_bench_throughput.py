"""benchmarks/bench_throughput.py runs end to end (a micro-ViT on the CPU here; the paper's scale on CUDA).

Times are not asserted: the test checks that every row is measured and recorded."""
import importlib.util
import json
import math
from pathlib import Path

import pytest
import torch

from kerjepa.training.config import PRESETS

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_throughput.py"


def _bench():
    spec = importlib.util.spec_from_file_location("bench_throughput", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _check(out, rows, batch_size):
    assert [r["row"] for r in out["rows"]] == rows
    for r in out["rows"]:
        assert r["batch_size"] == batch_size and r["steps"] == 2
        assert all(math.isfinite(r[k]) and r[k] > 0 for k in ("step_ms", "reg_ms", "images_per_s", "table1_row_hours"))
        assert r["images_per_s"] == pytest.approx(batch_size / (r["step_ms"] / 1e3))
        assert r["reg_share"] == pytest.approx(r["reg_ms"] / r["step_ms"])


def test_tiny_run_records_every_row(tmp_path):
    bench = _bench()
    path = tmp_path / "tp.json"
    assert bench.main(["--tiny", "--device", "cpu", "--steps", "2", "--warmup", "0", "--json", str(path)]) == 0
    out = json.loads(path.read_text())
    _check(out, list(bench.ROWS), bench.TINY["batch_size"])
    assert out["tiny"] and out["rows"][0]["peak_memory_gib"] is None and out["machine"]["torch"] == torch.__version__
    assert {r["preset"] for r in out["rows"]} <= set(PRESETS)


def test_bad_arguments_are_refused():
    bench = _bench()
    with pytest.raises(SystemExit):
        bench.main(["--tiny", "--steps", "0"])
    with pytest.raises(SystemExit):
        bench.main(["--rows", "nope"])


@pytest.mark.gpu
def test_paper_scale_on_cuda(tmp_path):
    bench = _bench()
    path = tmp_path / "tp.json"
    assert bench.main(["--device", "cuda", "--batch-size", "32", "--steps", "2", "--warmup", "1",
                       "--rows", "lejepa", "ksd-unsliced-imq", "--json", str(path)]) == 0
    out = json.loads(path.read_text())
    _check(out, ["lejepa", "ksd-unsliced-imq"], 32)
    assert out["machine"]["card"] and all(r["peak_memory_gib"] > 0 and r["precision"] == "bf16" for r in out["rows"])
