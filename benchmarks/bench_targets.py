"""The speed targets of the sliced and analytic estimators, measured side by side in one process.

For each (N, D) the script times forward+backward of, on the same float32 input:

* ``epps_pulley`` (K slices) and LeJEPA's own SIGReg, ``SlicingUnivariateTest(EppsPulley())``
  with the same K, imported from a LeJEPA checkout (``--lejepa PATH`` or the environment
  variable ``LEJEPA_PATH``; without one those columns are skipped with a message);
* ``sliced_ksd2`` and ``sliced_mmd2`` (K slices, 21 knots, Gaussian kernel and prior);
* the analytic sliced KSD and MMD and their unsliced siblings ``ksd2`` / ``mmd2`` (Gaussian
  kernel, Gaussian prior; ``backend="auto"``), and ``ksd2`` with the IMQ kernel;
* optionally the same jobs of another kerjepa checkout (``--before PATH``, e.g. an older commit),
  loaded under another module name in the same process, so before and after share the machine's
  conditions.

Every round runs every job once (interleaved), so a change of the machine's load hits all jobs
alike; the reported time is the median over ``--rounds`` rounds after one warm-up, and the ratios
are those of the medians. Peak memory of the sliced estimators (increase of the resident-set
high-water mark over one forward+backward, see ``bench_estimators.peak_memory``) is recorded too.
The value of ``epps_pulley`` is compared with LeJEPA's on the same directions.

Examples::

    python benchmarks/bench_targets.py --lejepa ../lejepa --json data/bench/targets_cpu.json
    python benchmarks/bench_targets.py --lejepa ../lejepa --before /tmp/kerjepa-2ecd74f --sizes 256x128
    python benchmarks/bench_targets.py --summarize data/bench/targets_cpu_run*.json
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import os
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench_estimators as _be  # noqa: E402

SIZES = ("256x128", "1024x128", "1024x1024", "4096x128")


def load_kerjepa(path: str | None, alias: str):
    """The kerjepa package of this checkout (``path=None``) or of another one, under ``alias``."""
    if path is None:
        import kerjepa
        import kerjepa.analytic  # noqa: F401
        return kerjepa
    init = os.path.join(os.path.abspath(path), "kerjepa", "__init__.py")
    if not os.path.exists(init):
        raise SystemExit(f"--before {path}: no kerjepa/__init__.py there")
    spec = importlib.util.spec_from_file_location(alias, init, submodule_search_locations=[os.path.dirname(init)])
    module = importlib.util.module_from_spec(spec)
    sys.modules[alias] = module
    spec.loader.exec_module(module)
    importlib.import_module(f"{alias}.analytic")
    return module


def load_lejepa(path: str | None):
    """LeJEPA's package from a checkout, or None (with a message saying how to point to one)."""
    path = path or os.environ.get("LEJEPA_PATH")
    if not path:
        print("# LeJEPA columns skipped: pass --lejepa PATH or set LEJEPA_PATH to a checkout of "
              "github.com/rbalestr-lab/lejepa", file=sys.stderr)
        return None
    if not os.path.isdir(os.path.join(path, "lejepa")):
        print(f"# LeJEPA columns skipped: {path} has no lejepa/ package", file=sys.stderr)
        return None
    sys.path.insert(0, os.path.abspath(path))
    import lejepa
    return lejepa


def jobs_of(kj, tag: str, num_slices: int):
    """name -> statistic(z) for one kerjepa package."""
    F, K, P = kj.functional, kj.kernels, kj.priors
    an = kj.analytic
    g = torch.Generator()
    gk, q = K.Gaussian(), P.Gaussian()
    g1 = K.Gaussian(0.5)
    return {
        f"{tag} epps_pulley": lambda z: F.epps_pulley(z, num_slices, generator=g.manual_seed(0)),
        f"{tag} sliced_mmd2": lambda z: F.sliced_mmd2(z, gk, q, num_slices, generator=g.manual_seed(0)),
        f"{tag} sliced_ksd2": lambda z: F.sliced_ksd2(z, gk, q, num_slices, generator=g.manual_seed(0)),
        f"{tag} analytic_mmd2": lambda z: an.analytic_sliced_mmd2(z, g1, q),
        f"{tag} analytic_ksd2": lambda z: an.analytic_sliced_ksd2(z, g1, q),
        f"{tag} mmd2_gaussian": lambda z: F.mmd2(z, gk, q),
        f"{tag} ksd2_gaussian": lambda z: F.ksd2(z, gk, q),
        f"{tag} ksd2_imq": lambda z: F.ksd2(z, K.IMQ(), q),
    }


def lejepa_job(lejepa, num_slices: int):
    sigreg = lejepa.multivariate.SlicingUnivariateTest(univariate_test=lejepa.univariate.EppsPulley(),
                                                       num_slices=num_slices)
    return {"lejepa sigreg": lambda z: sigreg(z)}


def value_agreement(kj, lejepa, z, num_slices: int) -> float:
    """|ours - LeJEPA's| / |LeJEPA's| of the statistic on the same directions."""
    a = torch.randn(z.shape[1], num_slices, generator=torch.Generator().manual_seed(3))
    a = a / a.norm(dim=0)
    theirs = lejepa.univariate.EppsPulley()(z @ a).mean()
    ours = kj.functional.epps_pulley(z, directions=a.T)
    return float((ours - theirs).abs() / theirs.abs())


def measure(jobs, z, rounds: int, budget_s: float, memory: set):
    def run(fn):
        x = z.detach().clone().requires_grad_(True)
        fn(x).backward()

    times = {k: [] for k in jobs}
    for fn in jobs.values():  # warm-up
        run(fn)
    for _ in range(rounds):
        for k, fn in jobs.items():
            if sum(times[k]) <= budget_s:
                t0 = time.perf_counter()
                run(fn)
                times[k].append(time.perf_counter() - t0)
    peaks = {k: _be.peak_memory(lambda fn=fn: run(fn), torch.device("cpu")) for k, fn in jobs.items() if k in memory}
    return times, peaks


RATIOS = [  # (column, numerator, denominator)
    ("epps_pulley / LeJEPA", "epps_pulley", "lejepa sigreg"),
    ("sliced KSD / sliced MMD", "sliced_ksd2", "sliced_mmd2"),
    ("analytic KSD / unsliced KSD", "analytic_ksd2", "ksd2_gaussian"),
    ("analytic MMD / unsliced MMD", "analytic_mmd2", "mmd2_gaussian"),
    ("unsliced KSD-IMQ / LeJEPA", "ksd2_imq", "lejepa sigreg"),
]


def ratios(medians, tag):
    out = {}
    for col, num, den in RATIOS:
        a = medians.get(f"{tag} {num}")
        b = medians.get(den if den.startswith("lejepa") else f"{tag} {den}")
        if a is not None and b is not None:
            out[col] = a / b
    return out


def summarize(paths):
    """Markdown table of the ratios in result files: one value per file, or the range over files."""
    runs = []
    for path in paths:
        with open(path) as f:
            runs.append(json.load(f)["records"])
    cols = [c for c, _, _ in RATIOS]
    lines = ["| N, D | tag | " + " | ".join(cols) + " |", "|---|---|" + "---|" * len(cols)]
    sizes = sorted({(r["N"], r["D"]) for records in runs for r in records})
    for n, d in sizes:
        for tag in ("before", "after"):
            cells = []
            for col in cols:
                vals = [r["ratios"].get(tag, {}).get(col) for records in runs for r in records
                        if (r["N"], r["D"]) == (n, d)]
                vals = [v for v in vals if v is not None]
                if not vals:
                    cells.append("–")
                elif len(vals) == 1 or f"{min(vals):.2f}" == f"{max(vals):.2f}":
                    cells.append(f"{vals[0]:.2f}")
                else:
                    cells.append(f"{min(vals):.2f}–{max(vals):.2f}")
            if any(c != "–" for c in cells):
                lines.append(f"| {n}, {d} | {tag} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--lejepa", help="path of a LeJEPA checkout (default: $LEJEPA_PATH)")
    p.add_argument("--before", help="path of another kerjepa checkout, timed alongside under 'before'")
    p.add_argument("--sizes", nargs="+", default=list(SIZES), help="NxD")
    p.add_argument("--slices", type=int, default=1024)
    p.add_argument("--rounds", type=int, default=9)
    p.add_argument("--budget", type=float, default=60.0, help="stop repeating a job after this many s")
    p.add_argument("--only", nargs="+", help="keep jobs whose name contains one of these")
    p.add_argument("--threads", type=int, help="torch.set_num_threads")
    p.add_argument("--json", help="write the records and the machine description here")
    p.add_argument("--summarize", nargs="+", metavar="JSON",
                   help="print the ratio table (ranges over the files) of earlier runs and exit")
    args = p.parse_args(argv)
    if args.summarize:
        print(summarize(args.summarize))
        return
    if args.threads:
        torch.set_num_threads(args.threads)
    kj = load_kerjepa(None, "kerjepa")
    jobs = jobs_of(kj, "after", args.slices)
    if args.before:
        jobs.update(jobs_of(load_kerjepa(args.before, "kerjepa_before"), "before", args.slices))
    lejepa = load_lejepa(args.lejepa)
    if lejepa is not None:
        jobs.update(lejepa_job(lejepa, args.slices))
    if args.only:
        jobs = {k: v for k, v in jobs.items() if any(s in k for s in args.only)}
    info = _be.machine(torch.device("cpu"))
    try:
        info["loadavg"] = os.getloadavg()
    except OSError:
        pass
    print("# " + ", ".join(f"{k}={v}" for k, v in info.items()), flush=True)
    records = []
    for size in args.sizes:
        n, d = (int(v) for v in size.lower().split("x"))
        z = torch.randn(n, d, generator=torch.Generator().manual_seed(1))
        memory = {k for k in jobs if "sliced_" in k or "epps" in k or "lejepa" in k}
        times, peaks = measure(jobs, z, args.rounds, args.budget, memory)
        med = {k: statistics.median(v) for k, v in times.items()}
        rec = {"N": n, "D": d, "median_s": med, "runs": {k: len(v) for k, v in times.items()},
               "times_s": times, "peak_bytes": peaks,
               "ratios": {tag: ratios(med, tag) for tag in ("after", "before") if any(k.startswith(tag) for k in med)}}
        if lejepa is not None:
            rec["epps_pulley_vs_lejepa_rel_diff"] = value_agreement(kj, lejepa, z, args.slices)
        records.append(rec)
        for k in sorted(med):
            mem = f"  peak {peaks[k] / 2 ** 20:8.1f} MiB" if k in peaks else ""
            print(f"N={n:5d} D={d:5d}  {k:26s} {1e3 * med[k]:10.2f} ms  ({len(times[k])} runs){mem}", flush=True)
        for tag, r in rec["ratios"].items():
            print(f"N={n:5d} D={d:5d}  {tag:6s} " + "  ".join(f"{c}: {v:.3f}" for c, v in r.items()), flush=True)
        if "epps_pulley_vs_lejepa_rel_diff" in rec:
            print(f"N={n:5d} D={d:5d}  epps_pulley vs LeJEPA, same directions: relative difference "
                  f"{rec['epps_pulley_vs_lejepa_rel_diff']:.2e}", flush=True)
    try:
        info["loadavg_end"] = os.getloadavg()
    except OSError:
        pass
    if args.json:
        os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
        with open(args.json, "w") as f:
            json.dump({"machine": info, "args": vars(args), "records": records}, f, indent=1)
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
