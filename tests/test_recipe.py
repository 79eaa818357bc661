"""The Table 1 recipe: the prior scale convention, the calibrated lambdas, LeJEPA's MINIMAL schedule, and
what a run reports (last and best online probe, binomial errors, LeJEPA's linear-probe protocol)."""
from __future__ import annotations

import json
import math

import pytest
import torch

import kerjepa
from kerjepa import priors
from kerjepa.calibration import calibrate_lambda, lambda_from_lejepa
from kerjepa.training import config as C
from kerjepa.training import loop as T
from test_data import make_imagenette

N, D = 256, 128


# ------------------------------------------------------------------ 1. the prior scale convention

def test_laplace_rows_use_unit_per_coordinate_variance():
    laplace = [n for n in C.preset_names() if n.startswith(("table1/", "variants/")) and "laplace" in n]
    assert len(laplace) == 5   # the four Laplace rows of Table 1 and the marginal-target variant
    for name in laplace:
        cfg = C.get_preset(name)
        sigma = cfg.reg["sigma"]
        if cfg.reg.get("target_cf") == "paper":   # Figure 1's 1-D Laplace target: variance 2 sigma^2
            assert 2 * sigma ** 2 == pytest.approx(1.0, rel=1e-12)
        else:
            assert sigma == priors.unit_variance_sigma("laplace", cfg.proj_dim) == pytest.approx(1 / math.sqrt(129))
    assert C.get_preset("table1/mmd-sliced-gaussian-laplace").reg["target_cf"] == "paper"
    assert "target_cf" not in C.get_preset("variants/mmd-sliced-gaussian-laplace-marginal").reg  # exact marginal


def _prior_batch(reg_spec, gen):
    """N draws from the distribution the row's regularizer is zero at, in float64."""
    if reg_spec.get("target_cf") == "paper":   # x = sqrt(W) g, W ~ Exp(1), g ~ N(0, 2 sigma^2 I): CF 1/(1 + sigma^2|t|^2)
        w = -torch.log(torch.rand(N, 1, generator=gen, dtype=torch.float64))
        return w.sqrt() * torch.randn(N, D, generator=gen, dtype=torch.float64) * math.sqrt(2) * reg_spec["sigma"]
    if reg_spec.get("prior") == "laplace":
        return priors.Laplace(sigma=reg_spec["sigma"]).sample(N, D, generator=gen, dtype=torch.float64)
    return torch.randn(N, D, generator=gen, dtype=torch.float64)


def _rank_deficient(gen, rank=8):
    """Rank-8 batch with unit per-coordinate variance, the same scale as the priors."""
    mix = torch.randn(rank, D, generator=gen, dtype=torch.float64) / math.sqrt(rank)
    return torch.randn(N, rank, generator=gen, dtype=torch.float64) @ mix


def _excess(reg_spec):
    """The row's statistic minus its expectation at the prior: the U-statistic (zero-mean there), or for
    SIGReg its V-statistic minus the closed form sum_q w_q (1 - exp(-t_q^2)) of its prior mean."""
    if reg_spec["kind"] == "epps_pulley":
        reg = kerjepa.regularizer(**reg_spec)
        t = torch.linspace(0, 3, reg_spec["n_points"], dtype=torch.float64)
        w = torch.full_like(t, 2 * 3 / (len(t) - 1))
        w[0] = w[-1] = 3 / (len(t) - 1)
        mean_at_prior = float((w * torch.exp(-t * t / 2) * (1 - torch.exp(-t * t))).sum())
        return lambda z: float(reg(z)) - mean_at_prior
    reg = kerjepa.regularizer(**{**reg_spec, "estimator": "u"})
    return lambda z: float(reg(z))


@pytest.mark.parametrize("name", [n for n in C.preset_names() if n.startswith(("table1/", "variants/"))])
def test_every_row_penalises_a_rank_deficient_batch_far_more_than_its_prior(name):
    # Measured (N = 256, D = 128, 5 seeds): ratios 28 (IMQ / Gaussian) to 138 (Gaussian KSD / Laplace).
    spec = C.get_preset(name).reg
    excess = _excess(spec)
    at_prior = [excess(_prior_batch(spec, torch.Generator().manual_seed(100 + s))) for s in range(3)]
    collapsed = [excess(_rank_deficient(torch.Generator().manual_seed(200 + s))) for s in range(3)]
    assert min(collapsed) > 10 * max(map(abs, at_prior)), (collapsed, at_prior)


def test_without_the_convention_the_laplace_ksd_barely_sees_collapse():
    # sigma = 1 in D = 128 puts the prior's radius near D and the batch's near sqrt(D): a collapsed batch then
    # scores about what a full-rank batch of the same scale does, and its gradient is tiny
    gen = torch.Generator().manual_seed(0)
    collapsed, full = _rank_deficient(gen), torch.randn(N, D, generator=gen, dtype=torch.float64)
    unit_sigma = kerjepa.regularizer("ksd", prior="laplace", sigma=1.0)
    convention = kerjepa.regularizer("ksd", prior="laplace", sigma=priors.unit_variance_sigma("laplace", D))
    assert float(unit_sigma(collapsed)) < 2 * float(unit_sigma(full))                  # measured 1.3x
    assert float(convention(collapsed)) > 10 * float(convention(full))                 # measured 49x
    grad = kerjepa.calibration.row_gradient_norm
    assert grad(convention, collapsed) > 10 * grad(unit_sigma, collapsed)               # measured 18x


# ------------------------------------------------------------------ 2. calibrated lambda per row

def test_every_preset_row_has_its_calibrated_lambda():
    rows = C.calibration_rows()
    assert set(C.CALIBRATED_LAMBDA) == set(rows)
    assert all(v > 0 and math.isfinite(v) for v in C.CALIBRATED_LAMBDA.values())
    for name in C.preset_names():
        cfg = C.get_preset(name)
        if name.startswith(("table1/", "variants/")):
            assert cfg.lam == C.CALIBRATED_LAMBDA[name]
        elif name.startswith(("fig2/", "fig3/")):
            assert cfg.lam == C.CALIBRATED_LAMBDA[name.rsplit("-e", 1)[0]]
    assert C.CALIBRATED_LAMBDA["table1/lejepa"] == pytest.approx(C.REFERENCE_LAMBDA, rel=1e-5)
    assert C.REFERENCE_LAMBDA == lambda_from_lejepa(0.02, views=4, dim=128)
    assert C.LAMBDA_SWEEP == (0.25, 0.5, 1.0, 2.0, 4.0)


@pytest.mark.slow
@pytest.mark.parametrize("key", ["table1/ksd-unsliced-imq-gaussian", "fig3/ksd-d16-sinf"])
def test_recorded_lambdas_are_what_the_calibration_computes(key):
    from kerjepa.training.calibrate import calibrated_lambda
    assert calibrated_lambda(key) == pytest.approx(C.CALIBRATED_LAMBDA[key], rel=1e-4)


def test_calibrated_rows_push_as_hard_as_sigreg_on_the_reference_family():
    # geometric-mean gradient ratio against SIGReg is 1 at the calibrated lambda (a fast, small-D check)
    zs = kerjepa.calibration.reference_batches(16, num=64)
    ref = kerjepa.regularizer("epps_pulley", slices=64, n_points=21)
    reg = kerjepa.regularizer("ksd", kernel="imq")
    lam = calibrate_lambda(reg, ref, 3.0, zs)
    logs = [math.log(lam * kerjepa.calibration.row_gradient_norm(reg, z)
                     / (3.0 * kerjepa.calibration.row_gradient_norm(ref, z))) for z in zs]
    assert sum(logs) / len(logs) == pytest.approx(0.0, abs=1e-12)


# ------------------------------------------------------------------ 3. lejepa/minimal is LeJEPA's MINIMAL recipe

def _minimal_torch_schedule(spe, epochs, steps):
    """MINIMAL.md's definition with PyTorch's schedulers: groups (net: cfg.lr, probe: 1e-3), LinearLR(0.01) over
    one epoch, then CosineAnnealingLR(T_max = total - warmup, eta_min = 1e-3), stepped once per batch."""
    from torch.optim.lr_scheduler import CosineAnnealingLR, LinearLR, SequentialLR
    p, q = torch.nn.Parameter(torch.zeros(1)), torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.AdamW([{"params": [p], "lr": 2e-3, "weight_decay": 5e-2},
                             {"params": [q], "lr": 1e-3, "weight_decay": 1e-7}])
    warmup, total = spe, spe * epochs
    sched = SequentialLR(opt, [LinearLR(opt, start_factor=0.01, total_iters=warmup),
                               CosineAnnealingLR(opt, T_max=total - warmup, eta_min=1e-3)], milestones=[warmup])
    out, wanted = {}, set(steps)
    for s in range(max(steps) + 1):
        if s in wanted:
            out[s] = [g["lr"] for g in opt.param_groups]
        opt.step()
        sched.step()
    return out


def test_lejepa_minimal_lr_matches_minimal_schedule():
    cfg = C.get_preset("lejepa/minimal")
    spe = 9469 // cfg.batch_size                     # ImageNette's 9,469 training images, drop_last
    total, warmup = cfg.epochs * spe, round(cfg.warmup_epochs * spe)
    steps = [0, 1, spe // 2, spe - 1, spe, spe + 1, total // 2, total - 2, total - 1]
    expected = _minimal_torch_schedule(spe, cfg.epochs, steps)
    for s in steps:
        ours = [T.scheduled_lr(base, s, total, warmup, cfg) for base in (cfg.lr, cfg.probe_lr)]
        assert ours == pytest.approx(expected[s], rel=1e-9, abs=1e-12), s
    assert T.scheduled_lr(cfg.probe_lr, total // 2, total, warmup, cfg) == pytest.approx(1e-3, rel=1e-12)
    assert T.scheduled_lr(cfg.lr, total, total, warmup, cfg) == pytest.approx(1e-3, rel=1e-12)   # absolute floor
    table1 = C.get_preset("table1/lejepa")        # the paper's rows keep the relative floor lr/1000
    assert T.scheduled_lr(table1.lr, total, total, warmup, table1) == pytest.approx(5e-7, rel=1e-12)


def test_lejepa_minimal_decays_every_parameter():
    cfg = C.get_preset("lejepa/minimal")
    assert (cfg.lam, cfg.weighting, cfg.alignment, cfg.proj_dim, cfg.lr, cfg.weight_decay, cfg.views,
            cfg.batch_size, cfg.epochs, cfg.probe_lr, cfg.probe_wd) == (
        0.02, "lejepa", "center_mse", 16, 2e-3, 0.05, 4, 256, 800, 1e-3, 1e-7)
    small = C.get_preset("smoke")
    for weight_decay_all, exempt in ((True, 0), (False, None)):
        net = T.build_model(small.replace(weight_decay_all=weight_decay_all), 3, 10)
        groups = T.param_groups(net, small.replace(weight_decay_all=weight_decay_all, weight_decay=0.05))
        wd = {id(p): g["weight_decay"] for g in groups for p in g["params"]}
        assert set(wd) == {id(p) for p in net.parameters()}              # every parameter, once
        assert all(wd[id(p)] == 1e-7 for p in net.probe.parameters())
        encoder = [(n, p) for n, p in net.named_parameters() if not n.startswith("probe.")]
        undecayed = [n for n, p in encoder if wd[id(p)] == 0]
        if exempt == 0:
            assert undecayed == [] and all(wd[id(p)] == 0.05 for _, p in encoder)
        else:
            assert "backbone.cls_token" in undecayed and "backbone.pos_embed" in undecayed
            assert all(wd[id(p)] == 0.05 for n, p in encoder if p.ndim >= 2 and "token" not in n and "pos" not in n)


@pytest.mark.parametrize("changes, message", [
    ({"min_lr": 1e-2}, "min_lr"), ({"min_lr": -1.0}, "min_lr"), ({"min_lr": float("nan")}, "min_lr"),
    ({"lejepa_probe_epochs": -1}, "lejepa_probe_epochs"), ({"lejepa_probe_lr": 0.0}, "lejepa_probe_lr"),
    ({"lejepa_probe_wd": -1e-6}, "lejepa_probe_wd"), ({"lejepa_probe_batch_size": 0}, "lejepa_probe_batch_size"),
    ({"weight_decay_all": "yes"}, "weight_decay_all must be of type bool")])
def test_recipe_options_are_validated(changes, message):
    with pytest.raises(C.ConfigError, match=message):
        C.get_preset("lejepa/minimal").replace(**changes)


# ------------------------------------------------------------------ 4. what a run reports

def test_binomial_stderr_is_table1s_error():
    assert 100 * T.binomial_stderr(0.9113, 3925) == pytest.approx(0.45, abs=0.005)   # the LeJEPA row's ± 0.45
    assert 100 * T.binomial_stderr(0.9190, 3925) == pytest.approx(0.44, abs=0.005)


def test_online_probe_keeps_last_and_best_with_their_epochs():
    results = {}
    for epoch, acc in enumerate([0.5, 0.8, 0.7], start=1):
        T.record_online_probe(results, acc, epoch, 400)
    probe = results["online_probe"]
    assert probe["n_val"] == 400 and results["online_probe_acc"] == 0.7
    assert probe["last"] == {"acc": 0.7, "epoch": 3, "stderr": pytest.approx(math.sqrt(0.7 * 0.3 / 400))}
    assert probe["best"] == {"acc": 0.8, "epoch": 2, "stderr": pytest.approx(math.sqrt(0.8 * 0.2 / 400))}


def test_last_blocks_cls_concatenates_the_normed_cls_tokens_of_the_last_two_blocks():
    cfg = C.get_preset("smoke").replace(micro_depth=3)
    backbone = T.build_model(cfg, 3, 10).backbone.eval()
    x = torch.randn(5, 3, cfg.img_size, cfg.img_size, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        with T.last_blocks_cls(backbone) as out:
            backbone(x)
        tokens = backbone.norm_pre(backbone._pos_embed(backbone.patch_embed(x)))
        per_block = []
        for block in backbone.blocks:
            tokens = block(tokens)
            per_block.append(backbone.norm(tokens)[:, 0])
    assert len(out) == 1 and out[0].shape == (5, 2 * cfg.micro_width)
    torch.testing.assert_close(out[0], torch.cat(per_block[-2:], dim=1))
    assert not backbone.blocks[-1]._forward_hooks   # the hooks are removed


def test_lejepa_probe_is_layernorm_linear_adamw_and_learns():
    gen = torch.Generator().manual_seed(0)
    centres = 3 * torch.randn(4, 12, generator=gen)
    ty, vy = torch.randint(0, 4, (400,), generator=gen), torch.randint(0, 4, (200,), generator=gen)
    tx = centres[ty] + torch.randn(400, 12, generator=gen)
    vx = centres[vy] + torch.randn(200, 12, generator=gen)
    acc = T.lejepa_probe_accuracy(tx, ty, vx, vy, epochs=20, lr=1e-2, batch_size=64)
    assert acc > 0.9
    assert acc == T.lejepa_probe_accuracy(tx, ty, vx, vy, epochs=20, lr=1e-2, batch_size=64)   # seeded
    # LayerNorm makes it blind to a per-sample rescaling of the features
    scale = torch.rand(600, 1, generator=gen) * 5 + 0.1
    assert T.lejepa_probe_accuracy(tx * scale[:400], ty, vx * scale[400:], vy, epochs=20, lr=1e-2, batch_size=64) > 0.9


@pytest.mark.slow
def test_results_json_reports_the_protocol_the_errors_and_last_and_best(tmp_path):
    root = make_imagenette(tmp_path)
    cfg = C.get_preset("smoke").replace(data_root=str(root), epochs=3, max_steps=3, eval_every=1,
                                        lejepa_probe_epochs=3)
    T.train(cfg, out=tmp_path / "run")
    res = json.loads((tmp_path / "run" / T.RESULTS).read_text())
    n_val = res["online_probe"]["n_val"]
    assert n_val == res["final"]["n_val"] > 0
    last, best = res["online_probe"]["last"], res["online_probe"]["best"]
    assert last["epoch"] == 3 and last["acc"] == res["online_probe_acc"] and best["acc"] >= last["acc"]
    assert best["epoch"] in (1, 2, 3)
    for entry in (last, best):
        assert entry["stderr"] == pytest.approx(math.sqrt(entry["acc"] * (1 - entry["acc"]) / n_val))
    fin = res["final"]
    assert 0 <= fin["lejepa_probe_acc"] <= 1
    assert fin["lejepa_probe_stderr"] == pytest.approx(T.binomial_stderr(fin["lejepa_probe_acc"], n_val))
    assert {"knn_acc", "linear_probe_acc"} <= set(fin)
    assert res["reported"]["diagnostics"] == ["final.knn_acc", "final.linear_probe_acc"]


def test_readme_table1_lambdas_are_the_calibrated_ones():
    import pathlib
    import re
    readme = (pathlib.Path(__file__).resolve().parents[1] / "README.md").read_text()
    rows = re.findall(r"^\| [^|]+ \| [^|]+ \| `(table1/[^`]+)` \| ([0-9.]+) \|$", readme, re.M)
    assert [name for name, _ in rows] == [n for n in C.PRESETS if n.startswith("table1/")]
    for name, lam in rows:
        assert float(lam) == pytest.approx(C.CALIBRATED_LAMBDA[name], rel=5e-3), name
    variant = re.search(r"`variants/mmd-sliced-gaussian-laplace-marginal` \(λ ([0-9.]+)\)", readme).group(1)
    assert float(variant) == pytest.approx(C.CALIBRATED_LAMBDA["variants/mmd-sliced-gaussian-laplace-marginal"], rel=5e-3)
    assert re.search(r"lam = ([0-9.]+) ", readme).group(1) == f"{C.CALIBRATED_LAMBDA['table1/ksd-unsliced-imq-gaussian']:.4g}"
    assert f"dim=128)` = {C.REFERENCE_LAMBDA:.2f}" in readme and f"SIGReg does at {C.REFERENCE_LAMBDA:.2f}" in readme
