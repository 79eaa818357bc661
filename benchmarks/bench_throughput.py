"""Trainer throughput at the paper's scale on random tensors, and the regularizer's share of a step.

For each regularizer the script builds the model of a Table 1 preset (ViT-S/8 at 128 px, batch 256,
4 views, bf16 autocast on CUDA), feeds it random images of the right shape (ImageNette is not
needed), and times full training steps: forward, loss (:func:`kerjepa.training.loop.compute_loss`),
backward and the AdamW update. In the same loop it times the regularizer alone, forward and backward
on that step's projections (float32, shape (V, N, D) as the trainer passes them), so the share is a
ratio of two times measured side by side. Peak memory is CUDA's allocator peak over the steps.

Examples::

    python benchmarks/bench_throughput.py --device cuda --json data/results/throughput_<card>.json
    python benchmarks/bench_throughput.py --tiny                # a CPU check of the script: micro-ViT, 32 px

The last column estimates a Table 1 row: 800 epochs of ImageNette's 9469 training images at this
step time (evaluation and data loading not included).
"""
from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import statistics
import time

import torch

from kerjepa.training import config as kconfig, loop
from kerjepa.training.experiments import machine

#: row label -> Table 1 preset whose regularizer it times
ROWS = {
    "lejepa": "table1/lejepa",
    "mmd-unsliced": "table1/mmd-unsliced-gaussian-gaussian",
    "ksd-unsliced-imq": "table1/ksd-unsliced-imq-gaussian",
    "mmd-analytic": "table1/mmd-analytic-gaussian-gaussian",
    "ksd-analytic": "table1/ksd-analytic-gaussian-gaussian",
    "ksd-sliced-1024": "table1/ksd-sliced-gaussian-gaussian",
}
IMAGENETTE_TRAIN = 9469
NUM_CLASSES = 10
#: a micro-ViT at 32 px: the script's own check on a CPU (numbers meaningless)
TINY = {"model": "micro_vit", "img_size": 32, "micro_patch": 8, "micro_width": 64, "micro_depth": 2,
        "micro_heads": 2, "emb_dim": 64, "proj_hidden": 128, "batch_size": 16, "views": 2}


def _sync(device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure(row: str, overrides: dict, device: torch.device, precision: str, steps: int, warmup: int) -> dict:
    """Median step time, regularizer time and peak memory of one regularizer's training step."""
    cfg = kconfig.get_preset(ROWS[row]).replace(device=device.type, precision=precision, drop_path=0.0,
                                                **overrides)
    torch.manual_seed(0)
    net = loop.build_model(cfg, 3, NUM_CLASSES).to(device)
    reg = loop.build_regularizer(cfg).to(device)
    opt = torch.optim.AdamW(loop.param_groups(net, cfg), lr=cfg.lr)
    bf16 = precision == "bf16"

    def autocast():
        return torch.autocast(device.type, dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()

    views = torch.rand(cfg.batch_size, cfg.views, 3, cfg.img_size, cfg.img_size, device=device)
    labels = torch.randint(0, NUM_CLASSES, (cfg.batch_size,), device=device)
    batch = (views, torch.empty(0), labels)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    step_s, reg_s = [], []
    for i in range(warmup + steps):
        _sync(device)
        t0 = time.perf_counter()
        loss, _ = loop.compute_loss(net, reg, batch, cfg, device, autocast)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        _sync(device)
        t1 = time.perf_counter()
        with torch.no_grad(), autocast():
            z = net(views.transpose(0, 1).flatten(0, 1))[1].float().view(cfg.views, cfg.batch_size, -1)
        z.requires_grad_(True)
        _sync(device)
        t2 = time.perf_counter()
        reg(z).backward()
        _sync(device)
        t3 = time.perf_counter()
        if i >= warmup:
            step_s.append(t1 - t0)
            reg_s.append(t3 - t2)
    step, omega = statistics.median(step_s), statistics.median(reg_s)
    steps_per_epoch = IMAGENETTE_TRAIN // cfg.batch_size
    return {
        "row": row, "preset": ROWS[row], "reg": cfg.reg, "model": cfg.model, "img_size": cfg.img_size,
        "batch_size": cfg.batch_size, "views": cfg.views, "proj_dim": cfg.proj_dim, "precision": precision,
        "steps": steps, "step_ms": 1e3 * step, "reg_ms": 1e3 * omega, "reg_share": omega / step,
        "images_per_s": cfg.batch_size / step, "views_per_s": cfg.batch_size * cfg.views / step,
        "peak_memory_gib": torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None,
        "table1_row_hours": 800 * steps_per_epoch * step / 3600,
    }


def _machine(device: torch.device) -> dict:
    out = machine()
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        out.update(card=props.name, card_memory_gib=props.total_memory / 2**30, cuda=torch.version.cuda)
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--precision", choices=("bf16", "fp32"), default=None,
                        help="default: bf16 on CUDA (the paper's), fp32 on CPU")
    parser.add_argument("--rows", nargs="+", default=list(ROWS), choices=list(ROWS))
    parser.add_argument("--steps", type=int, default=20, help="timed steps per regularizer (median reported)")
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=None, help="global batch (default: the preset's 256)")
    parser.add_argument("--tiny", action="store_true", help="micro-ViT at 32 px, batch 16: checks the script")
    parser.add_argument("--json", default=None, help="write the rows and the machine here")
    args = parser.parse_args(argv)
    if args.steps < 1 or args.warmup < 0:
        parser.error(f"--steps must be >= 1 and --warmup >= 0, got {args.steps} and {args.warmup}")
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device is available here")
    precision = args.precision or ("bf16" if device.type == "cuda" else "fp32")
    overrides = dict(TINY) if args.tiny else {}
    if args.batch_size is not None:
        overrides["batch_size"] = args.batch_size
    rows = []
    print(f"{'row':18s} {'step ms':>9s} {'reg ms':>8s} {'share':>6s} {'img/s':>8s} {'peak GiB':>9s} {'800 ep h':>9s}")
    for row in args.rows:
        r = measure(row, overrides, device, precision, args.steps, args.warmup)
        rows.append(r)
        peak = "n/a" if r["peak_memory_gib"] is None else f"{r['peak_memory_gib']:.1f}"
        print(f"{row:18s} {r['step_ms']:9.1f} {r['reg_ms']:8.2f} {r['reg_share']:6.1%} {r['images_per_s']:8.0f} "
              f"{peak:>9s} {r['table1_row_hours']:9.1f}")
    if args.json:
        out = {"machine": _machine(device), "tiny": args.tiny, "rows": rows,
               "finished_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}
        with open(args.json, "w") as f:
            json.dump(out, f, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
