"""Goodness-of-fit tests (kerjepa.gof) against independent references and their null behaviour.

References never reuse the library's Stein kernel: it is written from its definition
:math:`s(x)^\\top s(y)k + s(x)^\\top\\nabla_y k + \\nabla_x k^\\top s(y) + \\operatorname{tr}\\nabla_x\\nabla_y^\\top k`
with kernel derivatives and scores from autograd, pair by pair in float64. Calibration is
checked against the binomial law of the number of rejections under the null.
"""
from __future__ import annotations

import json
import math
import types

import numpy as np
import pytest
import scipy.stats as st
import torch
from torch.func import grad, jacrev

from kerjepa import functional as F, gof, kernels, priors
from kerjepa.modules import regularizer
from kerjepa.slicing import gauss_hermite, random_directions
from tolerances import RTOL

F64 = torch.float64


# ----------------------------------------------------------------------------------------------
# independent references
# ----------------------------------------------------------------------------------------------
def base_kernel(name, dim):
    if name == "gaussian":
        gamma = 1.0 / (2 * dim)
        return lambda x, y: torch.exp(-gamma * ((x - y) ** 2).sum())
    alpha = 1.0 / (2 * dim)
    return lambda x, y: (1.0 + alpha * ((x - y) ** 2).sum()) ** -0.5


def prior_case(name, dim):
    if name == "gaussian":
        return priors.Gaussian(), {}
    if name == "laplace":
        sigma = priors.unit_variance_sigma("laplace", dim)
        return priors.Laplace(sigma=sigma), {"sigma": sigma}
    sigma = priors.unit_variance_sigma("student_t", dim, nu=5.0)
    return priors.StudentT(nu=5.0, sigma=sigma), {"nu": 5.0, "sigma": sigma}


def stein_matrix_loops(z, k, prior):
    """(N, N) Stein matrix from the definition, scores from autograd of log_prob, float64 loops."""
    logq = lambda x: prior.log_prob(x[None])[0]  # noqa: E731
    score = [grad(logq)(zi) for zi in z]
    n = z.shape[0]
    h = torch.empty(n, n, dtype=F64)
    for i in range(n):
        for j in range(n):
            x, y = z[i], z[j]
            gx, gy = grad(k, 0)(x, y), grad(k, 1)(x, y)
            trace = torch.trace(jacrev(grad(k, 0), 1)(x, y))
            h[i, j] = score[i] @ score[j] * k(x, y) + score[i] @ gy + gx @ score[j] + trace
    return h


def signs(seed, b, n):
    """The Rademacher multipliers ksd_test draws first from a generator seeded with ``seed``."""
    e = torch.randint(0, 2, (b, n), generator=torch.Generator().manual_seed(seed), dtype=torch.int8)
    return e.to(F64) * 2 - 1


def unit_directions(k, dim, generator):
    """The K directions a sliced test draws first (float32 draws, unit length in float64)."""
    theta = random_directions(k, dim, generator, dtype=F64)
    return theta / theta.norm(dim=1, keepdim=True)


def binomial_region(reps, alpha=0.05, coverage=0.99):
    """Counts of rejections a level-alpha test shows in ``reps`` null replications, w.p. >= coverage."""
    lo = st.binom.ppf((1 - coverage) / 2, reps, alpha)
    hi = st.binom.isf((1 - coverage) / 2, reps, alpha)
    return int(lo), int(hi)


# ----------------------------------------------------------------------------------------------
# the wild bootstrap against the definition
# ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("kernel", ["gaussian", "imq"])
@pytest.mark.parametrize("prior", ["gaussian", "laplace", "student_t"])
@pytest.mark.parametrize("estimator", ["u", "v"])
def test_ksd_wild_bootstrap_matches_double_loop(kernel, prior, estimator):
    n, dim, b = 9, 3, 17
    z = torch.randn(n, dim, dtype=F64, generator=torch.Generator().manual_seed(5)) * 1.3
    q, params = prior_case(prior, dim)
    h = stein_matrix_loops(z, base_kernel(kernel, dim), q)
    res = gof.ksd_test(z, kernel=kernel, prior=prior, estimator=estimator, num_bootstrap=b,
                       generator=torch.Generator().manual_seed(11), **params)
    if estimator == "u":
        h = h - torch.diag(torch.diag(h))
    norm = n * (n - 1) if estimator == "u" else n * n
    e = signs(11, b, n)
    # the library's Laplace score is smoothed at radius eps*sigma = 1e-3 sigma (kerjepa.priors.Laplace):
    # relative change about eps^2 sigma^2 / |z|^2 against the exact score of the reference
    rtol = 1e-5 if prior == "laplace" else 1e-10
    ref = torch.einsum("bi,ij,bj->b", e, h, e) / norm
    torch.testing.assert_close(res.replicates, ref, rtol=rtol, atol=rtol * float(ref.abs().max()))
    assert res.statistic == pytest.approx(float(h.sum()) / norm, rel=rtol, abs=1e-12)
    assert res.statistic == pytest.approx(float(F.ksd2(z, kernels.get(kernel), q, estimator)), rel=1e-10)


def test_ksd_chunked_equals_dense():
    z = torch.randn(37, 5, dtype=F64, generator=torch.Generator().manual_seed(2))
    kw = dict(kernel="imq", prior="laplace", num_bootstrap=50)
    dense = gof.ksd_test(z, backend="dense", generator=torch.Generator().manual_seed(3), **kw)
    chunked = gof.ksd_test(z, backend="chunked", block_size=8, generator=torch.Generator().manual_seed(3), **kw)
    torch.testing.assert_close(chunked.replicates, dense.replicates, rtol=1e-10, atol=1e-13)
    assert chunked.statistic == pytest.approx(dense.statistic, rel=1e-10)


@pytest.mark.parametrize("estimator", ["u", "v"])
def test_sliced_ksd_wild_bootstrap_matches_spectral_double_loop(estimator):
    n, dim, k, u_knots, b = 8, 4, 3, 5, 13
    z = torch.randn(n, dim, dtype=F64, generator=torch.Generator().manual_seed(7))
    prior = priors.StudentT(nu=4.0)
    res = gof.ksd_test(z, prior="student_t", nu=4.0, slices=k, num_knots=u_knots, estimator=estimator,
                       num_bootstrap=b, generator=torch.Generator().manual_seed(9))
    g = torch.Generator().manual_seed(9)
    theta = unit_directions(k, dim, g)                      # drawn first, then the multipliers
    e = torch.randint(0, 2, (b, n), generator=g, dtype=torch.int8).to(F64) * 2 - 1
    t, w = gauss_hermite(u_knots, 0.5)
    p, s = z @ theta.T, prior.score(z) @ theta.T
    h = torch.zeros(n, n, dtype=F64)
    for i in range(n):
        for j in range(n):
            # Re[(s_i + i t)(s_j - i t) e^{i t (p_i - p_j)}], averaged over slices, weighted over knots
            for kk in range(k):
                d = p[i, kk] - p[j, kk]
                h[i, j] += (w * ((s[i, kk] * s[j, kk] + t * t) * torch.cos(t * d)
                                 - t * (s[j, kk] - s[i, kk]) * torch.sin(t * d))).sum() / k
    if estimator == "u":
        h.fill_diagonal_(0.0)
    norm = n * (n - 1) if estimator == "u" else n * n
    torch.testing.assert_close(res.replicates, torch.einsum("bi,ij,bj->b", e, h, e) / norm, rtol=1e-9, atol=1e-12)
    ref = F.sliced_ksd2(z, kernels.Gaussian(), prior, num_knots=u_knots, directions=theta, estimator=estimator)
    assert res.statistic == pytest.approx(float(ref), rel=1e-9)


# ----------------------------------------------------------------------------------------------
# the parametric bootstrap recomputes the library's statistic on prior draws
# ----------------------------------------------------------------------------------------------
PARAMETRIC = [
    dict(kind="mmd", kernel="gaussian", prior="gaussian"),
    dict(kind="mmd", kernel="imq", prior="gaussian", estimator="v"),
    dict(kind="mmd", kernel="gaussian", prior="laplace", slices=6, num_knots=7),
    dict(kind="mmd", kernel="gaussian", prior="laplace", slices=6, target_cf="paper", estimator="u"),
    dict(kind="mmd", kernel="gaussian", prior="student_t", nu=5.0, slices=4),
    dict(kind="epps_pulley", slices=5),
]


@pytest.mark.parametrize("spec", PARAMETRIC, ids=lambda s: "-".join(str(v) for v in s.values()))
def test_vectorised_null_statistic_equals_the_functional(spec):
    n, dim = 11, 3
    reg = regularizer(**spec)
    ys = torch.randn(4, n, dim, dtype=F64, generator=torch.Generator().manual_seed(1)) * 1.2
    like = ys[0]
    batched, _ = gof._batched_statistic(reg, dim, torch.Generator().manual_seed(4), like)
    dirs = unit_directions(spec.get("slices", 1), dim, torch.Generator().manual_seed(4))
    for y, value in zip(ys, batched(ys)):
        if spec["kind"] == "epps_pulley":
            ref = F.epps_pulley(y, directions=dirs)
        elif "slices" in spec:
            ref = F.sliced_mmd2(y, reg.kernel, reg.prior, num_knots=reg.num_knots, directions=dirs,
                                estimator=reg.estimator, target_cf=reg.target_cf)
        else:
            ref = F.mmd2(y, reg.kernel, reg.prior, reg.estimator)
        assert float(value) == pytest.approx(float(ref), rel=1e-10, abs=1e-14)


def test_parametric_replicates_are_the_statistic_of_prior_draws():
    z = torch.randn(20, 3, dtype=F64, generator=torch.Generator().manual_seed(0))
    res = gof.mmd_test(z, kernel="imq", num_bootstrap=5, generator=torch.Generator().manual_seed(8))
    draws = priors.Gaussian().sample(100, 3, generator=torch.Generator().manual_seed(8), dtype=F64).view(5, 20, 3)
    ref = torch.stack([F.mmd2(y, kernels.IMQ(), priors.Gaussian()) for y in draws])
    torch.testing.assert_close(res.replicates, ref, rtol=1e-10, atol=1e-14)
    assert res.statistic == pytest.approx(float(F.mmd2(z, kernels.IMQ(), priors.Gaussian())), rel=1e-10)


def test_analytic_and_two_sample_statistics_use_the_parametric_bootstrap():
    z = torch.randn(30, 4, dtype=F64, generator=torch.Generator().manual_seed(0))
    a = gof.ksd_test(z, slices="analytic", num_bootstrap=9, generator=torch.Generator().manual_seed(1))
    assert "parametric" in a.method and a.statistic == pytest.approx(
        float(F.sliced_ksd2(z, kernels.Gaussian(), priors.Gaussian(), num_slices=None)), rel=1e-10)
    m = gof.mmd_test(z, prior="laplace", prior_samples=40, num_bootstrap=9, generator=torch.Generator().manual_seed(1))
    assert m.num_bootstrap == 9 and 0 < m.pvalue <= 1


# ----------------------------------------------------------------------------------------------
# p-value and critical value
# ----------------------------------------------------------------------------------------------
def test_pvalue_and_critical_value_agree():
    rng = np.random.default_rng(0)
    for b in (1, 4, 19, 99, 100, 250):
        reps = torch.from_numpy(rng.normal(size=b).round(1))   # ties on purpose
        for level in (0.01, 0.05, 0.1, 0.5):
            c = gof.critical_value(reps, level)
            for stat in np.concatenate([reps.numpy(), rng.normal(size=20)]):
                p = (1 + np.sum(reps.numpy() >= stat)) / (1 + b)
                assert gof.pvalue_from_replicates(float(stat), reps) == pytest.approx(p)
                assert (p <= level) == (stat > c), (b, level, stat, c)


# ----------------------------------------------------------------------------------------------
# calibration and power (small versions of kerjepa.training.gof_study)
# ----------------------------------------------------------------------------------------------
CALIBRATION = [
    ("ksd", dict(kernel="gaussian", prior="gaussian")),
    ("ksd", dict(kernel="imq", prior="laplace")),
    ("ksd", dict(kernel="gaussian", prior="student_t")),
    ("mmd", dict(kernel="gaussian", prior="gaussian")),
    ("epps_pulley", dict(slices=8)),
]


@pytest.mark.parametrize("kind, spec", CALIBRATION, ids=lambda x: x if isinstance(x, str) else "-".join(map(str, x.values())))
def test_size_under_the_null_is_inside_the_binomial_interval(kind, spec):
    # alpha (B + 1) = 1: the parametric test is exact with B = 19; the wild bootstrap is asymptotic
    n, dim, reps = 50, 2, 300
    b = 99 if kind == "ksd" else 19
    spec = dict(spec)
    q, params = prior_case(spec.get("prior", "gaussian"), dim)
    spec.update(params)
    g = torch.Generator().manual_seed(2024)
    rejections = sum(gof.gof_test(kind, q.sample(n, dim, generator=g, dtype=F64), num_bootstrap=b,
                                  generator=g, **spec).reject for _ in range(reps))
    lo, hi = binomial_region(reps)
    assert lo <= rejections <= hi, f"{rejections}/{reps} rejections, 99% region [{lo}, {hi}]"


def test_pvalues_are_uniform_under_the_null():
    g = torch.Generator().manual_seed(3)
    p = [gof.ksd_test(torch.randn(60, 3, generator=g, dtype=F64), num_bootstrap=199, generator=g).pvalue
         for _ in range(200)]
    assert st.kstest(p, "uniform").pvalue > 1e-3


@pytest.mark.parametrize("kind", ["ksd", "mmd", "epps_pulley"])
def test_power_against_a_mean_shift_and_a_collapse(kind):
    g = torch.Generator().manual_seed(1)
    spec = dict(slices=32) if kind == "epps_pulley" else {}
    shifted = torch.randn(200, 8, generator=g, dtype=F64) + 0.4
    collapsed = torch.randn(200, 1, generator=g, dtype=F64) @ torch.ones(1, 8, dtype=F64)
    for z in (shifted, collapsed):
        assert gof.gof_test(kind, z, num_bootstrap=99, generator=g, **spec).pvalue == 0.01


# ----------------------------------------------------------------------------------------------
# seeds, dtypes, devices, bad input
# ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["ksd", "mmd"])
def test_seeds_are_honoured(kind):
    z = torch.randn(40, 3, generator=torch.Generator().manual_seed(0))
    run = lambda seed: gof.gof_test(kind, z, slices=8, num_bootstrap=20,  # noqa: E731
                                    generator=torch.Generator().manual_seed(seed))
    assert torch.equal(run(1).replicates, run(1).replicates)
    assert not torch.equal(run(1).replicates, run(2).replicates)


@pytest.mark.parametrize("kind", ["ksd", "mmd"])
def test_float32_agrees_with_float64(kind):
    z = torch.randn(64, 6, dtype=F64, generator=torch.Generator().manual_seed(0)) * 1.2
    r64 = gof.gof_test(kind, z, num_bootstrap=50, generator=torch.Generator().manual_seed(5))
    r32 = gof.gof_test(kind, z.float(), num_bootstrap=50, generator=torch.Generator().manual_seed(5))
    assert r32.replicates.dtype == torch.float32
    scale = float(r64.replicates.abs().max())
    torch.testing.assert_close(r32.replicates.double(), r64.replicates, rtol=0, atol=1e-4 * scale)


@pytest.mark.gpu
@pytest.mark.parametrize("kind", ["ksd", "mmd", "epps_pulley"])
def test_cuda_matches_cpu(kind):
    z = torch.randn(128, 8, dtype=F64, generator=torch.Generator().manual_seed(0))
    spec = dict(slices=16) if kind == "epps_pulley" else {}
    cpu = gof.gof_test(kind, z, num_bootstrap=64, generator=torch.Generator().manual_seed(1), **spec)
    cuda = gof.gof_test(kind, z.cuda(), num_bootstrap=64, generator=torch.Generator().manual_seed(1), **spec)
    assert cuda.replicates.device.type == "cuda"
    torch.testing.assert_close(cuda.replicates.cpu(), cpu.replicates, rtol=1e-9, atol=1e-12)
    gen = torch.Generator(device="cuda").manual_seed(1)
    assert 0 < gof.gof_test(kind, z.cuda().float(), num_bootstrap=64, generator=gen, **spec).pvalue <= 1


BAD = [
    (lambda: gof.ksd_test(torch.randn(2, 10, 3)), ValueError, "each view"),
    (lambda: gof.ksd_test(torch.randn(1, 3)), ValueError, "at least 2"),
    (lambda: gof.ksd_test(torch.tensor([[0.0, float("nan")], [1.0, 2.0]])), ValueError, "non-finite"),
    (lambda: gof.ksd_test(torch.ones(4, 2, dtype=torch.int64)), TypeError, "float32 or float64"),
    (lambda: gof.ksd_test([[0.0, 1.0]]), TypeError, "torch.Tensor"),
    (lambda: gof.mmd_test(torch.randn(8, 2), level=0.0), ValueError, "level"),
    (lambda: gof.mmd_test(torch.randn(8, 2), level=True), ValueError, "level"),
    (lambda: gof.ksd_test(torch.randn(8, 2), num_bootstrap=0), ValueError, "num_bootstrap"),
    (lambda: gof.ksd_test(torch.randn(8, 2), num_bootstrap=10.0), TypeError, "num_bootstrap"),
    (lambda: gof.ksd_test(torch.randn(8, 2), generator=0), TypeError, "generator"),
    (lambda: gof.ksd_test(torch.randn(8, 2), slices="analytic", bootstrap="wild"), ValueError, "parametric"),
    (lambda: gof.ksd_test(torch.randn(8, 2), bootstrap="permutation"), ValueError, "bootstrap"),
    (lambda: gof.ksd_test(torch.randn(8, 2), alpha=0.5), ValueError, "alpha"),
    (lambda: gof.ksd_test(torch.randn(8, 2), kernel="imq", slices=4), ValueError, "Gaussian kernel"),
    (lambda: gof.mmd_test(torch.randn(8, 2), prior="laplace"), ValueError, "prior_samples"),
    (lambda: gof.mmd_test(torch.randn(8, 2), kind="ksd"), ValueError, "kind"),
    (lambda: gof.gof_test("sigreg", torch.randn(8, 2)), ValueError, "kind"),
]


@pytest.mark.parametrize("call, error, words", BAD, ids=[b[2] for b in BAD])
def test_bad_input_raises_a_clear_error(call, error, words):
    with pytest.raises(error, match=words):
        call()


def test_result_fields():
    res = gof.ksd_test(torch.randn(30, 2, generator=torch.Generator().manual_seed(0)), num_bootstrap=39,
                       level=0.1, generator=torch.Generator().manual_seed(0))
    assert res.num_bootstrap == 39 and res.level == 0.1 and res.replicates.shape == (39,)
    assert res.reject == (res.statistic > res.critical_value)
    assert math.isinf(gof.critical_value(res.replicates, 0.01))   # 0.01 * 40 < 1: no such test
    assert "wild bootstrap" in repr(res)


# ----------------------------------------------------------------------------------------------
# the embedding-health monitor of the trainer
# ----------------------------------------------------------------------------------------------
def test_effective_rank_is_the_exponential_entropy_of_the_singular_values():
    from kerjepa.training.monitor import effective_rank
    rng = np.random.default_rng(0)
    for scales in ([1.0, 1.0, 1.0, 1.0], [3.0, 1.0, 0.1, 0.0], [1.0, 0.0, 0.0, 0.0]):
        z = rng.normal(size=(500, 4)) * scales @ np.linalg.qr(rng.normal(size=(4, 4)))[0]
        s = np.linalg.svd(z - z.mean(0), compute_uv=False)
        p = s[s > 1e-12 * s.max()] / s.sum()
        assert effective_rank(torch.from_numpy(z)) == pytest.approx(np.exp(-(p * np.log(p)).sum()), rel=1e-6)


def test_collapse_message_needs_a_collapse_and_a_rejection():
    from kerjepa.training.monitor import collapse_message
    base = {"step": 7, "test": "mmd", "dim": 16, "prior_var": 1.0, "pvalue": [0.01, 0.01],
            "effective_rank": [12.0, 11.0], "var_min": [0.5, 0.6], "var_max": [1.5, 1.4], "var_mean": [1.0, 1.0]}
    assert collapse_message(base) is None                                      # rejects, but not collapsed
    subspace = {**base, "effective_rank": [12.0, 2.5]}
    assert "low-dimensional subspace in 1 of 2" in collapse_message(subspace)
    point = {**base, "var_mean": [1e-3, 1.0]}
    assert "COLLAPSED to a point" in collapse_message(point)
    assert collapse_message({**point, "pvalue": [0.5, 0.5]}) is None          # the test accepts the prior


class _Net(torch.nn.Module):
    """Backbone = flatten; the projector maps each image to D outputs through ``head``."""

    def __init__(self, head):
        super().__init__()
        self.backbone, self.head = torch.nn.Flatten(), head

    def projector(self, x):
        return self.head(x)


@pytest.mark.parametrize("case", ["prior", "collapsed"])
def test_monitor_accepts_prior_draws_and_warns_on_collapse(case, recwarn):
    import warnings
    from kerjepa.training import config, data
    from kerjepa.training.monitor import CollapseWarning, embedding_health
    cfg = config.get_preset("digits-cpu").replace(views=2, health_bootstrap=39, health_rows=200,
                                                 reg={"kind": "ksd", "kernel": "imq", "prior": "gaussian"})
    _, val, _, _ = data.build_datasets(cfg)
    g = torch.Generator().manual_seed(0)
    if case == "prior":           # embeddings that ARE prior draws: nothing to report
        head = lambda x: torch.randn(x.shape[0], 8, generator=g)  # noqa: E731
    else:                         # every image on one line, at a tiny scale
        head = lambda x: 1e-3 * x[:, :1] * torch.ones(1, 8)       # noqa: E731
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        rec = embedding_health(_Net(head), val, cfg, torch.device("cpu"), __import__("contextlib").nullcontext, 3)
    assert rec["event"] == "health" and rec["rows"] == 200 and rec["dim"] == 8 and len(rec["pvalue"]) == 2
    collapse = [w for w in recwarn if issubclass(w.category, CollapseWarning)]
    if case == "prior":
        assert not collapse and min(rec["pvalue"]) > 0.01 and min(rec["effective_rank"]) > 7.5
    else:
        assert len(collapse) == 1 and "COLLAPSED to a point" in str(collapse[0].message)
        assert max(rec["pvalue"]) == 1 / 40 and max(rec["effective_rank"]) < 1.01


def test_tiny_run_logs_embedding_health(tmp_path):
    from kerjepa.training import config, loop
    cfg = config.get_preset("digits-cpu").replace(
        batch_size=512, micro_width=32, micro_depth=1, micro_heads=2, proj_hidden=64, proj_dim=16, views=2,
        epochs=2, eval_every=1, eval_init=False, final_eval=False, progress=False, tensorboard=False,
        health_bootstrap=19, health_rows=128, reg={"kind": "ksd", "kernel": "imq"}, lam=1.0, warmup_epochs=1)
    loop.train(cfg, out=tmp_path / "run")
    rows = [json.loads(line) for line in open(tmp_path / "run" / "metrics.jsonl")]
    health = [r for r in rows if r.get("event") == "health"]
    assert [r["step"] for r in health] == [2]                     # one evaluation before the end (2 steps/epoch)
    rec = health[0]
    assert rec["test"] == "ksd" and rec["rows"] == 128 and rec["dim"] == 16
    for key in ("statistic", "pvalue", "effective_rank", "var_min", "var_max", "var_mean"):
        assert len(rec[key]) == 2 and all(math.isfinite(v) for v in rec[key])
    assert all(0 < p <= 1 for p in rec["pvalue"]) and all(1 <= r <= 16 for r in rec["effective_rank"])


def test_study_appends_as_it_goes_and_resumes(tmp_path, monkeypatch, capsys):
    """The study writes each size cell when it finishes, and a rerun fills in only what is missing."""
    from kerjepa.training import gof_study

    calls = []

    def fake_test(kind, z, **options):
        calls.append(kind)
        return types.SimpleNamespace(pvalue=0.5)

    monkeypatch.setattr(gof_study.gof, "gof_test", fake_test)
    monkeypatch.setattr(gof_study.priors, "get", lambda name, **params: types.SimpleNamespace(
        sample=lambda n, dim, generator=None, dtype=None: torch.zeros(n, dim, dtype=dtype)))
    path = tmp_path / "size.jsonl"
    meta = {"small": True, "seed": 0}
    cells = len(gof_study.size_specs(True)) * 4
    assert gof_study.run_size(True, 0, path, meta) == cells
    lines = path.read_text().splitlines()
    assert json.loads(lines[0])["event"] == "meta" and len(lines) == 1 + cells
    path.write_text("\n".join(lines[:-3]) + "\n")                      # an interrupted study
    calls.clear()
    assert gof_study.run_size(True, 0, path, meta) == 3 and len(calls) == 3 * 200
    def without_time(text_lines):
        return [{k: v for k, v in json.loads(line).items() if k != "seconds"} for line in text_lines]

    assert without_time(path.read_text().splitlines()) == without_time(lines)
    with pytest.raises(SystemExit, match="seed=0, this run has seed=1"):
        gof_study.run_size(True, 1, path, {"small": True, "seed": 1})


@pytest.mark.parametrize("small", [True, False])
def test_every_test_of_the_study_runs(small):
    from kerjepa.training import gof_study
    g = torch.Generator().manual_seed(5)
    for name, kind, options in gof_study.size_specs(small):
        prior = "gaussian" if kind == "epps_pulley" else options["prior"]
        params = {} if kind == "epps_pulley" else gof_study._prior_params(prior, 3)
        z = priors.get(prior, **params).sample(20, 3, generator=g, dtype=F64)
        result = gof.gof_test(kind, z, num_bootstrap=19, generator=g, **options, **params)
        assert 0 < result.pvalue <= 1, name
