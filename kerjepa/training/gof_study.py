r"""Calibration and power of the goodness-of-fit tests of :mod:`kerjepa.gof`, written to ``data/results/``.

Run ``python -m kerjepa.training.gof_study`` for the full study, ``--small`` for the reduced one
the book plots (a few CPU-minutes). The small study writes ``gof_size.jsonl`` and
``gof_power.jsonl``, the full one ``gof_size_full.jsonl`` and ``gof_power_full.jsonl``:

* size: for each test x N x D, the number of rejections at level 0.05 in R replications under
  the null (samples from the test's own prior), the 99 % binomial region of that count for a test
  of exact size 0.05, and the R p-values (for QQ plots);
* power: for each alternative x test, the rejection rate against the standard Gaussian prior,
  for ``kerjepa``'s tests and, on the same draws, pingouin's Henze–Zirkler test
  (``pingouin.multivariate_normality``) and hyppo's permutation MMD (``hyppo.ksample.MMD``) with
  N prior draws as the second sample.

The first row of each file (``"event": "meta"``) records the sizes, the seed and the machine.
Rows are appended as they finish (one per size cell, one group per power setting) and a rerun
skips what its file already holds, so an interrupted study continues where it stopped; every
cell draws from its own seed, so the rows do not depend on how the study was split.

Sizes: full — N in {50, 200, 1000}, D in {2, 16, 128}, R = 200 (every kernel x prior, and sliced,
analytic and two-sample variants); power at N = 200, D = 16 with R = 500 and at N = 1000, D = 128
with R = 100. Small — N in {50, 200}, D in {2, 16}, R = 200 (the six KSD kernel x prior pairs,
the unsliced MMDs and Epps–Pulley); power at N = 200, D = 16 with R = 100. The wild bootstrap uses
B = 99 (small) or 199 replicates; the parametric bootstrap, exact whenever 0.05 (B + 1) is an
integer, B = 19 for the size and 39 (small) or 199 for the power, as does hyppo's permutation test.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import platform
import time
import warnings
from pathlib import Path

import numpy as np
import scipy.stats as st
import torch

from .. import gof, priors

__all__ = ["size_specs", "alternatives", "binomial_region", "run_size", "run_power", "main"]

LEVEL = 0.05
NU = 5.0


def binomial_region(reps: int, level: float = LEVEL, coverage: float = 0.99) -> tuple:
    """Counts of rejections a test of exact size ``level`` shows in ``reps`` null replications w.p. >= ``coverage``."""
    return (int(st.binom.ppf((1 - coverage) / 2, reps, level)),
            int(st.binom.isf((1 - coverage) / 2, reps, level)))


def _prior_params(prior: str, dim: int) -> dict:
    """The unit-variance scale of each prior (the presets' convention)."""
    if prior == "student_t":
        return {"nu": NU, "sigma": priors.unit_variance_sigma(prior, dim, nu=NU)}
    return {"sigma": priors.unit_variance_sigma(prior, dim)}


def size_specs(small: bool) -> list:
    """(name, kind, options without the prior's scale) of every test in the size study."""
    specs = [(f"ksd-{k}-{p}", "ksd", {"kernel": k, "prior": p})
             for k in ("gaussian", "imq") for p in ("gaussian", "laplace", "student_t")]
    specs += [("mmd-gaussian-gaussian", "mmd", {"kernel": "gaussian", "prior": "gaussian"}),
              ("mmd-imq-gaussian", "mmd", {"kernel": "imq", "prior": "gaussian"}),
              ("epps_pulley-16", "epps_pulley", {"slices": 16})]
    if not small:
        specs += [("ksd-sliced64-gaussian-laplace", "ksd", {"prior": "laplace", "slices": 64}),
                  ("mmd-sliced64-gaussian-laplace", "mmd", {"prior": "laplace", "slices": 64}),
                  ("mmd-sliced64-gaussian-student_t", "mmd", {"prior": "student_t", "slices": 64}),
                  ("mmd-imq-laplace-two_sample", "mmd", {"kernel": "imq", "prior": "laplace",
                                                         "prior_samples": 256}),
                  ("mmd-analytic-gaussian-gaussian", "mmd", {"prior": "gaussian", "slices": "analytic"})]
    return specs


def run_size(small: bool, seed: int, path: Path, meta: dict, only_n=None, only_d=None, only_tests=None) -> int:
    """Append the missing size cells to ``path`` (those with N in ``only_n``, D in ``only_d`` and a
    test named in ``only_tests`` when given: several processes can share a study); returns the
    number of rows written."""
    sizes_n, sizes_d = ((50, 200), (2, 16)) if small else ((50, 200, 1000), (2, 16, 128))
    sizes_n = [n for n in sizes_n if only_n is None or n in only_n]
    sizes_d = [d for d in sizes_d if only_d is None or d in only_d]
    reps, b_wild = 200, (99 if small else 199)
    unknown = set(only_tests or ()) - {name for name, _, _ in size_specs(small)}
    if unknown:
        raise SystemExit(f"unknown test(s) {sorted(unknown)}; the study's: {[s[0] for s in size_specs(small)]}")
    specs = [spec for spec in size_specs(small) if only_tests is None or spec[0] in only_tests]
    done = {(r["test"], r["N"], r["D"]) for r in _start(path, meta)}
    written = 0
    # the cheap cells first: an interrupted study has every test at the smaller sizes
    cells = [(n, dim, spec) for n in sizes_n for dim in sizes_d for spec in specs]
    for n, dim, (name, kind, options) in cells:
        if (name, n, dim) in done:
            continue
        # the parametric bootstrap is exact whenever level * (B + 1) is an integer: B = 19 suffices for the size
        b = b_wild if kind == "ksd" and options.get("slices") != "analytic" else 19
        prior = "gaussian" if kind == "epps_pulley" else options["prior"]
        params = {} if kind == "epps_pulley" else _prior_params(prior, dim)
        q = priors.get(prior, **params)
        g = torch.Generator().manual_seed(seed + 7919 * n + 104729 * dim)
        t0 = time.time()
        pvalues = [gof.gof_test(kind, q.sample(n, dim, generator=g, dtype=torch.float64),
                                num_bootstrap=b, generator=g, **options, **params).pvalue
                   for _ in range(reps)]
        rej = sum(p <= LEVEL for p in pvalues)
        lo, hi = binomial_region(reps)
        row = {"test": name, "kind": kind, "N": n, "D": dim, "reps": reps, "B": b,
               "rejections": rej, "rate": rej / reps, "region99": [lo, hi],
               "inside": lo <= rej <= hi, "seconds": round(time.time() - t0, 2),
               "pvalues": [round(p, 6) for p in pvalues]}
        _append(path, [row])
        written += 1
        print(f"size {name:34s} N={n:5d} D={dim:4d}: {rej:4d}/{reps} rejections "
              f"(99% region [{lo}, {hi}]) {'ok' if lo <= rej <= hi else 'OUTSIDE'} "
              f"{row['seconds']:.1f}s", flush=True)
    return written


def alternatives(n: int, dim: int, generator: torch.Generator) -> dict:
    """Alternatives to N(0, I_D), each (N, D), most with unit variance per dimension (float64).

    * ``mean_shift``: N(0.4 e_1, I);
    * ``anisotropic``: the first D/2 coordinates scaled by 1.25;
    * ``heavy_tails``: multivariate Student-t with 5 degrees of freedom, unit variance;
    * ``light_tails``: independent uniforms on [-sqrt 3, sqrt 3];
    * ``low_rank``: rank-D/4 embeddings (unit variance per dimension) plus isotropic noise of variance 0.1;
    * ``mixture``: two Gaussians at +-0.9 e_1 with variance 0.19 along e_1 (unit variance overall).
    """
    def randn(*shape):
        return torch.randn(*shape, generator=generator, dtype=torch.float64)

    z = randn(n, dim)
    aniso = torch.ones(dim, dtype=torch.float64)
    aniso[: max(1, dim // 2)] = 1.25
    t = priors.StudentT(nu=NU, sigma=math.sqrt((NU - 2) / NU)).sample(n, dim, generator=generator,
                                                                         dtype=torch.float64)
    u = (torch.rand(n, dim, generator=generator, dtype=torch.float64) * 2 - 1) * math.sqrt(3.0)
    r = max(1, dim // 4)
    basis = torch.linalg.qr(randn(dim, r))[0]                    # (D, r) orthonormal
    low = randn(n, r) @ basis.T * math.sqrt(dim / r)             # covariance (D/r) P, trace D
    low = math.sqrt(0.9) * low + math.sqrt(0.1) * randn(n, dim)
    sign = (torch.rand(n, generator=generator) < 0.5).to(torch.float64) * 2 - 1
    mix = z.clone()
    mix[:, 0] = 0.9 * sign + math.sqrt(1 - 0.81) * z[:, 0]
    shift = z.clone()
    shift[:, 0] += 0.4
    return {"null": randn(n, dim), "mean_shift": shift, "anisotropic": z * aniso, "heavy_tails": t,
            "light_tails": u, "low_rank": low, "mixture": mix}


POWER_TESTS = {
    "ksd-gaussian": ("ksd", {"kernel": "gaussian"}),
    "ksd-imq": ("ksd", {"kernel": "imq"}),
    "mmd-gaussian": ("mmd", {"kernel": "gaussian"}),
    "epps_pulley-16": ("epps_pulley", {"slices": 16}),
}


def _henze_zirkler(z: np.ndarray) -> float:
    import pingouin
    return float(pingouin.multivariate_normality(z, alpha=LEVEL).pval)


def _hyppo_mmd(z: np.ndarray, rng: np.random.Generator, reps: int) -> float:
    from hyppo.ksample import MMD
    y = rng.standard_normal(z.shape)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)   # hyppo warns below 1000 permutations
        return float(MMD().test(z, y, reps=reps, workers=1, random_state=int(rng.integers(2 ** 31))).pvalue)


def run_power(small: bool, seed: int, path: Path, meta: dict) -> int:
    """Append the rows of the missing power settings to ``path``; returns the number of rows written."""
    settings = [(200, 16, 100)] if small else [(200, 16, 500), (1000, 128, 100)]
    b = 99 if small else 199
    b_parametric = 39 if small else 199
    done = {(r["N"], r["D"]) for r in _start(path, meta)}
    written = 0
    for n, dim, reps in settings:
        if (n, dim) in done:
            continue
        counts, seconds = {}, {}
        g = torch.Generator().manual_seed(seed + n + dim)
        rng = np.random.default_rng(seed + n + dim)
        t_setting = time.time()
        for _ in range(reps):
            for alt, z in alternatives(n, dim, g).items():
                for name, (kind, options) in POWER_TESTS.items():
                    t0 = time.time()
                    p = gof.gof_test(kind, z, num_bootstrap=b if kind == "ksd" else b_parametric,
                                     generator=g, **options).pvalue
                    seconds[name] = seconds.get(name, 0.0) + time.time() - t0
                    counts[alt, name] = counts.get((alt, name), 0) + (p <= LEVEL)
                x = z.numpy()
                for name, fn in (("pingouin-henze_zirkler", lambda: _henze_zirkler(x)),
                                 ("hyppo-mmd", lambda: _hyppo_mmd(x, rng, b_parametric))):
                    t0 = time.time()
                    p = fn()
                    seconds[name] = seconds.get(name, 0.0) + time.time() - t0
                    counts[alt, name] = counts.get((alt, name), 0) + (p <= LEVEL)
        rows = []
        for (alt, name), rej in counts.items():
            lo, hi = st.binomtest(int(rej), reps).proportion_ci(0.95)
            rows.append({"alternative": alt, "test": name, "N": n, "D": dim, "reps": reps,
                         "B": b if name.startswith("ksd") else b_parametric,
                         "rejections": int(rej), "rate": rej / reps, "ci95": [round(lo, 4), round(hi, 4)],
                         "seconds_per_test": round(seconds[name] / (reps * 7), 4),
                         "setting_seconds": round(time.time() - t_setting, 1)})
            print(f"power N={n} D={dim} {alt:12s} {name:24s} {rej / reps:.3f}", flush=True)
        _append(path, rows)
        written += len(rows)
    return written


def _start(path: Path, meta: dict) -> list:
    """The rows ``path`` holds (without its meta row), creating it with ``meta`` when absent.

    A file written with other sizes (``small``) or another seed is refused: its rows would mix.
    """
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        _append(path, [{"event": "meta", **meta}])
        return []
    lines = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    head = lines[0] if lines and lines[0].get("event") == "meta" else {}
    for key in ("small", "seed"):
        if head.get(key) != meta[key]:
            raise SystemExit(f"{path}: written with {key}={head.get(key)!r}, this run has {key}={meta[key]!r}; "
                             f"use another --out folder")
    return [r for r in lines if r.get("event") != "meta"]


def _append(path: Path, rows: list) -> None:
    """Append ``rows`` as JSON lines, flushed to disk before returning."""
    with open(path, "a") as f:
        f.write("".join(json.dumps(r) + "\n" for r in rows))
        f.flush()
        os.fsync(f.fileno())


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m kerjepa.training.gof_study", description=__doc__.split("\n")[0])
    parser.add_argument("--small", action="store_true", help="the reduced study the book plots (a few CPU-minutes)")
    parser.add_argument("--out", default="data/results", help="folder for gof_size.jsonl and gof_power.jsonl")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--only", choices=("size", "power"), default=None, help="run one half of the study")
    parser.add_argument("--n", type=int, nargs="+", default=None, help="size study: only these N")
    parser.add_argument("--d", type=int, nargs="+", default=None, help="size study: only these D")
    parser.add_argument("--tests", nargs="+", default=None, help="size study: only these tests (by name)")
    args = parser.parse_args(argv)
    out = Path(args.out)
    meta = {"small": args.small, "seed": args.seed, "level": LEVEL, "torch": torch.__version__,
            "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} logical CPUs, "
                       f"torch threads {torch.get_num_threads()}",
            "command": "python -m kerjepa.training.gof_study" + (" --small" if args.small else "")}
    suffix = "" if args.small else "_full"
    if args.only in (None, "size"):
        run_size(args.small, args.seed, out / f"gof_size{suffix}.jsonl", meta, args.n, args.d, args.tests)
    if args.only in (None, "power"):
        run_power(args.small, args.seed, out / f"gof_power{suffix}.jsonl", meta)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
