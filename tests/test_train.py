"""Trainer: loss and schedule, a smoke run on a fabricated ImageNette, DDP (2 gloo processes) == one
process, non-finite loss handling, and one-line errors for bad configs (faults of the command line, the
run folder, checkpoints and signals: test_cli_faults.py)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

import kerjepa
from kerjepa.training import data as kdata
from kerjepa.training import loop as T
from kerjepa.training.config import get_preset
from test_data import make_imagenette

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "OMP_WAIT_POLICY": "PASSIVE", "HF_HUB_OFFLINE": "1",
       "MPLBACKEND": "Agg"}
#: A small digits run for the tests: 2 steps per epoch, tiny ViT and projector.
TINY = ["--preset=digits-cpu", "--batch_size=512", "--micro_width=32", "--micro_depth=1", "--micro_heads=2",
        "--proj_hidden=64", "--proj_dim=16", "--views=2", "--epochs=4", "--eval_init=false",
        "--final_eval=false", "--progress=false", "--reg={kind: mmd}", "--lam=1.0", "--warmup_epochs=1"]


def weights(run_dir):
    return T.load_checkpoint(Path(run_dir) / T.CHECKPOINT)


# ------------------------------------------------------------------ loss and schedule

def test_alignment_is_eq16_mean_over_pairs():
    gen = torch.Generator().manual_seed(0)
    z = torch.randn(4, 5, 3, generator=gen, dtype=torch.float64)
    pairs = [(i, j) for i in range(4) for j in range(i + 1, 4)]
    expected = sum(((z[i] - z[j]) ** 2).sum(1) for i, j in pairs).mean() / len(pairs)
    torch.testing.assert_close(T.alignment_loss(z, "pairs"), expected, rtol=1e-12, atol=0)
    torch.testing.assert_close(T.alignment_loss(z, "center_mse"), ((z - z.mean(0)) ** 2).mean(), rtol=1e-12, atol=0)


def test_lr_schedule_is_relative_warmup_then_cosine():
    f = [T.lr_factor(s, 100, 10, 0.01, 1e-3) for s in range(101)]
    assert f[0] == pytest.approx(0.01) and f[10] == pytest.approx(1.0) and f[100] == pytest.approx(1e-3)
    assert all(a < b for a, b in zip(f[:10], f[1:11])) and all(a >= b for a, b in zip(f[10:], f[11:]))
    assert max(f) <= 1.0 and min(f) > 0
    assert T.lr_factor(55, 100, 10, 0.01, 0.0) == pytest.approx(0.5)  # cosine midpoint


def test_global_batchnorm_is_batchnorm_in_one_process():
    torch.manual_seed(0)
    ours, ref = T.GlobalBatchNorm1d(6), torch.nn.BatchNorm1d(6)
    x = torch.randn(10, 6)
    torch.testing.assert_close(ours(x), ref(x))
    torch.testing.assert_close(ours.running_var, ref.running_var)


# ------------------------------------------------------------------ smoke run on a fabricated ImageNette

@pytest.mark.parametrize("changes", [{}, {"local_views": 2, "local_img_size": 16, "reg_views": "pooled"}],
                         ids=["global-views", "multi-crop-pooled"])
def test_smoke_every_parameter_gets_a_finite_gradient(tmp_path, changes):
    root = make_imagenette(tmp_path)
    cfg = get_preset("smoke").replace(data_root=str(root), reg={"kind": "ksd", "kernel": "imq"}, **changes)
    train, _, num_classes, in_chans = kdata.build_datasets(cfg)
    ds = kdata.ViewDataset(train, cfg)
    torch.manual_seed(0)
    net = T.build_model(cfg, in_chans, num_classes)
    batch = ds.collate([ds[k] for k in kdata.epoch_batches(len(train), cfg.batch_size, 0, 0)[0]])
    loss, parts = T.compute_loss(net, T.build_regularizer(cfg), batch, cfg, torch.device("cpu"))
    loss.backward()
    assert all(torch.isfinite(v) for v in parts.values())
    for name, p in net.named_parameters():
        assert p.grad is not None, f"{name} got no gradient"
        assert torch.isfinite(p.grad).all(), name
    assert parts["reg"] > 0


@pytest.mark.slow
def test_smoke_run_writes_config_metrics_results_and_a_loadable_checkpoint(tmp_path):
    root = make_imagenette(tmp_path)
    cfg = get_preset("smoke").replace(data_root=str(root), epochs=3, max_steps=3, eval_every=1, eval_init=True)
    out = T.train(cfg, out=tmp_path / "run")
    assert out["step"] == 3 and {"knn_acc", "linear_probe_acc", "lejepa_probe_acc"} <= set(out["final"])
    run = tmp_path / "run"
    records = [json.loads(line) for line in (run / T.METRICS).read_text().splitlines()]
    losses = [r["loss"] for r in records if "loss" in r]
    assert len(losses) == 3 and all(map(torch.isfinite, torch.tensor(losses)))
    assert json.loads((run / T.RESULTS).read_text())["step"] == 3
    ckpt = weights(run)  # weights_only=True
    assert ckpt["step"] == 3 and ckpt["config"]["preset"] == "smoke"
    assert "step" in ckpt["regularizer"]
    assert all(torch.isfinite(v).all() for v in ckpt["model"].values() if v.is_floating_point())
    assert (run / "config.yaml").is_file() and not list(run.glob("*.tmp"))


def _state(step, w):
    return {"config": get_preset("smoke").to_dict(), "step": step, "model": {"w": w}, "regularizer": {},
            "optimizer": {}, "results": {}, "rng": []}


def test_checkpoint_write_is_atomic(tmp_path, monkeypatch):
    path = tmp_path / T.CHECKPOINT
    T.save_checkpoint(path, _state(1, torch.ones(3)))

    def dying_save(obj, f):  # a kill in the middle of writing: half a file, then the process is gone
        f.write(b"PK\x03\x04 half a checkpoint")
        raise KeyboardInterrupt

    monkeypatch.setattr(torch, "save", dying_save)
    with pytest.raises(KeyboardInterrupt):
        T.save_checkpoint(path, _state(2, torch.zeros(3)))
    ckpt = T.load_checkpoint(path)
    assert ckpt["step"] == 1 and torch.equal(ckpt["model"]["w"], torch.ones(3))


# ------------------------------------------------------------------ DDP: 2 gloo processes == 1 process

GRADIENTS_THEN_TRAIN = textwrap.dedent("""
    # argv: OUT_DIR --key=value ... ; run as a single process or under torchrun
    import sys, torch
    from kerjepa.training import config, data, loop as T
    out, overrides = sys.argv[1], sys.argv[2:]
    cfg = config.from_args("digits-cpu", None, overrides)
    dist = T.setup_distributed(cfg)
    train_set, _, num_classes, in_chans = data.build_datasets(cfg)
    torch.manual_seed(cfg.seed)
    net = T.build_model(cfg, in_chans, num_classes)
    model = torch.nn.parallel.DistributedDataParallel(net) if dist.world_size > 1 else net
    views = data.ViewDataset(train_set, cfg)
    keys = data.epoch_batches(len(train_set), cfg.batch_size, 0, cfg.seed, dist.rank, dist.world_size)[0]
    loss, parts = T.compute_loss(model, T.build_regularizer(cfg), views.collate([views[k] for k in keys]), cfg,
                                 dist.device)
    loss.backward()
    if dist.rank == 0:
        torch.save({n: p.grad for n, p in net.named_parameters()}, out + ".grads.pt")
    T.train(cfg, out=out)  # the same function `python -m kerjepa.train` calls
""")


@pytest.mark.slow
@pytest.mark.ddp
def test_two_gloo_processes_equal_one(tmp_path):
    """Same global batch, same init: equal gradients at step 0 and equal (rank-averaged) loss terms for 3 steps.

    Weights are not compared after AdamW steps: parameters whose exact gradient is zero (biases in front of a
    BatchNorm, the attention key bias) get round-off gradients that Adam's normalisation blows up to +-lr.
    """
    overrides = TINY[1:] + ["--max_steps=3", "--reg={kind: mmd}", "--lam=1.0", "--drop_path=0.0",
                            "--eval_every=0", "--log_every=1", "--batch_size=64"]
    script = tmp_path / "ddp_check.py"
    script.write_text(GRADIENTS_THEN_TRAIN)
    torchrun = [str(Path(sys.executable).with_name("torchrun")), "--standalone", "--nproc_per_node=2"]
    for launcher, out in (([sys.executable], "one"), (torchrun, "two")):
        res = subprocess.run([*launcher, str(script), str(tmp_path / out), *overrides], cwd=tmp_path, env=ENV,
                             capture_output=True, text=True, timeout=300)
        assert res.returncode == 0, res.stderr[-3000:]
    g1, g2 = (torch.load(tmp_path / f"{out}.grads.pt", weights_only=True) for out in ("one", "two"))
    scale = max(float(g.norm()) for g in g1.values())
    for name in g1:  # float32 round-off differs with the reduction order: compare norms of the difference
        assert float((g2[name] - g1[name]).norm()) <= 1e-3 * float(g1[name].norm()) + 1e-6 * scale, name

    assert weights(tmp_path / "two")["world_size"] == 2
    curves = [[json.loads(line) for line in (tmp_path / run / T.METRICS).read_text().splitlines()]
              for run in ("one", "two")]
    steps = [[r for r in c if "loss" in r] for c in curves]
    assert len(steps[0]) == len(steps[1]) == 3
    for a, b in zip(*steps):
        for key in ("loss", "align", "reg", "probe_loss"):
            assert b[key] == pytest.approx(a[key], rel=1e-4), (a["step"], key)


# ------------------------------------------------------------------ non-finite loss and bad configs

class _NaNAfter(torch.nn.Module):
    """A stand-in regularizer that returns NaN from its third call on."""

    def __init__(self):
        super().__init__()
        self.register_buffer("step", torch.zeros((), dtype=torch.long))

    def forward(self, z):
        self.step += 1
        return z.square().mean() * (float("nan") if self.step >= 3 else 1.0)


def test_nonfinite_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(kerjepa, "regularizer", lambda **kw: _NaNAfter())
    code = T.main(TINY + ["--ckpt_every=1", f"--out={tmp_path / 'run'}"])
    err = capsys.readouterr().err
    assert code == 1
    assert "non-finite loss at step 2" in err and "last good checkpoint" in err and "Traceback" not in err
    ckpt = weights(tmp_path / "run")
    assert ckpt["step"] == 2
    assert all(torch.isfinite(v).all() for v in ckpt["model"].values() if v.is_floating_point())


@pytest.mark.parametrize("args, message", [
    (["--preset=table1/nope"], "unknown preset 'table1/nope'"),
    (["--reg.kind=wasserstein"], "reg="),
    (["--lam=-0.5"], "must be a finite number >= 0"),
    (["--batch_size=7", "--epochs=1"], "not divisible by the world size 2"),
    (["--preset=smoke", "--data_root=/nonexistent/folder"], "ImageNette \\(160px\\) not found"),
    (["--resume", "--out=/nonexistent/run"], "no checkpoint to resume from"),
    (["--model=vit_nonexistent"], "unknown model 'vit_nonexistent'"),
    (["--lr"], "overrides look like --key=value"),
])
def test_bad_configs_give_one_clear_message(tmp_path, monkeypatch, capsys, args, message):
    if "--batch_size=7" in args:
        monkeypatch.setenv("WORLD_SIZE", "2")  # checked before any process group starts
    code = T.main(TINY + args + [f"--out={tmp_path / 'run'}"] if "--resume" not in args else args)
    err = capsys.readouterr().err
    assert code == 2
    assert err.startswith("kerjepa.train: error:") and len(err.strip().splitlines()) == 1, err
    assert "Traceback" not in err
    import re
    assert re.search(message, err), err
