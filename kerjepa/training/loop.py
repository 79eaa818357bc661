"""The KerJEPA trainer: multi-view alignment + lambda * kernel-discrepancy regularizer, on one CPU or many GPUs.

Reads top to bottom: config -> device and DDP -> data -> ViT + projector + online probe -> loss ->
learning-rate schedule (a pure function of the step) -> loop -> evaluation -> checkpoints.

Run it as::

    python -m kerjepa.train --preset digits-cpu --out runs/digits                  # CPU, a few minutes
    python -m kerjepa.train --preset table1/ksd-unsliced-imq-gaussian --out runs/ksd-imq
    torchrun --standalone --nproc_per_node=8 -m kerjepa.train --preset table1/lejepa --out runs/lejepa
    python -m kerjepa.train --out runs/ksd-imq --resume                            # continue exactly

or from Python (the book does): ``result = kerjepa.training.train(cfg, out="runs/x")``.

The loss is the paper's eq. 16-17: the mean over images and over all V(V-1)/2 pairs of
views of ||z_i - z_j||^2, plus lambda * Omega(Z; Q), where Omega is any ``kerjepa.regularizer(**cfg.reg)``
applied to each view's (N, D) batch and averaged over views (LeJEPA's way, the default) or to all
V*N embeddings pooled (``reg_views="pooled"``). ``weighting="lejepa"`` and ``alignment="center_mse"``
give LeJEPA's own (1 - lambda) * MSE-to-the-view-mean + lambda * Omega.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..alignment import alignment_loss
from . import data as kdata
from .config import Config, ConfigError, dumps, from_args, load_yaml, parse_overrides, preset_names, replace

__all__ = ["train", "main", "TrainingError", "lr_factor", "KerJEPANet", "build_model",
           "build_regularizer", "param_groups", "compute_loss", "knn_accuracy", "linear_probe_accuracy",
           "load_checkpoint", "save_checkpoint", "evaluate_frozen"]

CHECKPOINT = "checkpoint.pt"
METRICS = "metrics.jsonl"
RESULTS = "results.json"
#: Keys that may change when a run is resumed (they do not change the trajectory).
RESUMABLE_CHANGES = ("max_steps", "num_workers", "progress", "tensorboard", "log_every", "ckpt_every",
                     "eval_batch_size", "data_root", "download")


class TrainingError(RuntimeError):
    """The run cannot go on (a non-finite loss, a checkpoint that does not match)."""


# ---------------------------------------------------------------------------------------------
# Device and distribution

@dataclass
class Dist:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def main(self) -> bool:
        return self.rank == 0


def setup_distributed(cfg: Config) -> Dist:
    """Read RANK/WORLD_SIZE/LOCAL_RANK (set by torchrun) and start NCCL (GPU) or gloo (CPU) when world > 1."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank, local_rank = int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0"))
    if cfg.device == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device='cuda' but no CUDA device is available; use --device=cpu or --device=auto")
    use_cuda = cfg.device == "cuda" or (cfg.device == "auto" and torch.cuda.is_available())
    device = torch.device("cuda", local_rank) if use_cuda else torch.device("cpu")
    if use_cuda:
        torch.cuda.set_device(device)
    if cfg.batch_size % world:
        raise ConfigError(f"batch_size={cfg.batch_size} (the global batch) is not divisible by the world size "
                          f"{world}; pick a multiple of {world}")
    if world > 1 and not torch.distributed.is_initialized():
        torch.distributed.init_process_group("nccl" if use_cuda else "gloo", rank=rank, world_size=world)
    return Dist(rank, world, local_rank, device)


def _world() -> int:
    return torch.distributed.get_world_size() if torch.distributed.is_initialized() else 1


# ---------------------------------------------------------------------------------------------
# Model

class GlobalBatchNorm1d(nn.BatchNorm1d):
    """BatchNorm1d that, in training under torch.distributed, normalises with the global batch's statistics.

    Two differentiable all-reduces (sum and count, then the sum of squared deviations); with one process it is
    nn.BatchNorm1d.
    Works with gloo on CPU (nn.SyncBatchNorm needs a GPU), so a DDP run equals the single-process run.
    """

    def forward(self, x):
        if not (self.training and _world() > 1):
            return super().forward(x)
        from torch.distributed.nn.functional import all_reduce
        xf = x.float()
        count = torch.full((1,), float(x.shape[0]), device=x.device)
        total = all_reduce(torch.cat([xf.sum(0), count]))  # two passes: no E[x^2] - E[x]^2 cancellation
        d, n = x.shape[1], total[-1]
        mean = total[:d] / n
        var = all_reduce((xf - mean).square().sum(0)) / n
        if self.track_running_stats:
            with torch.no_grad():
                m = self.momentum
                self.running_mean.mul_(1 - m).add_(m * mean)
                self.running_var.mul_(1 - m).add_(m * var * n / (n - 1))
                self.num_batches_tracked.add_(1)
        y = (xf - mean) * torch.rsqrt(var + self.eps)
        if self.affine:
            y = y * self.weight + self.bias
        return y.to(x.dtype)


def projector(in_dim: int, hidden: int, out_dim: int) -> nn.Sequential:
    """Linear-BN-ReLU x2, then Linear (LeJEPA's ``torchvision.ops.MLP`` with BatchNorm1d)."""
    return nn.Sequential(nn.Linear(in_dim, hidden), GlobalBatchNorm1d(hidden), nn.ReLU(inplace=True),
                         nn.Linear(hidden, hidden), GlobalBatchNorm1d(hidden), nn.ReLU(inplace=True),
                         nn.Linear(hidden, out_dim))


def build_backbone(cfg: Config, in_chans: int) -> tuple[nn.Module, int]:
    """The timm ViT (trained from scratch), and its embedding width.

    ``model="micro_vit"`` builds a small timm VisionTransformer from the ``micro_*`` fields (for CPUs).
    ``emb_dim > 0`` makes the classifier head a Linear to emb_dim (LeJEPA's example uses 512) and that
    output is the embedding; ``emb_dim = 0`` uses the pooled CLS features.
    """
    import timm
    from timm.models.vision_transformer import VisionTransformer
    common = dict(num_classes=cfg.emb_dim, drop_path_rate=cfg.drop_path, in_chans=in_chans)
    dynamic = {"dynamic_img_size": True} if cfg.local_views else {}
    if cfg.model == "micro_vit":
        net = VisionTransformer(img_size=cfg.img_size, patch_size=cfg.micro_patch, embed_dim=cfg.micro_width,
                                depth=cfg.micro_depth, num_heads=cfg.micro_heads, **common, **dynamic)
    else:
        if not timm.is_model(cfg.model):
            raise ConfigError(f"unknown model {cfg.model!r}: use 'micro_vit' or a timm model name such as "
                              f"'vit_small_patch8_224' (timm.list_models('vit_*') lists them)")
        try:
            net = timm.create_model(cfg.model, pretrained=False, img_size=cfg.img_size, **common, **dynamic)
        except TypeError:  # not a ViT: no img_size argument
            net = timm.create_model(cfg.model, pretrained=False, **common)
    emb_dim = cfg.emb_dim if cfg.emb_dim > 0 else net.num_features
    return net, emb_dim


class KerJEPANet(nn.Module):
    """Backbone -> embedding -> projector; plus the online probe (LayerNorm + Linear) on detached embeddings.

    ``forward(global_views (V*N, C, H, W), local_views (L*N, C, h, w) or None)`` returns
    (embeddings of the global views, projections of all views (view-major), probe logits of the global views).
    """

    def __init__(self, backbone: nn.Module, emb_dim: int, cfg: Config, num_classes: int):
        super().__init__()
        self.backbone = backbone
        self.projector = projector(emb_dim, cfg.proj_hidden, cfg.proj_dim)
        self.probe = nn.Sequential(nn.LayerNorm(emb_dim), nn.Linear(emb_dim, num_classes))

    def forward(self, images, local_images=None):
        emb = self.backbone(images)
        proj = self.projector(emb)
        if local_images is not None:
            proj = torch.cat([proj, self.projector(self.backbone(local_images))])
        return emb, proj, self.probe(emb.detach())


def build_model(cfg: Config, in_chans: int, num_classes: int) -> KerJEPANet:
    backbone, emb_dim = build_backbone(cfg, in_chans)
    return KerJEPANet(backbone, emb_dim, cfg, num_classes)


def build_regularizer(cfg: Config) -> nn.Module:
    """``kerjepa.regularizer(**cfg.reg)``, with a bad spec reported as a ConfigError."""
    import kerjepa
    try:
        return kerjepa.regularizer(**cfg.reg)
    except (ValueError, TypeError) as err:
        raise ConfigError(f"reg={cfg.reg}: {err}") from None


# ---------------------------------------------------------------------------------------------
# Loss and schedule

def lr_factor(step: int, total_steps: int, warmup_steps: int, start_factor: float = 0.01,
              min_ratio: float = 1e-3) -> float:
    """Learning-rate multiplier at `step` (0-based): linear warm-up from start_factor to 1, then cosine to min_ratio.

    A pure function of the step, so resuming needs no scheduler state. The floor is *relative* to the peak
    lr (LeJEPA's example passes an absolute ``eta_min=1e-3`` that would lie above a 5e-4 peak).

    Example:
        >>> [round(lr_factor(s, total_steps=100, warmup_steps=10), 4) for s in (0, 5, 10, 55, 100)]
        [0.01, 0.505, 1.0, 0.5005, 0.001]
    """
    if step < warmup_steps:
        return start_factor + (1.0 - start_factor) * step / warmup_steps
    progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


def param_groups(net: KerJEPANet, cfg: Config) -> list:
    """AdamW groups: encoder+projector weights (wd), their biases/norms/tokens (no wd), the probe (own lr, wd)."""
    decay, no_decay = [], []
    for name, p in net.named_parameters():
        if name.startswith("probe."):
            continue
        (decay if p.ndim >= 2 and "pos_embed" not in name and "token" not in name else no_decay).append(p)
    return [{"params": decay, "lr": cfg.lr, "weight_decay": cfg.weight_decay, "base_lr": cfg.lr},
            {"params": no_decay, "lr": cfg.lr, "weight_decay": 0.0, "base_lr": cfg.lr},
            {"params": list(net.probe.parameters()), "lr": cfg.probe_lr, "weight_decay": cfg.probe_wd,
             "base_lr": cfg.probe_lr}]


def compute_loss(model, reg, batch, cfg: Config, device, autocast=contextlib.nullcontext) -> tuple:
    """The training loss of one batch: alignment + lambda * Omega (+ the online probe's cross-entropy).

    Args:
        model: the (possibly DDP-wrapped) :class:`KerJEPANet`.
        reg: the regularizer module; it sees the projections as (V + L, N, D) (``reg_views="per_view"``)
            or (V*N + L*N, D) (``"pooled"``).
        batch: (views (N, V, C, H, W), local views (N, L, C, h, w) or empty, labels (N,)).

    Returns:
        (loss, parts) where parts holds the detached "ssl", "align", "reg" and "probe_loss".
    """
    views, local, labels = batch
    N, V = views.shape[0], views.shape[1]
    images = views.to(device, non_blocking=True).transpose(0, 1).flatten(0, 1)  # (V*N, C, H, W), view-major
    local_images = (local.to(device, non_blocking=True).transpose(0, 1).flatten(0, 1) if cfg.local_views else None)
    labels = labels.to(device, non_blocking=True)
    with autocast():
        emb, proj, logits = model(images, local_images)
    z = proj.float().view(-1, N, proj.shape[-1])  # (V + L, N, D)
    align = alignment_loss(z, cfg.alignment)
    try:
        omega = reg(z if cfg.reg_views == "per_view" else z.flatten(0, 1))
    except ValueError:  # the estimators reject non-finite input; report it as a non-finite loss
        if bool(torch.isfinite(z).all()):
            raise
        omega = torch.full((), float("nan"), device=z.device)
    ssl = (1 - cfg.lam) * align + cfg.lam * omega if cfg.weighting == "lejepa" else align + cfg.lam * omega
    probe_loss = F.cross_entropy(logits.float(), labels.repeat(V))
    parts = {"ssl": ssl.detach(), "align": align.detach(), "reg": omega.detach(), "probe_loss": probe_loss.detach()}
    return ssl + probe_loss, parts


# ---------------------------------------------------------------------------------------------
# Evaluation

@torch.no_grad()
def extract_features(backbone: nn.Module, dataset, cfg: Config, device, autocast) -> tuple:
    """Backbone embeddings (float32, on CPU) and labels of a dataset of single eval views."""
    was_training = backbone.training
    backbone.eval()
    loader = torch.utils.data.DataLoader(dataset, batch_size=cfg.eval_batch_size, shuffle=False,
                                         num_workers=kdata.default_num_workers(cfg.num_workers),
                                         generator=torch.Generator())
    feats, labels = [], []
    for images, y in loader:
        with autocast():
            feats.append(backbone(images.to(device, non_blocking=True)).float().cpu())
        labels.append(y)
    backbone.train(was_training)
    return torch.cat(feats), torch.cat(labels)


def knn_accuracy(train_x, train_y, val_x, val_y, k: int = 20, temperature: float = 0.07) -> float:
    """Weighted kNN on cosine similarity (votes exp(sim / T) of the k nearest training features)."""
    train_x, val_x = F.normalize(train_x, dim=1), F.normalize(val_x, dim=1)
    num_classes, k = int(max(train_y.max(), val_y.max())) + 1, min(k, len(train_y))
    correct = 0
    for i in range(0, len(val_x), 1024):
        sim, idx = (val_x[i:i + 1024] @ train_x.T).topk(k, dim=1)
        votes = torch.zeros(len(sim), num_classes).scatter_add_(1, train_y[idx], (sim / temperature).exp())
        correct += int((votes.argmax(1) == val_y[i:i + 1024]).sum())
    return correct / len(val_y)


def linear_probe_accuracy(train_x, train_y, val_x, val_y, steps: int = 300) -> float:
    """Multinomial logistic regression on standardised frozen features (full-batch Adam), val top-1."""
    mean, std = train_x.mean(0), train_x.std(0) + 1e-6
    train_x, val_x = (train_x - mean) / std, (val_x - mean) / std
    num_classes = int(max(train_y.max(), val_y.max())) + 1
    head = nn.Linear(train_x.shape[1], num_classes)
    nn.init.zeros_(head.weight), nn.init.zeros_(head.bias)
    opt = torch.optim.Adam(head.parameters(), lr=1e-2)
    with torch.enable_grad():
        for _ in range(steps):
            opt.zero_grad(set_to_none=True)
            loss = F.cross_entropy(head(train_x), train_y) + 1e-4 * head.weight.square().sum()
            loss.backward()
            opt.step()
    with torch.no_grad():
        return float((head(val_x).argmax(1) == val_y).float().mean())


def evaluate_frozen(backbone, train_eval, val_eval, cfg: Config, device, autocast) -> dict:
    """kNN and linear-probe top-1 on the validation split, from frozen backbone features."""
    tx, ty = extract_features(backbone, train_eval, cfg, device, autocast)
    vx, vy = extract_features(backbone, val_eval, cfg, device, autocast)
    with torch.random.fork_rng(devices=[]):
        return {"knn_acc": knn_accuracy(tx, ty, vx, vy, cfg.knn_k, cfg.knn_temperature),
                "linear_probe_acc": linear_probe_accuracy(tx, ty, vx, vy, cfg.probe_steps)}


@torch.no_grad()
def online_probe_accuracy(net: KerJEPANet, loader, dist: Dist, autocast) -> float:
    """Top-1 of the online probe on this rank's share of the validation split, summed over ranks."""
    was_training = net.training
    net.eval()
    correct = torch.zeros(2, device=dist.device)
    for images, y in loader:
        images, y = images.to(dist.device, non_blocking=True), y.to(dist.device, non_blocking=True)
        with autocast():
            logits = net.probe(net.backbone(images))
        correct += torch.stack([(logits.argmax(1) == y).sum().float(), torch.tensor(float(len(y)), device=dist.device)])
    if dist.world_size > 1:
        torch.distributed.all_reduce(correct)
    net.train(was_training)
    return float(correct[0] / correct[1])


# ---------------------------------------------------------------------------------------------
# Checkpoints

def save_checkpoint(path: Path, state: dict) -> None:
    """Write atomically: a temporary file in the same folder, then os.replace (a kill never leaves half a file)."""
    tmp = path.with_name(path.name + ".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)


def load_checkpoint(path) -> dict:
    """Load a checkpoint with ``weights_only=True`` (tensors and builtins only)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"no checkpoint to resume from at {path}")
    return torch.load(path, map_location="cpu", weights_only=True)


def _gather_rng(dist: Dist) -> dict:
    state = {"cpu": torch.get_rng_state()}
    if dist.device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(dist.device)
    if dist.world_size == 1:
        return {"rng": [state]}
    states = [None] * dist.world_size
    torch.distributed.all_gather_object(states, {k: v.cpu() for k, v in state.items()})
    return {"rng": states}


def _restore_rng(ckpt: dict, dist: Dist, cfg: Config, step: int) -> None:
    states = ckpt["rng"]
    if len(states) != dist.world_size:  # a different number of processes: reproducible, not identical
        torch.manual_seed(cfg.seed + dist.rank + 7919 * step)
        return
    torch.set_rng_state(states[dist.rank]["cpu"])
    if dist.device.type == "cuda" and "cuda" in states[dist.rank]:
        torch.cuda.set_rng_state(states[dist.rank]["cuda"], dist.device)


# ---------------------------------------------------------------------------------------------
# Logging

class Logger:
    """JSON-lines metrics in the run folder (rank 0 only), optional TensorBoard if the package is installed."""

    def __init__(self, run_dir: Path, active: bool, tensorboard: bool, resume_step: int | None):
        self.active, self.path, self.tb = active, run_dir / METRICS, None
        if not active:
            return
        if resume_step is not None and self.path.exists():  # drop records written after the checkpoint
            keep = [line for line in self.path.read_text().splitlines()
                    if line.strip() and json.loads(line).get("step", 0) <= resume_step]
            self.path.write_text("".join(line + "\n" for line in keep))
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
                self.tb = SummaryWriter(str(run_dir / "tensorboard"))
            except ImportError:
                self.tb = None

    def log(self, record: dict) -> None:
        if not self.active:
            return
        with open(self.path, "a") as fh:
            fh.write(json.dumps(record) + "\n")
        if self.tb is not None:
            for key, value in record.items():
                if isinstance(value, (int, float)) and key not in ("step", "epoch"):
                    self.tb.add_scalar(key, value, record.get("step", 0))

    def close(self):
        if self.tb is not None:
            self.tb.close()


class _RunBatches:
    """Batch sampler over all remaining steps (one worker pool for the whole run, prefetch across epochs)."""

    def __init__(self, num_images, cfg, dist, start_step, end_step, spe):
        self.args = (num_images, cfg.batch_size, cfg.seed, dist.rank, dist.world_size)
        self.start_step, self.end_step, self.spe = start_step, end_step, spe

    def __len__(self):
        return self.end_step - self.start_step

    def __iter__(self):
        n, batch, seed, rank, world = self.args
        step = self.start_step
        while step < self.end_step:
            epoch, start = divmod(step, self.spe)
            for b in kdata.epoch_batches(n, batch, epoch, seed, rank, world, start):
                if step >= self.end_step:
                    return
                yield b
                step += 1


# ---------------------------------------------------------------------------------------------
# Training

def train(cfg: Config, out=None, resume: bool = False) -> dict:
    """Train with `cfg`, writing into the run folder `out`; return the final metrics and the run folder.

    Args:
        cfg: the resolved configuration.
        out: run folder (default ``runs/<preset>``); holds config.yaml, metrics.jsonl, checkpoint.pt,
            results.json.
        resume: continue from ``out/checkpoint.pt`` exactly (data order, RNG, optimizer, schedule step,
            regularizer step buffer). The checkpoint's config is used; only keys in RESUMABLE_CHANGES may differ.

    Returns:
        dict with ``run_dir``, ``step``, ``init`` (kNN / linear probe of the random-init encoder, if measured),
        ``final`` (the same after training), ``online_probe_acc``, ``wall_time_s``.

    Raises:
        ConfigError, kerjepa.training.data.DataError: a configuration or dataset that cannot run.
        TrainingError: a non-finite loss (the last good checkpoint is kept).
    """
    t_start = time.time()
    run_dir = Path(out) if out is not None else Path("runs") / cfg.preset.replace("/", "_")
    ckpt = None
    if resume:
        ckpt = load_checkpoint(run_dir / CHECKPOINT)
        saved = Config.from_dict(ckpt["config"])
        if saved.preset != cfg.preset:
            raise ConfigError(f"the checkpoint in {run_dir} is a {saved.preset!r} run, not {cfg.preset!r}; resume it "
                              f"with --preset={saved.preset} or without --preset")
        diff = [k for k in cfg.to_dict() if k not in RESUMABLE_CHANGES and getattr(saved, k) != getattr(cfg, k)]
        if diff:
            raise ConfigError(f"cannot resume with a different config: {diff} differ from the checkpoint; only "
                              f"{list(RESUMABLE_CHANGES)} may change")
        cfg = saved.replace(**{k: getattr(cfg, k) for k in RESUMABLE_CHANGES})

    dist = setup_distributed(cfg)
    try:
        return _train(cfg, dist, run_dir, ckpt, t_start)
    finally:
        if dist.world_size > 1 and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()


def _train(cfg: Config, dist: Dist, run_dir: Path, ckpt: dict | None, t_start: float) -> dict:
    device = dist.device
    bf16 = cfg.precision == "bf16" or (cfg.precision == "auto" and device.type == "cuda")

    def autocast():
        return torch.autocast(device.type, dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()

    reg = build_regularizer(cfg).to(device)  # a bad spec fails before any data is read

    # data
    train_base, val_base, num_classes, in_chans = kdata.build_datasets(cfg)
    spe = kdata.steps_per_epoch(len(train_base), cfg.batch_size)
    if spe < 1:
        raise ConfigError(f"batch_size={cfg.batch_size} is larger than the training set ({len(train_base)} images)")
    total_steps = cfg.epochs * spe
    end_step = min(total_steps, cfg.max_steps) if cfg.max_steps else total_steps
    warmup_steps = round(cfg.warmup_epochs * spe)
    train_views = kdata.ViewDataset(train_base, cfg)
    train_eval, val_eval = kdata.EvalDataset(train_base, cfg), kdata.EvalDataset(val_base, cfg)
    workers = kdata.default_num_workers(cfg.num_workers)

    # model (identical on every rank), regularizer, optimizer
    torch.manual_seed(cfg.seed)
    net = build_model(cfg, in_chans, num_classes).to(device)
    opt = torch.optim.AdamW(param_groups(net, cfg), lr=cfg.lr)
    step = 0
    if ckpt is not None:
        net.load_state_dict(ckpt["model"])
        reg.load_state_dict(ckpt["regularizer"])
        opt.load_state_dict(ckpt["optimizer"])
        step = int(ckpt["step"])
        _restore_rng(ckpt, dist, cfg, step)
    else:
        torch.manual_seed(cfg.seed + dist.rank)  # per-rank randomness for drop-path
    model = torch.compile(net) if cfg.compile else net
    if dist.world_size > 1:
        model = nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    ssl_params = [p for n, p in net.named_parameters() if not n.startswith("probe.")]

    # run folder
    run_dir.mkdir(parents=True, exist_ok=True)
    if dist.main:
        (run_dir / "config.yaml").write_text(dumps(cfg))
    logger = Logger(run_dir, dist.main, cfg.tensorboard, step if ckpt is not None else None)
    results = dict(ckpt["results"]) if ckpt is not None else {}
    ckpt_path = run_dir / CHECKPOINT

    def checkpoint():
        state = {"config": cfg.to_dict(), "step": step, "model": net.state_dict(), "regularizer": reg.state_dict(),
                 "optimizer": opt.state_dict(), "results": results, "world_size": dist.world_size,
                 **_gather_rng(dist)}
        if dist.main:
            save_checkpoint(ckpt_path, state)

    val_loader = torch.utils.data.DataLoader(
        torch.utils.data.Subset(val_eval, range(dist.rank, len(val_eval), dist.world_size)),
        batch_size=cfg.eval_batch_size, num_workers=workers, generator=torch.Generator(),
        persistent_workers=workers > 0)

    if ckpt is None and cfg.eval_init:
        if dist.main:
            results["init"] = evaluate_frozen(net.backbone, train_eval, val_eval, cfg, device, autocast)
            logger.log({"step": 0, "event": "init", **results["init"]})
            _say(dist, f"random-init encoder: kNN {results['init']['knn_acc']:.4f}, "
                       f"linear probe {results['init']['linear_probe_acc']:.4f}")
        if dist.world_size > 1:
            torch.distributed.barrier()

    if dist.main:
        _say(dist, f"{cfg.preset}: {len(train_base)} train / {len(val_base)} val images, {spe} steps/epoch, "
                   f"steps {step}..{end_step} of {total_steps}, world size {dist.world_size}, device {device}, "
                   f"{'bf16' if bf16 else 'fp32'}, {sum(p.numel() for p in net.parameters()) / 1e6:.2f}M params")

    loader = torch.utils.data.DataLoader(
        train_views, batch_sampler=_RunBatches(len(train_base), cfg, dist, step, end_step, spe),
        num_workers=workers, pin_memory=device.type == "cuda", generator=torch.Generator(), collate_fn=train_views.collate,
        persistent_workers=False)
    bar = None
    if dist.main and cfg.progress:
        from tqdm.auto import tqdm
        bar = tqdm(total=end_step, initial=step, unit="step", dynamic_ncols=True)

    net.train()
    tick, tick_step, last = time.time(), step, {}
    for views, local, labels in loader:
        factor = lr_factor(step, total_steps, warmup_steps, cfg.warmup_start_factor, cfg.min_lr_ratio)
        for group in opt.param_groups:
            group["lr"] = group["base_lr"] * factor
        loss, parts = compute_loss(model, reg, (views, local, labels), cfg, device, autocast)
        # one collective per step: the rank-averaged loss terms, which also tell every rank whether to stop
        stats = torch.stack([loss.detach(), parts["ssl"], parts["align"], parts["reg"], parts["probe_loss"]])
        if dist.world_size > 1:
            torch.distributed.all_reduce(stats)
            stats /= dist.world_size
        total, ssl, align, omega, probe_loss = stats.tolist()
        if not math.isfinite(total):
            if bar is not None:
                bar.close()
            kept = (f"the last good checkpoint is {ckpt_path} (step {int(load_checkpoint(ckpt_path)['step'])})"
                    if ckpt_path.exists() else "no checkpoint was written yet")
            raise TrainingError(f"non-finite loss at step {step} (alignment {align:.4g}, regularizer "
                                f"{omega:.4g}); stopping, {kept}. Try a lower lr or lam, or grad_clip > 0.")

        opt.zero_grad(set_to_none=True)
        loss.backward()
        if cfg.grad_clip > 0:
            nn.utils.clip_grad_norm_(ssl_params, cfg.grad_clip)
        opt.step()
        step += 1

        if step % cfg.log_every == 0 or step == end_step:
            now = time.time()
            last = {"step": step, "epoch": step / spe, "loss": ssl, "align": align, "reg": omega,
                    "probe_loss": probe_loss, "lr": cfg.lr * factor,
                    "imgs_per_s": (step - tick_step) * cfg.batch_size / max(now - tick, 1e-9)}
            tick, tick_step = now, step
            logger.log(last)
            if bar is not None:
                bar.set_postfix(loss=f"{last['loss']:.4g}", reg=f"{last['reg']:.3g}",
                                img_s=f"{last['imgs_per_s']:.0f}")
        if bar is not None:
            bar.update(1)
        if cfg.eval_every and step % (cfg.eval_every * spe) == 0 and step < end_step:
            acc = online_probe_accuracy(net, val_loader, dist, autocast)
            results["online_probe_acc"] = acc
            logger.log({"step": step, "epoch": step // spe, "online_probe_acc": acc})
        if cfg.ckpt_every and step % cfg.ckpt_every == 0 and step < end_step:
            checkpoint()
    if bar is not None:
        bar.close()

    # end of run: online probe, frozen-feature probes, final checkpoint
    results["online_probe_acc"] = online_probe_accuracy(net, val_loader, dist, autocast)
    logger.log({"step": step, "epoch": step / spe, "online_probe_acc": results["online_probe_acc"]})
    if cfg.final_eval and dist.main:
        results["final"] = evaluate_frozen(net.backbone, train_eval, val_eval, cfg, device, autocast)
    checkpoint()
    if dist.world_size > 1:
        torch.distributed.barrier()
    out = {"run_dir": str(run_dir), "step": step, "total_steps": total_steps, "preset": cfg.preset,
           **results, "last": last, "wall_time_s": time.time() - t_start}
    if dist.main:
        logger.log({"step": step, "event": "final", "online_probe_acc": results["online_probe_acc"],
                    **results.get("final", {}), "wall_time_s": out["wall_time_s"]})
        (run_dir / RESULTS).write_text(json.dumps(out, indent=2) + "\n")
        msg = f"done: {step} steps in {out['wall_time_s']:.0f} s; online probe {results['online_probe_acc']:.4f}"
        if "final" in results:
            msg += f"; kNN {results['final']['knn_acc']:.4f}, linear probe {results['final']['linear_probe_acc']:.4f}"
        if "init" in results:
            msg += (f" (random init: kNN {results['init']['knn_acc']:.4f}, "
                    f"linear probe {results['init']['linear_probe_acc']:.4f})")
        _say(dist, msg + f"; results in {run_dir / RESULTS}")
    logger.close()
    return out


def _say(dist: Dist, msg: str) -> None:
    if dist.main:
        print(msg, flush=True)


# ---------------------------------------------------------------------------------------------
# Command line

def _clean_message(err: BaseException) -> str:
    """The message of an error, without the worker traceback the DataLoader wraps around it."""
    text = str(err)
    if "Original Traceback" in text:
        lines = [line for line in text.strip().splitlines() if line.strip()]
        text = lines[-1].split(": ", 1)[-1] if lines else text
    return text


def main(argv=None) -> int:
    """``python -m kerjepa.train --preset NAME [--config FILE.yaml] [--key=value ...] --out RUN_DIR [--resume]``."""
    parser = argparse.ArgumentParser(
        prog="python -m kerjepa.train", description="Train KerJEPA (alignment + lambda * kernel discrepancy).",
        epilog="Any config field can be overridden as --key=value (e.g. --lr=1e-3 --reg.kind=ksd --lam=2); "
               "see --help-config.")
    parser.add_argument("--preset", default=None, help="named preset (default: digits-cpu, or the run's own "
                        "config with --resume); --list-presets")
    parser.add_argument("--config", default=None, help="YAML file of overrides, applied after the preset")
    parser.add_argument("--out", default=None, help="run folder (default: runs/<preset>)")
    parser.add_argument("--resume", action="store_true", help="continue the run in --out from its checkpoint")
    parser.add_argument("--list-presets", action="store_true", help="print all preset names and exit")
    parser.add_argument("--help-config", action="store_true", help="print the resolved config as YAML and exit")
    args, rest = parser.parse_known_args(argv)
    if args.list_presets:
        print("\n".join(preset_names()))
        return 0
    bad = [r for r in rest if not (r.startswith("--") and "=" in r)]
    if bad:
        print(f"kerjepa.train: error: unrecognised argument(s) {bad}; overrides look like --key=value",
              file=sys.stderr)
        return 2
    try:
        if args.resume and args.preset is None and args.out is not None:  # the run's own config
            saved = Config.from_dict(load_checkpoint(Path(args.out) / CHECKPOINT)["config"])
            cfg = replace(saved, load_yaml(args.config)) if args.config else saved
            cfg = replace(cfg, parse_overrides(rest)) if rest else cfg
        else:
            cfg = from_args(args.preset or "digits-cpu", args.config, rest)
        if args.help_config:
            print(dumps(cfg), end="")
            return 0
        if args.resume and args.out is None:
            raise ConfigError("--resume needs --out RUN_DIR (the folder holding checkpoint.pt)")
        train(cfg, out=args.out, resume=args.resume)
    except (ConfigError, kdata.DataError) as err:
        print(f"kerjepa.train: error: {_clean_message(err)}", file=sys.stderr)
        return 2
    except TrainingError as err:
        print(f"kerjepa.train: error: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("kerjepa.train: interrupted", file=sys.stderr)
        return 130
    return 0
