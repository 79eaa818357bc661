"""Accuracy and speed of kerjepa.special.hyp1f1 (the analytic-slicing kernel of Theorems 7-9).

Prints two tables:

1. the maximum relative error against mpmath (30 digits) on a dense grid, z = -c with c from 0 to
   1e6 (log-spaced plus a linear stretch on [0, 50]), for the families the estimators use,
   (1/2, D/2) and (3/2, D/2 + 1) over D = 1..4096, in float64 and float32, for the value and for
   the derivative d/dz taken by autograd (which evaluates the (a + 1, b + 1) member);
2. the time to evaluate hyp1f1(1/2, D/2, z) on an N x N float32 matrix (N = 4096) divided by the
   time of torch.exp on the same matrix, measured side by side (interleaved repeats, median ratio).

Usage::

    python benchmarks/bench_special.py                  # CPU
    python benchmarks/bench_special.py --device cuda    # also runs on a GPU
    python benchmarks/bench_special.py --points 400 --dims 2 16 128   # a quicker look
"""
from __future__ import annotations

import argparse
import statistics
import time

import mpmath as mp
import numpy as np
import torch

from kerjepa.special import Hyp1F1

DIMS = [1, 2, 3, 4, 5, 6, 7, 8, 10, 12, 16, 20, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512,
        768, 1024, 1536, 2048, 3072, 4096]


def grid(points: int) -> np.ndarray:
    """c in [0, 1e6]: 0, log-spaced from 1e-8, and a linear stretch where the functions bend."""
    return np.unique(np.concatenate([[0.0], np.logspace(-8, 6, points), np.linspace(0, 50, points // 4)]))


def mp_values(a: float, b: float, c: np.ndarray) -> np.ndarray:
    with mp.workdps(30):
        return np.array([float(mp.hyp1f1(a, b, -mp.mpf(float(ci)))) for ci in c])


def errors(dim: int, k: int, c: np.ndarray, device: str) -> dict:
    """Max relative errors of value and derivative for the family (k + 1/2, D/2 + k)."""
    a, b = k + 0.5, dim / 2 + k
    f = Hyp1F1.get(a, b)
    out = {}
    for dtype in (torch.float64, torch.float32):
        z = (-torch.tensor(c, dtype=dtype, device=device)).requires_grad_(True)
        cz = (-z.detach()).double().cpu().numpy()              # the arguments actually used
        value = f(z)
        (deriv,) = torch.autograd.grad(value.sum(), z)
        ref = mp_values(a, b, cz)
        ref_d = (a / b) * mp_values(a + 1, b + 1, cz)
        tiny = torch.finfo(dtype).tiny                       # D = 1 (exp) underflows below it
        ok, ok_d = ref > tiny, ref_d > tiny
        v = value.detach().double().cpu().numpy()
        d = deriv.double().cpu().numpy()
        name = "f64" if dtype == torch.float64 else "f32"
        out[name] = np.max(np.abs(v[ok] - ref[ok]) / ref[ok])
        out[name + "_d"] = np.max(np.abs(d[ok_d] - ref_d[ok_d]) / ref_d[ok_d])
    return out


def timed(fn, device: str) -> float:
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    fn()
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    return time.perf_counter() - t0


def speed(dim: int, z: torch.Tensor, repeats: int, device: str) -> tuple[float, float, float]:
    """(median exp time, median hyp1f1 time, median of the per-repeat ratios)."""
    f = Hyp1F1.get(0.5, dim / 2)
    f(z), torch.exp(z)  # warm up (and build the approximant)
    te, th, ratio = [], [], []
    for _ in range(repeats):
        e = timed(lambda: torch.exp(z), device)
        h = timed(lambda: f(z), device)
        te.append(e), th.append(h), ratio.append(h / e)
    return statistics.median(te), statistics.median(th), statistics.median(ratio)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu", help="cpu or cuda (default: cpu)")
    parser.add_argument("--points", type=int, default=1600, help="log-spaced grid points per family")
    parser.add_argument("--dims", type=int, nargs="+", default=DIMS, help="feature dimensions D")
    parser.add_argument("--n", type=int, default=4096, help="matrix edge N for the timing")
    parser.add_argument("--repeats", type=int, default=7, help="interleaved timing repeats")
    parser.add_argument("--skip-accuracy", action="store_true")
    args = parser.parse_args()
    device = args.device
    print(f"device: {device}  torch {torch.__version__}  threads {torch.get_num_threads()}")

    if not args.skip_accuracy:
        c = grid(args.points)
        print(f"\nmax relative error vs mpmath, {len(c)} points c in [0, 1e6] (z = -c); "
              "d/dz = derivative via autograd")
        print(f"{'D':>5} {'(a, b)':>16} {'f64':>9} {'f64 d/dz':>9} {'f32':>9} {'f32 d/dz':>9}")
        worst = {}
        for dim in args.dims:
            for k in (0, 1):
                e = errors(dim, k, c, device)
                for key, val in e.items():
                    worst[key] = max(worst.get(key, 0.0), val)
                fam = f"({k + 0.5:g}, {dim / 2 + k:g})"
                print(f"{dim:>5} {fam:>16} {e['f64']:9.1e} {e['f64_d']:9.1e} {e['f32']:9.1e} {e['f32_d']:9.1e}")
        print(f"{'max':>22} {worst['f64']:9.1e} {worst['f64_d']:9.1e} {worst['f32']:9.1e} {worst['f32_d']:9.1e}"
              "   (targets: 1e-10 float64, 2e-6 float32)")

    n = args.n
    gen = torch.Generator().manual_seed(0)
    z = (-10.0 * torch.rand(n, n, generator=gen)).to(device)  # c in [0, 10]: exp stays normal
    print(f"\nfloat32 time on a {n}x{n} matrix, z = -U[0, 10], median of {args.repeats} interleaved repeats")
    print(f"{'D':>5} {'exp ms':>8} {'1F1 ms':>8} {'ratio':>6}")
    for dim in (1, 2, 3, 4, 8, 16, 64, 128, 1024, 4096):
        te, th, ratio = speed(dim, z, args.repeats, device)
        print(f"{dim:>5} {1e3 * te:8.1f} {1e3 * th:8.1f} {ratio:6.2f}")
    print("(target: ratio <= 4)")


if __name__ == "__main__":
    main()
