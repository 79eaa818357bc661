"""Cost of a goodness-of-fit test relative to one forward of its statistic, side by side in one process.

For each (N, D) and kernel the script times, on the same input and without gradients:

* ``ksd2``: one :func:`kerjepa.functional.ksd2` forward (the regularizer's value);
* ``ksd_test B=...``: :func:`kerjepa.gof.ksd_test` with B wild-bootstrap replicates (the Stein
  matrix once, then the (B, N) x (N, N) product), dense and chunked;
* ``mmd2`` and ``mmd_test B=...``: the unsliced Gaussian-kernel MMD and its parametric
  bootstrap (B prior batches, vectorised), for comparison.

Jobs run in interleaved rounds (each round runs every job once, so a load change on a shared
machine hits them alike) and the median is reported with its ratio to the statistic's forward.

Examples::

    python benchmarks/bench_gof.py                       # N = 1024, D = 128, B = 1000 (the target)
    python benchmarks/bench_gof.py --n 4096 --d 128 --json data/bench/gof_cpu_n4096.json
    python benchmarks/bench_gof.py --device cuda
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import time

import torch

from kerjepa import functional as F, gof, kernels, priors


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed(fn, device) -> float:
    _sync(device)
    t0 = time.perf_counter()
    fn()
    _sync(device)
    return time.perf_counter() - t0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=1024)
    parser.add_argument("--d", type=int, default=128)
    parser.add_argument("--b", type=int, default=1000, help="bootstrap replicates")
    parser.add_argument("--b-mmd", type=int, default=100, help="replicates of the parametric MMD test")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--dtype", choices=("float32", "float64"), default="float32")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--json", default=None, help="write the records here")
    args = parser.parse_args(argv)
    device, dtype = torch.device(args.device), getattr(torch, args.dtype)
    g = torch.Generator().manual_seed(0)
    z = torch.randn(args.n, args.d, generator=g, dtype=dtype).to(device)
    gen = lambda: torch.Generator(device=device).manual_seed(1)  # noqa: E731
    jobs = {}
    for name in ("gaussian", "imq"):
        k = kernels.get(name)
        jobs[f"ksd2 {name}"] = lambda k=k: F.ksd2(z, k, priors.Gaussian())
        for backend in ("dense", "chunked"):
            jobs[f"ksd_test {name} B={args.b} {backend}"] = (
                lambda name=name, backend=backend: gof.ksd_test(z, kernel=name, num_bootstrap=args.b,
                                                                 backend=backend, generator=gen()))
    jobs["mmd2 gaussian"] = lambda: F.mmd2(z, kernels.Gaussian(), priors.Gaussian())
    jobs[f"mmd_test gaussian B={args.b_mmd}"] = lambda: gof.mmd_test(z, num_bootstrap=args.b_mmd, generator=gen())
    with torch.no_grad():
        times = {name: [] for name in jobs}
        for name, fn in jobs.items():   # warm-up
            fn()
        for _ in range(args.repeats):
            for name, fn in jobs.items():
                times[name].append(_timed(fn, device))
    medians = {name: statistics.median(t) for name, t in times.items()}
    base = {"ksd": lambda name: medians[f"ksd2 {name.split()[1]}"], "mmd": lambda name: medians["mmd2 gaussian"]}
    machine = (f"{platform.processor() or platform.machine()}, {os.cpu_count()} logical CPUs, torch threads "
               f"{torch.get_num_threads()}" if device.type == "cpu" else torch.cuda.get_device_name(device))
    print(f"N={args.n} D={args.d} {args.dtype} on {device} ({machine}); median of {args.repeats} interleaved rounds")
    records = []
    for name, t in medians.items():
        ratio = t / base[name[:3]](name)
        records.append({"job": name, "median_s": t, "ratio_to_forward": ratio})
        print(f"  {name:36s} {t * 1e3:9.2f} ms   x{ratio:6.2f} of the statistic's forward")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"machine": machine, "date": datetime.datetime.now(datetime.timezone.utc).isoformat(),
                       "args": vars(args), "records": records}, f, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
