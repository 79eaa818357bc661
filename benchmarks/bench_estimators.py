"""Forward+backward time and peak memory of every estimator, measured side by side in one process.

For each (N, D) the script times, on the same input:

* every unsliced estimator (mmd2, ksd2; analytic slicing when available) with the dense and the
  chunked backend. ``ksd2 imq fused`` is :func:`kerjepa.functional.ksd2` itself, whose dense
  backend uses the hand-written backward of :class:`kerjepa.ksd.SteinPair` (chunked blocks use
  autograd); ``ksd2 gaussian`` and ``ksd2 imq`` are the same statistics through plain autograd
  (the pair function ``kerjepa.ksd._stein_pair``), kept to show what the hand-written backward saves;
* the finitely sliced estimators and LeJEPA's ``epps_pulley`` with 1024 slices (the reference);
* the *floor* of each estimator: the dense matrix products it cannot avoid, forward and backward
  (``x @ x.T`` and an (N, N) @ (N, D) product for the MMDs; the Gram matrix of the stacked
  embeddings and scores ``[x; s] @ [x; s].T`` and its (2N, 2N) @ (2N, D) backward for the KSDs;
  ``x @ theta.T`` and its backward for the sliced ones).

Times are medians of ``--repeats`` runs after a warm-up, taken in interleaved rounds (every
round runs every job once) so that load changes on a shared machine hit all jobs alike; peak memory is the increase of the
process's resident-set high-water mark (CPU, Linux: reset through ``/proc/self/clear_refs``, after ``malloc_trim``) or of
``torch.cuda.max_memory_allocated`` (CUDA) over the memory held before the call. Ratios are
printed; ``--json OUT`` saves every record with the machine it ran on.

Examples::

    python benchmarks/bench_estimators.py --quick
    python benchmarks/bench_estimators.py --n 1024 --d 128 --json data/bench/cpu_n1024.json
    python benchmarks/bench_estimators.py --device cuda --json data/bench/cuda.json
    python benchmarks/bench_estimators.py --big            # N = 65536, D = 128, chunked only
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import re
import statistics
import sys
import time

import torch

import kerjepa
from kerjepa import functional as F, kernels, priors
from kerjepa.pairwise import pair_mean

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from kerjepa.ksd import _stein_pair  # noqa: E402

GIB = 1024 ** 3


# --------------------------------------------------------------------------------------------
# Measurement
# --------------------------------------------------------------------------------------------
def _rss_hwm_bytes() -> int:
    with open("/proc/self/status") as f:
        return int(re.search(r"VmHWM:\s+(\d+)", f.read()).group(1)) * 1024


def _rss_bytes() -> int:
    with open("/proc/self/status") as f:
        return int(re.search(r"VmRSS:\s+(\d+)", f.read()).group(1)) * 1024


def _reset_hwm():
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _malloc_trim():
    """Give freed heap pages back to the OS, so that reusing them shows in the resident set."""
    try:
        import ctypes
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def peak_memory(fn, device) -> int:
    """Extra bytes ``fn()`` holds at its peak, over what the process held before."""
    if device.type == "cuda":
        torch.cuda.empty_cache()
        base = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        fn()
        _sync(device)
        return max(torch.cuda.max_memory_allocated(device) - base, 0)
    _malloc_trim()
    base = _rss_bytes()
    _reset_hwm()
    fn()
    return max(_rss_hwm_bytes() - base, 0)


def timed(fn, device) -> float:
    _sync(device)
    t0 = time.perf_counter()
    fn()
    _sync(device)
    return time.perf_counter() - t0


def measure_all(jobs, device, repeats: int, budget_s: float, once: bool = False):
    """Median time and peak memory of each job, timed in interleaved rounds.

    Every round runs every job once, so a change of the machine's load during the measurement
    affects all of them alike (the ratios are what this script reports). Jobs whose total time
    passes ``budget_s`` stop repeating. ``once``: no warm-up, a single timed run.
    """
    if once:  # one run per job gives both numbers
        out = {}
        for k, fn in jobs.items():
            t0 = time.perf_counter()
            mem = peak_memory(fn, device)
            out[k] = (time.perf_counter() - t0, mem)
        return out
    times = {k: [] for k in jobs}
    mems = {}
    for fn in jobs.values():  # warm-up
        fn()
    for _ in range(repeats):
        for k, fn in jobs.items():
            if sum(times[k]) <= budget_s:
                times[k].append(timed(fn, device))
    for k, fn in jobs.items():
        mems[k] = peak_memory(fn, device) if k[0] != "floor" else 0
    return {k: (statistics.median(times[k]), mems[k]) for k in jobs}


def fwd_bwd(statistic, z):
    def run():
        zz = z.detach().requires_grad_(True)
        statistic(zz).backward()
    return run


# --------------------------------------------------------------------------------------------
# Estimators and their floors
# --------------------------------------------------------------------------------------------
def estimators(num_slices: int):
    """name -> (family, statistic(z, backend), floor kind, bytes per pair of the dense backward).

    The bytes per pair are the peak memory of forward+backward with the dense backend divided by
    N², measured at N = 4096 on CPU (float32), rounded up; they decide what ``--max-gib`` skips.
    """
    g, imq = kernels.Gaussian(), kernels.IMQ()
    q = priors.Gaussian()
    out = {
        "mmd2 gaussian": ("unsliced", lambda z, b: F.mmd2(z, g, q, backend=b), "mmd", 28),
        "mmd2 imq": ("unsliced", lambda z, b: F.mmd2(z, imq, q, backend=b), "mmd", 42),
        "ksd2 gaussian": ("unsliced", lambda z, b: ksd2_autograd(z, g, b), "ksd", 56),
        "ksd2 imq": ("unsliced", lambda z, b: ksd2_autograd(z, imq, b), "ksd", 72),
        "ksd2 imq fused": ("unsliced", lambda z, b: F.ksd2(z, imq, q, backend=b), "ksd", 36),
    }

    def ksd2_autograd(z, kernel, backend):
        k = kernel.resolve(z)
        return pair_mean(_stein_pair(k, z.shape[-1]), z, (q.score(z),), backend=backend)

    try:
        from kerjepa import analytic
        gh = kernels.Gaussian(0.5)
        analytic.analytic_sliced_mmd2(torch.randn(4, 3), gh, q)
        out["analytic mmd2"] = ("unsliced", lambda z, b: analytic.analytic_sliced_mmd2(z, gh, q, backend=b),
                                "mmd", 24)
        analytic.analytic_sliced_ksd2(torch.randn(4, 3), gh, q)
        out["analytic ksd2"] = ("unsliced", lambda z, b: analytic.analytic_sliced_ksd2(z, gh, q, backend=b),
                                "ksd", 120)
    except Exception as err:  # analytic slicing absent or unfinished in this checkout
        print(f"# analytic slicing skipped: {type(err).__name__}: {err}", file=sys.stderr)
    gen = torch.Generator()
    out[f"sliced mmd2 K={num_slices}"] = (
        "sliced", lambda z, b: F.sliced_mmd2(z, g, q, num_slices, generator=gen.manual_seed(0)), "sliced21", 0)
    out[f"sliced ksd2 K={num_slices}"] = (
        "sliced", lambda z, b: F.sliced_ksd2(z, g, q, num_slices, generator=gen.manual_seed(0)), "sliced21", 0)
    out[f"epps_pulley K={num_slices}"] = (
        "sliced", lambda z, b: F.epps_pulley(z, num_slices, generator=gen.manual_seed(0)), "sliced17", 0)
    return out


def floor_fn(kind, n, d, num_slices, dtype, device):
    """The dense matrix products an estimator cannot avoid, forward and backward."""
    gen = torch.Generator(device=device).manual_seed(0)
    r = lambda *s: torch.randn(*s, generator=gen, dtype=dtype, device=device)
    if kind == "mmd":      # Gram matrix, then its (N, N) @ (N, D) backward
        x, a = r(n, d), r(n, n)
        return lambda: (x @ x.T, a @ x)
    if kind == "ksd":      # Gram matrix of the stacked [x; s], then (2N, 2N) @ (2N, D)
        y, a = r(2 * n, d), r(2 * n, 2 * n)
        return lambda: (y @ y.T, a @ y)
    x, th, a = r(n, d), r(num_slices, d), r(n, num_slices)  # projections and their backward
    return lambda: (x @ th.T, a @ th)


def sliced_bytes(n, num_slices, knots, itemsize):
    # a few (K, N) tensors (kerjepa.slicing.ecf keeps no (N, K, U) tensor) and one block of cos/sin
    return 8 * n * num_slices * itemsize + 2 * 2 ** 21 * itemsize


# --------------------------------------------------------------------------------------------
# Main
# --------------------------------------------------------------------------------------------
def machine(device):
    info = {"platform": platform.platform(), "machine": platform.machine(), "python": platform.python_version(),
            "torch": torch.__version__, "kerjepa": kerjepa.__version__, "threads": torch.get_num_threads(),
            "cpu_count": os.cpu_count(), "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}
    try:
        with open("/proc/cpuinfo") as f:
            info["cpu"] = re.search(r"model name\s*:\s*(.*)", f.read()).group(1)
    except (OSError, AttributeError):
        info["cpu"] = platform.processor()
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


def run(args):
    device = torch.device(args.device)
    dtype = getattr(torch, args.dtype)
    torch.manual_seed(0)
    ests = estimators(args.slices)
    if args.only:
        ests = {k: v for k, v in ests.items() if any(s in k for s in args.only)}
    records = []
    for d in args.d:
        for n in args.n:
            z = torch.randn(n, d, dtype=dtype, device=device, generator=torch.Generator(device=device).manual_seed(1))
            jobs, recs = {}, {}
            for name, (family, stat, kind, per_pair) in ests.items():
                backends = args.backends if family == "unsliced" else ["-"]
                for backend in backends:
                    rec = {"estimator": name, "family": family, "backend": backend, "N": n, "D": d,
                           "dtype": args.dtype, "device": args.device, "floor_kind": kind}
                    if family == "unsliced" and backend == "dense" and per_pair * n * n > args.max_gib * GIB:
                        rec["skipped"] = f"dense needs about {per_pair * n * n / GIB:.0f} GiB"
                    elif family == "sliced" and sliced_bytes(n, args.slices, 21, z.element_size()) > args.max_gib * GIB:
                        rec["skipped"] = "(K, N) tensors over the memory budget"
                    records.append(rec)
                    if "skipped" in rec:
                        print(f"{name:24s} {backend:8s} N={n:6d} D={d:5d}  skipped: {rec['skipped']}", flush=True)
                        continue
                    b = None if backend == "-" else backend
                    jobs[(name, backend)] = fwd_bwd(lambda x, stat=stat, b=b: stat(x, b), z)
                    recs[(name, backend)] = rec
                    if ("floor", kind) not in jobs and not args.no_floor:
                        jobs[("floor", kind)] = floor_fn(kind, n, d, args.slices, dtype, device)
            results = measure_all(jobs, device, args.repeats, args.budget, once=args.big)
            for key, rec in recs.items():
                t, mem = results[key]
                rec.update(time_s=t, peak_bytes=mem)
                floor = results.get(("floor", rec["floor_kind"]))
                if floor is not None:
                    rec["floor_s"] = floor[0]
                ratio = f"x{t / rec['floor_s']:6.2f}" if "floor_s" in rec else ""
                print(f"{rec['estimator']:24s} {rec['backend']:8s} N={n:6d} D={d:5d}  {1e3 * t:10.2f} ms  "
                      f"{ratio} peak {mem / 2 ** 20:9.1f} MiB", flush=True)
    return records


def table(records, num_slices):
    """One table: time, ratio to floor, to epps_pulley, chunked/dense, peak memory."""
    ep = {(r["N"], r["D"]): r["time_s"] for r in records
          if r["estimator"] == f"epps_pulley K={num_slices}" and "time_s" in r}
    dense = {(r["estimator"], r["N"], r["D"]): r["time_s"] for r in records
             if r["backend"] == "dense" and "time_s" in r}
    head = (f"{'estimator':24s} {'backend':8s} {'N':>6s} {'D':>5s} {'ms':>10s} {'/floor':>7s} "
            f"{'/EP':>7s} {'chk/dns':>7s} {'peak MiB':>9s}")
    lines = [head, "-" * len(head)]
    for r in records:
        if "time_s" not in r:
            lines.append(f"{r['estimator']:24s} {r['backend']:8s} {r['N']:6d} {r['D']:5d}   {r['skipped']}")
            continue
        key = (r["N"], r["D"])
        to_ep = f"{r['time_s'] / ep[key]:7.3f}" if key in ep else f"{'-':>7s}"
        dk = (r["estimator"], r["N"], r["D"])
        cd = f"{r['time_s'] / dense[dk]:7.2f}" if r["backend"] == "chunked" and dk in dense else f"{'-':>7s}"
        lines.append(f"{r['estimator']:24s} {r['backend']:8s} {r['N']:6d} {r['D']:5d} {1e3 * r['time_s']:10.2f} "
                     f"{r['time_s'] / r['floor_s'] if 'floor_s' in r else float('nan'):7.2f} {to_ep} {cd} {r['peak_bytes'] / 2 ** 20:9.1f}")
    return "\n".join(lines)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    p.add_argument("--n", type=int, nargs="+", default=[256, 1024, 4096, 16384])
    p.add_argument("--d", type=int, nargs="+", default=[128, 1024])
    p.add_argument("--backends", nargs="+", default=["dense", "chunked"], choices=["dense", "chunked"])
    p.add_argument("--only", nargs="+", help="keep estimators whose name contains one of these")
    p.add_argument("--slices", type=int, default=1024, help="K of the sliced estimators and epps_pulley")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--budget", type=float, default=20.0, help="stop repeating a measurement after this many s")
    p.add_argument("--max-gib", type=float, default=6.0, help="skip configurations needing more memory")
    p.add_argument("--quick", action="store_true", help="N in {256, 1024}, D = 128, 3 repeats")
    p.add_argument("--big", action="store_true", help="N = 65536, D = 128, chunked backend, one run")
    p.add_argument("--no-floor", action="store_true", help="do not time the matrix-product floors")
    p.add_argument("--threads", type=int, help="torch.set_num_threads")
    p.add_argument("--json", help="write the records and the machine description here")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.quick:
        args.n, args.d, args.repeats = [256, 1024], [128], 3
    if args.big:
        args.n, args.d, args.backends, args.repeats, args.no_floor = [65536], [128], ["chunked"], 1, True
        args.only = args.only or ["mmd2 gaussian", "ksd2 imq"]
    info = machine(torch.device(args.device))
    print("# " + ", ".join(f"{k}={v}" for k, v in info.items()), flush=True)
    records = run(args)
    print()
    print(table(records, args.slices))
    if args.json:
        os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
        with open(args.json, "w") as f:
            json.dump({"machine": info, "args": vars(args), "records": records}, f, indent=1)
        print(f"\nwrote {args.json}")


if __name__ == "__main__":
    main()
