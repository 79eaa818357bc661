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
import signal
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

import kerjepa
from .. import distributed
from ..alignment import alignment_loss
from . import data as kdata
from .checkpoint import (CHECKPOINT, CONFIG, METRICS, RECOVERY_CHANGES, RESULTS, CheckpointError, RunFolderError,
                         first_nonfinite, gather_rng, load_checkpoint, load_state, optimizer_tensors, prepare_run_dir,
                         repair_metrics, restore_rng, resume_config, save_checkpoint, write_text)
from .config import Config, ConfigError, dumps, from_args, load_yaml, parse_overrides, preset_names, replace
from .monitor import embedding_health

__all__ = ["train", "main", "TrainingError", "Interrupted", "lr_factor", "KerJEPANet", "build_model",
           "build_regularizer", "param_groups", "scheduled_lr", "compute_loss", "knn_accuracy",
           "linear_probe_accuracy", "lejepa_probe_accuracy", "binomial_stderr", "record_online_probe",
           "last_blocks_cls", "evaluate_frozen"]

#: What results.json reports, and what is a diagnostic (recorded in every results.json).
REPORTED = {"table1": "final.lejepa_probe_acc +- final.lejepa_probe_stderr (LeJEPA's linear probe on the CLS "
                      "tokens of the last two blocks)",
            "online_probe": "online_probe.last and online_probe.best (LayerNorm + Linear trained with the encoder)",
            "diagnostics": ["final.knn_acc", "final.linear_probe_acc"]}


class TrainingError(RuntimeError):
    """The run cannot go on: a non-finite loss or non-finite weights (the last good checkpoint is kept)."""


class Interrupted(KeyboardInterrupt):
    """SIGINT (Ctrl-C) or SIGTERM (a scheduler's notice) stopped the run.

    During training the step in progress finishes and is checkpointed; before the first step (while data
    is checked and the random-init encoder evaluated) the run stops at once, with nothing to save.

    Attributes:
        signum: the signal that arrived; ``step``: the step the checkpoint holds (None: stopped before
        training started); ``path``: the checkpoint.
    """

    def __init__(self, signum, step, path):
        super().__init__(f"{signal.Signals(signum).name} at step {step}; checkpoint {path}")
        self.signum, self.step, self.path = signum, step, path


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


# ---------------------------------------------------------------------------------------------
# Model

class GlobalBatchNorm1d(nn.BatchNorm1d):
    """BatchNorm1d that, in training under torch.distributed, normalises with the global batch's statistics.

    Two differentiable all-reduces (:func:`kerjepa.distributed.all_reduce_sum`: sum and count, then the sum of
    squared deviations); with one process it is nn.BatchNorm1d.
    Works with gloo on CPU (nn.SyncBatchNorm needs a GPU), so a DDP run equals the single-process run.
    """

    def forward(self, x):
        if not (self.training and distributed.is_active()):
            return super().forward(x)
        all_reduce = distributed.all_reduce_sum
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
    try:
        return kerjepa.regularizer(**cfg.reg)
    except (ValueError, TypeError) as err:
        raise ConfigError(f"reg={cfg.reg}: {err}") from None


def dry_run(cfg: Config, what: str, fn) -> None:
    """Call `fn()` once on random inputs of the run's shapes, before any data is read.

    A config that can only fail at the first step (a regularizer option the estimator rejects on its
    first call, a model that cannot take the views) fails here instead, as a ConfigError. The global
    RNG is left as it was, so the run's trajectory does not depend on the check.
    """
    devices = [torch.cuda.current_device()] if torch.cuda.is_available() and torch.cuda.is_initialized() else []
    with torch.random.fork_rng(devices=devices), torch.no_grad():
        try:
            fn()
        except (ValueError, TypeError, RuntimeError, AssertionError, NotImplementedError) as err:
            text = " ".join(str(err).split())[:300] or type(err).__name__
            raise ConfigError(f"{what} fails on a batch of this config's shape: {text}") from None


def check_regularizer(reg: nn.Module, cfg: Config, world_size: int, device) -> None:
    """Run the regularizer once on a random (V + L, N, D) batch; its state (the step counter) is restored."""
    n = cfg.batch_size // world_size
    z = torch.randn(cfg.views + cfg.local_views, n, cfg.proj_dim, generator=torch.Generator().manual_seed(0))
    z = z.to(device)
    state = {k: v.clone() for k, v in reg.state_dict().items()}
    dry_run(cfg, f"reg={cfg.reg}", lambda: reg(z if cfg.reg_views == "per_view" else z.flatten(0, 1)))
    reg.load_state_dict(state)


def check_model(net: "KerJEPANet", cfg: Config, in_chans: int, device) -> None:
    """Run the model (in eval mode, no gradients) once on two random images of each view size."""
    def forward():
        images = torch.randn(2, in_chans, cfg.img_size, cfg.img_size, device=device)
        local = (torch.randn(2, in_chans, cfg.local_img_size, cfg.local_img_size, device=device)
                 if cfg.local_views else None)
        net.eval()
        try:
            net(images, local)
        finally:
            net.train()
    dry_run(cfg, f"the model {cfg.model!r}", forward)


# ---------------------------------------------------------------------------------------------
# Loss and schedule

def lr_factor(step: int, total_steps: int, warmup_steps: int, start_factor: float = 0.01,
              min_ratio: float = 1e-3) -> float:
    """Learning-rate multiplier at `step` (0-based): linear warm-up from start_factor to 1, then cosine to min_ratio.

    A pure function of the step, so resuming needs no scheduler state. This is PyTorch's
    ``SequentialLR([LinearLR(start_factor, total_iters=W), CosineAnnealingLR(T_max=T-W, eta_min)])`` in closed
    form, with ``eta_min = min_ratio * base lr`` (:func:`scheduled_lr` turns an absolute floor into this ratio).

    Example:
        >>> [round(lr_factor(s, total_steps=100, warmup_steps=10), 4) for s in (0, 5, 10, 55, 100)]
        [0.01, 0.505, 1.0, 0.5005, 0.001]
    """
    if step < warmup_steps:
        return start_factor + (1.0 - start_factor) * step / warmup_steps
    progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


def scheduled_lr(base_lr: float, step: int, total_steps: int, warmup_steps: int, cfg: Config) -> float:
    """The learning rate of a parameter group with peak `base_lr` at `step`, by the config's schedule.

    The cosine ends at ``cfg.min_lr`` (absolute, the same for every group, as LeJEPA's MINIMAL recipe's
    ``eta_min``: a group whose peak equals it stays there after the warm-up) or, when that is None, at
    ``cfg.min_lr_ratio`` times the group's own peak.

    Example:
        >>> cfg = Config(lr=2e-3, min_lr=1e-3)
        >>> [round(scheduled_lr(lr, 100, 100, 10, cfg), 6) for lr in (2e-3, 1e-3)]   # the last step
        [0.001, 0.001]
    """
    min_ratio = cfg.min_lr / base_lr if cfg.min_lr is not None else cfg.min_lr_ratio
    return base_lr * lr_factor(step, total_steps, warmup_steps, cfg.warmup_start_factor, min_ratio)


def param_groups(net: KerJEPANet, cfg: Config) -> list:
    """AdamW groups: encoder+projector weights (wd), their biases/norms/tokens (no wd), the probe (own lr, wd).

    With ``cfg.weight_decay_all`` (LeJEPA's MINIMAL recipe) every encoder and projector parameter is decayed
    and the no-decay group is left out.
    """
    decay, no_decay = [], []
    for name, p in net.named_parameters():
        if name.startswith("probe."):
            continue
        exempt = p.ndim < 2 or "pos_embed" in name or "token" in name
        (no_decay if exempt and not cfg.weight_decay_all else decay).append(p)
    groups = [{"params": decay, "lr": cfg.lr, "weight_decay": cfg.weight_decay, "base_lr": cfg.lr},
              {"params": no_decay, "lr": cfg.lr, "weight_decay": 0.0, "base_lr": cfg.lr},
              {"params": list(net.probe.parameters()), "lr": cfg.probe_lr, "weight_decay": cfg.probe_wd,
               "base_lr": cfg.probe_lr}]
    return [g for g in groups if g["params"]]


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
    omega = reg(z if cfg.reg_views == "per_view" else z.flatten(0, 1))  # non-finite z -> non-finite omega
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
    """Diagnostic: logistic regression on standardised frozen head outputs (full-batch Adam), val top-1.

    Not the protocol of Table 1 (that is :func:`lejepa_probe_accuracy`); cheap and deterministic, it tracks
    the embedding's linear separability through a run.
    """
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


def lejepa_probe_accuracy(train_x, train_y, val_x, val_y, epochs: int = 100, lr: float = 1e-3,
                          weight_decay: float = 1e-6, batch_size: int = 256, seed: int = 0) -> float:
    """LeJEPA's linear-probe protocol on frozen features: LayerNorm + Linear, AdamW, weight decay 1e-6.

    Mini-batches of shuffled training features; the lr rises linearly over the first epoch from 1 % and
    follows a cosine to lr/1000, as in pre-training. The features are what :func:`evaluate_frozen` hands it:
    the CLS tokens of the backbone's last two blocks, concatenated.

    Shape:
        train_x: (N, F), train_y: (N,), val_x: (M, F), val_y: (M,).

    Returns:
        Validation top-1 accuracy.
    """
    num_classes = int(max(train_y.max(), val_y.max())) + 1
    gen = torch.Generator().manual_seed(seed)
    head = nn.Sequential(nn.LayerNorm(train_x.shape[1]), nn.Linear(train_x.shape[1], num_classes))
    with torch.no_grad():
        bound = 1 / math.sqrt(train_x.shape[1])
        head[1].weight.uniform_(-bound, bound, generator=gen), head[1].bias.zero_()
    opt = torch.optim.AdamW(head.parameters(), lr=lr, weight_decay=weight_decay)
    spe = max(1, math.ceil(len(train_x) / batch_size))
    total, step = epochs * spe, 0
    with torch.enable_grad():
        for _ in range(epochs):
            for idx in torch.randperm(len(train_x), generator=gen).split(batch_size):
                for group in opt.param_groups:
                    group["lr"] = lr * lr_factor(step, total, spe, 0.01, 1e-3)
                opt.zero_grad(set_to_none=True)
                F.cross_entropy(head(train_x[idx]), train_y[idx]).backward()
                opt.step()
                step += 1
    with torch.no_grad():
        return float((head(val_x).argmax(1) == val_y).float().mean())


def binomial_stderr(p: float, n: int) -> float:
    """Standard error sqrt(p(1-p)/n) of an accuracy p measured on n images (how Table 1 quotes its errors)."""
    return math.sqrt(p * (1 - p) / n)


@contextlib.contextmanager
def last_blocks_cls(backbone: nn.Module, blocks: int = 2):
    """Collect, during forward passes, the CLS tokens of the last `blocks` transformer blocks.

    Each block's output goes through the backbone's final norm (DINO's ``get_intermediate_layers``) and its
    CLS token (or, without one, the mean of the patch tokens) is kept; the tokens of the blocks are
    concatenated. Yields a list that receives one (B, blocks * width) float32 CPU tensor per forward pass.
    """
    outputs, hooks, per_pass = [], [], []
    prefix = getattr(backbone, "num_prefix_tokens", 1)
    has_cls = getattr(backbone, "cls_token", None) is not None
    norm = getattr(backbone, "norm", nn.Identity())

    def hook(module, args, out):
        tokens = norm(out)
        per_pass.append((tokens[:, 0] if has_cls else tokens[:, prefix:].mean(1)).float().cpu())
        if len(per_pass) == blocks:
            outputs.append(torch.cat(per_pass, dim=1))
            per_pass.clear()

    for block in list(backbone.blocks)[-blocks:]:
        hooks.append(block.register_forward_hook(hook))
    try:
        yield outputs
    finally:
        for h in hooks:
            h.remove()


def evaluate_frozen(backbone, train_eval, val_eval, cfg: Config, device, autocast) -> dict:
    """Top-1 on the validation split from frozen backbone features, by three protocols.

    ``lejepa_probe_acc`` (with its binomial ``lejepa_probe_stderr``) is LeJEPA's linear-probe protocol on the
    CLS tokens of the last two blocks (:func:`lejepa_probe_accuracy`): the number to set beside Table 1.
    ``knn_acc`` (:func:`knn_accuracy`) and ``linear_probe_acc`` (:func:`linear_probe_accuracy`, on the
    standardised head output) are diagnostics. Without transformer ``blocks`` (a non-ViT timm model) or with
    ``lejepa_probe_epochs=0`` the protocol is not run and ``lejepa_probe_acc`` is None.
    """
    protocol = cfg.lejepa_probe_epochs > 0 and len(getattr(backbone, "blocks", ())) >= 2
    with last_blocks_cls(backbone) if protocol else contextlib.nullcontext([]) as cls:
        tx, ty = extract_features(backbone, train_eval, cfg, device, autocast)
        n_train = len(cls)
        vx, vy = extract_features(backbone, val_eval, cfg, device, autocast)
    out = {"n_val": len(vy), "lejepa_probe_acc": None, "lejepa_probe_stderr": None}
    with torch.random.fork_rng(devices=[]):
        if protocol:
            acc = lejepa_probe_accuracy(torch.cat(cls[:n_train]), ty, torch.cat(cls[n_train:]), vy,
                                        cfg.lejepa_probe_epochs, cfg.lejepa_probe_lr, cfg.lejepa_probe_wd,
                                        cfg.lejepa_probe_batch_size, cfg.seed)
            out.update(lejepa_probe_acc=acc, lejepa_probe_stderr=binomial_stderr(acc, len(vy)))
        out["knn_acc"] = knn_accuracy(tx, ty, vx, vy, cfg.knn_k, cfg.knn_temperature)
        out["linear_probe_acc"] = linear_probe_accuracy(tx, ty, vx, vy, cfg.probe_steps)
    return out


def record_online_probe(results: dict, acc: float, epoch: float, n_val: int) -> None:
    """Keep the last and the best online-probe accuracy, each with its epoch and binomial standard error.

    Table 1 does not say whether its numbers are the last or the best epoch, so a run records both in
    ``results["online_probe"]``; ``results["online_probe_acc"]`` is the last one.
    """
    entry = {"acc": acc, "epoch": epoch, "stderr": binomial_stderr(acc, n_val)}
    probe = results.setdefault("online_probe", {"n_val": n_val})
    probe["last"] = entry
    if "best" not in probe or acc > probe["best"]["acc"]:
        probe["best"] = dict(entry)
    results["online_probe_acc"] = acc


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
# Logging

class Logger:
    """JSON-lines metrics in the run folder (rank 0 only), optional TensorBoard if the package is installed."""

    def __init__(self, run_dir: Path, active: bool, tensorboard: bool, resume_step: int | None):
        self.active, self.path, self.tb = active, run_dir / METRICS, None
        if not active:
            return
        if resume_step is not None:  # drop records written after the checkpoint, and a line torn by a kill
            repair_metrics(self.path, resume_step, keep_final=False)
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
                self.tb = SummaryWriter(str(run_dir / "tensorboard"))
            except ImportError:
                self.tb = None

    def log(self, record: dict) -> None:
        if not self.active:
            return
        try:
            with open(self.path, "a") as fh:
                fh.write(json.dumps(record) + "\n")
        except OSError as err:
            raise RunFolderError(f"cannot write {self.path}: {err.strerror or err}") from None
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

def train(cfg: Config, out=None, resume: bool = False, overwrite: bool = False, recover: bool = False) -> dict:
    """Train with `cfg`, writing into the run folder `out`; return the final metrics and the run folder.

    Args:
        cfg: the resolved configuration.
        out: run folder (default ``runs/<preset>``); holds config.yaml, metrics.jsonl, checkpoint.pt,
            results.json.
        resume: continue from ``out/checkpoint.pt`` exactly (data order, RNG, optimizer, schedule step,
            regularizer step buffer). The checkpoint's config is used; only keys in
            ``checkpoint.RESUMABLE_CHANGES`` may differ. A finished run is left as it is (its results are
            returned, no record is added).
        overwrite: replace the run that `out` holds (its config.yaml, metrics.jsonl, checkpoint.pt,
            results.json and tensorboard/ are deleted first). Without it (or `resume`) such a folder is refused.
        recover: with `resume`, also let the keys of RECOVERY_CHANGES (lr, lam, grad_clip) change, e.g. to
            continue a diverged run from its last good checkpoint; the change is recorded in metrics.jsonl
            (an ``"event": "recover"`` record), in config.yaml and in later checkpoints.

    Returns:
        dict with ``run_dir``, ``step``, ``init`` (kNN / linear probe of the random-init encoder, if measured),
        ``final`` (the same after training), ``online_probe_acc``, ``wall_time_s``.

    Raises:
        ConfigError, kerjepa.training.data.DataError: a configuration or dataset that cannot run.
        CheckpointError, RunFolderError: a checkpoint that cannot be resumed, a run folder that cannot be used.
        TrainingError: a non-finite loss or non-finite weights (the last good checkpoint is kept).
        Interrupted: SIGINT or SIGTERM arrived; a checkpoint was written at the step reached.
    """
    run_dir = Path(out) if out is not None else Path("runs") / cfg.preset.replace("/", "_")
    ckpt = load_checkpoint(run_dir / CHECKPOINT) if resume else None
    return _start(cfg, run_dir, ckpt, overwrite=overwrite, recover=recover)


def _start(cfg: Config, run_dir: Path, ckpt: dict | None, overwrite: bool = False, recover: bool = False) -> dict:
    """Check the resume rules and the run folder, start the processes, and train with SIGINT/SIGTERM caught."""
    t_start = time.time()
    changes = {}
    if ckpt is not None:
        if overwrite:
            raise ConfigError("--resume and --overwrite contradict each other: resume the run or replace it")
        cfg, changes = resume_config(Config.from_dict(ckpt["config"]), cfg, run_dir / CHECKPOINT, recover)
    elif recover:
        raise ConfigError("--recover changes a run that is resumed: use it together with --resume")
    # every rank checks the folder before the processes meet (rank 0 alone replaces an old run), so they agree
    prepare_run_dir(run_dir, resume=ckpt is not None, overwrite=overwrite,
                    remove=int(os.environ.get("RANK", "0")) == 0)
    dist = setup_distributed(cfg)
    stop = _StopSignal(run_dir / CHECKPOINT)
    try:
        with stop.installed():
            return _train(cfg, dist, run_dir, ckpt, t_start, changes, stop)
    finally:
        if dist.world_size > 1 and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()


class _StopSignal:
    """SIGINT and SIGTERM: once the loop runs (``armed``), a flag the loop reads once per step; before, or at a
    second signal, an immediate :class:`Interrupted`."""

    def __init__(self, path: Path):
        self.signum, self.armed, self.path = 0, False, path

    def __call__(self, signum, frame):
        if not self.armed or self.signum:
            raise Interrupted(signum, None, self.path)
        self.signum = signum

    @contextlib.contextmanager
    def installed(self):
        if threading.current_thread() is not threading.main_thread():  # signals reach the main thread only
            yield self
            return
        previous = {s: signal.signal(s, self) for s in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield self
        finally:
            for s, handler in previous.items():
                signal.signal(s, handler)


def _train(cfg: Config, dist: Dist, run_dir: Path, ckpt: dict | None, t_start: float, changes: dict,
           stop: _StopSignal) -> dict:
    device = dist.device
    bf16 = cfg.precision == "bf16" or (cfg.precision == "auto" and device.type == "cuda")

    def autocast():
        return torch.autocast(device.type, dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()

    # the regularizer first: a bad spec fails before any data is read
    reg = build_regularizer(cfg).to(device)
    check_regularizer(reg, cfg, dist.world_size, device)

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
    check_model(net, cfg, in_chans, device)
    opt = torch.optim.AdamW(param_groups(net, cfg), lr=cfg.lr)
    step, ckpt_path = 0, run_dir / CHECKPOINT
    if ckpt is not None:
        hyper = [{k: v for k, v in group.items() if k != "params"} for group in opt.param_groups]
        load_state(net, ckpt["model"], "model", ckpt_path)
        load_state(reg, ckpt["regularizer"], "regularizer state", ckpt_path)
        load_state(opt, ckpt["optimizer"], "optimizer state", ckpt_path)
        for group, values in zip(opt.param_groups, hyper):  # the config's lr and weight decay, not the saved ones
            group.update(values)
        step = int(ckpt["step"])
        restore_rng(ckpt["rng"], dist, cfg.seed, step)
    else:
        torch.manual_seed(cfg.seed + dist.rank)  # per-rank randomness for drop-path
    saved_step = step if ckpt is not None else None  # the step of the last good checkpoint
    if ckpt is not None and ckpt.get("finished") and step >= end_step:
        return _finished(run_dir, ckpt, dist)
    if cfg.check_images:
        _check_images(train_base, val_base, cfg, dist)
    model = torch.compile(net) if cfg.compile else net
    if dist.world_size > 1:
        model = nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    ssl_params = [p for n, p in net.named_parameters() if not n.startswith("probe.")]

    # run folder (prepared by _start)
    if dist.main:
        write_text(run_dir / CONFIG, dumps(cfg))
    logger = Logger(run_dir, dist.main, cfg.tensorboard, step if ckpt is not None else None)
    results = dict(ckpt["results"]) if ckpt is not None else {}
    history = list(ckpt.get("changes", [])) if ckpt is not None else []  # recovery changes, oldest first
    if changes:
        history.append({"step": step, **changes})
        logger.log({"step": step, "event": "recover", "changed": changes})
        _say(dist, f"resuming {run_dir} at step {step} with " + ", ".join(
            f"{k}={new} (was {old})" for k, (old, new) in changes.items()) + f"; recorded in {run_dir / METRICS}")

    def checkpoint(**extra):
        """Save the state at `step`, only if every tensor is finite (else the last good checkpoint stays)."""
        nonlocal saved_step
        bad = first_nonfinite([*net.state_dict().items(), *reg.state_dict().items(), *optimizer_tensors(opt)])
        if bad is not None:
            raise TrainingError(f"non-finite weights after step {step} ({bad}), so they were not saved; "
                                + _kept(run_dir, saved_step))
        state = {"config": cfg.to_dict(), "step": step, "model": net.state_dict(), "regularizer": reg.state_dict(),
                 "optimizer": opt.state_dict(), "results": results, "world_size": dist.world_size,
                 "changes": history, **extra, **gather_rng(dist)}
        if dist.main:
            save_checkpoint(ckpt_path, state)
        saved_step = step

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
    tick, tick_step, last, stopping = time.time(), step, {}, False
    batches = iter(loader)
    stop.armed = True
    while True:
        try:
            views, local, labels = next(batches)
        except StopIteration:
            break
        except Exception:  # a signal that also stopped the DataLoader's workers: stop at this step
            if not (stop.signum and dist.world_size == 1):
                raise
            stopping = True
            break
        for group in opt.param_groups:
            group["lr"] = scheduled_lr(group["base_lr"], step, total_steps, warmup_steps, cfg)
        loss, parts = compute_loss(model, reg, (views, local, labels), cfg, device, autocast)
        # one collective per step: the rank-averaged loss terms, which tell every rank whether to stop (a
        # non-finite loss, or a SIGINT/SIGTERM on any rank: all ranks then stop after this same step)
        stats = torch.stack([loss.detach(), parts["ssl"], parts["align"], parts["reg"], parts["probe_loss"],
                             loss.new_tensor(float(stop.signum > 0))])
        if dist.world_size > 1:
            torch.distributed.all_reduce(stats)
            stats /= dist.world_size
        total, ssl, align, omega, probe_loss, signalled = stats.tolist()
        if not math.isfinite(total):
            if bar is not None:
                bar.close()
            raise TrainingError(f"non-finite loss at step {step} (alignment {align:.4g}, regularizer "
                                f"{omega:.4g}); stopping, " + _kept(run_dir, saved_step))

        opt.zero_grad(set_to_none=True)
        loss.backward()
        if cfg.grad_clip > 0:
            nn.utils.clip_grad_norm_(ssl_params, cfg.grad_clip)
        opt.step()
        step += 1

        if step % cfg.log_every == 0 or step == end_step:
            now = time.time()
            last = {"step": step, "epoch": step / spe, "loss": ssl, "align": align, "reg": omega,
                    "probe_loss": probe_loss, "lr": opt.param_groups[0]["lr"],
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
            record_online_probe(results, acc, step // spe, len(val_eval))
            logger.log({"step": step, "epoch": step // spe, "online_probe_acc": acc})
            if cfg.health_bootstrap and dist.main:  # statistic, p-value, effective rank of the val embeddings
                logger.log(embedding_health(net, val_base, cfg, device, autocast, step))
        if cfg.ckpt_every and step % cfg.ckpt_every == 0 and step < end_step:
            checkpoint()
        if signalled > 0 or (stop.signum and dist.world_size == 1):
            stopping = True
            break
    if bar is not None:
        bar.close()
    if stopping or (stop.signum and dist.world_size == 1):  # interrupted: a checkpoint at this step, then stop
        if saved_step != step:
            checkpoint()
        raise Interrupted(stop.signum or signal.SIGTERM, step, ckpt_path)
    bad = first_nonfinite(net.state_dict().items())
    if bad is not None:
        raise TrainingError(f"non-finite weights after step {step} ({bad}); " + _kept(run_dir, saved_step))

    # end of run: online probe, frozen-feature probes, final checkpoint
    record_online_probe(results, online_probe_accuracy(net, val_loader, dist, autocast),
                        step // spe if step % spe == 0 else step / spe, len(val_eval))
    logger.log({"step": step, "epoch": step / spe, "online_probe_acc": results["online_probe_acc"]})
    if cfg.final_eval and dist.main:
        results["final"] = evaluate_frozen(net.backbone, train_eval, val_eval, cfg, device, autocast)
    out = {"run_dir": str(run_dir), "step": step, "total_steps": total_steps, "preset": cfg.preset,
           **results, "reported": REPORTED, "last": last, "wall_time_s": time.time() - t_start}
    checkpoint(finished=True, summary=out)
    if dist.world_size > 1:
        torch.distributed.barrier()
    if dist.main:
        logger.log({"step": step, "event": "final", "online_probe_acc": results["online_probe_acc"],
                    **results.get("final", {}), "wall_time_s": out["wall_time_s"]})
        write_text(run_dir / RESULTS, json.dumps(out, indent=2) + "\n")
        msg = f"done: {step} steps in {out['wall_time_s']:.0f} s; online probe {results['online_probe_acc']:.4f}"
        if "final" in results:
            fin = results["final"]
            if fin["lejepa_probe_acc"] is not None:
                msg += f"; linear probe (LeJEPA's protocol) {fin['lejepa_probe_acc']:.4f} +- {fin['lejepa_probe_stderr']:.4f}"
            msg += f"; diagnostics: kNN {fin['knn_acc']:.4f}, linear probe on the head {fin['linear_probe_acc']:.4f}"
        if "init" in results:
            msg += (f" (random init: kNN {results['init']['knn_acc']:.4f}, "
                    f"linear probe {results['init']['linear_probe_acc']:.4f})")
        _say(dist, msg + f"; results in {run_dir / RESULTS}")
    logger.close()
    return out


def _kept(run_dir: Path, saved_step: int | None) -> str:
    """What a diverged run left behind, and the command that continues it."""
    if saved_step is None:
        return (f"no checkpoint was written. Start again with a lower lr or lam, or grad_clip > 0 "
                f"(--overwrite replaces {run_dir})")
    return (f"the last good checkpoint (step {saved_step}) is kept in {run_dir / CHECKPOINT}. Continue from it with "
            f"a lower lr or lam, or grad_clip > 0: python -m kerjepa.train --out {run_dir} --resume --recover "
            f"--lr=...")


def _finished(run_dir: Path, ckpt: dict, dist: Dist) -> dict:
    """A resumed run that is already finished: nothing is trained or recorded again; results.json is restored."""
    summary = dict(ckpt.get("summary") or {"run_dir": str(run_dir), "step": ckpt["step"], **ckpt["results"]})
    if dist.main and not (run_dir / RESULTS).is_file():
        write_text(run_dir / RESULTS, json.dumps(summary, indent=2) + "\n")
    _say(dist, f"{run_dir} holds a finished run ({ckpt['step']} steps); nothing to do. Results in {run_dir / RESULTS}")
    return summary


def _check_images(train_base, val_base, cfg: Config, dist: Dist) -> None:
    """Decode every image of both splits once (each rank a share); raise a DataError listing those that fail."""
    files = kdata.image_files(train_base) + kdata.image_files(val_base)
    if not files:
        return
    threads = max(1, kdata.default_num_workers(cfg.num_workers))
    errors = kdata.undecodable_images(files[dist.rank::dist.world_size], cfg.img_size, threads)
    if dist.world_size > 1:
        parts = [None] * dist.world_size
        torch.distributed.all_gather_object(parts, errors)
        errors = sorted(e for part in parts for e in part)
    if errors:
        raise kdata.DataError(kdata.undecodable_message(errors, len(files)))


def _say(dist: Dist, msg: str) -> None:
    if dist.main:
        try:
            print(msg, flush=True)
        except BrokenPipeError:  # nobody reads stdout any more: keep training, print nothing
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())


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
    """``python -m kerjepa.train --preset NAME [--config FILE.yaml] [--key=value ...] --out RUN_DIR [--resume]``.

    Exit status: 0 done (or nothing left to do); 2 a problem with the command, the config, the data, a
    checkpoint or the run folder, reported as one line ``kerjepa.train: error: ...`` before training starts
    wherever it can be found then; 1 the training diverged (the last good checkpoint is kept); 130 / 143
    interrupted by SIGINT / SIGTERM, after a checkpoint at the step reached (``--resume`` continues exactly).
    """
    try:
        return _main(argv)
    except BrokenPipeError:  # `--list-presets | head`: the reader left; say nothing more
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 128 + signal.SIGPIPE


def _error(message: str, code: int = 2) -> int:
    print(f"kerjepa.train: error: {' '.join(message.split())}", file=sys.stderr)
    return code


def _main(argv) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m kerjepa.train", description="Train KerJEPA (alignment + lambda * kernel discrepancy).",
        epilog="Any config field can be overridden as --key=value (e.g. --lr=1e-3 --reg.kind=ksd --lam=2); "
               "see --help-config.")
    parser.add_argument("--preset", default=None, help="named preset (default: digits-cpu, or the run's own "
                        "config with --resume); --list-presets")
    parser.add_argument("--config", default=None, help="YAML file of overrides, applied after the preset")
    parser.add_argument("--out", default=None, help="run folder (default: runs/<preset>)")
    parser.add_argument("--resume", action="store_true", help="continue the run in --out from its checkpoint")
    parser.add_argument("--overwrite", action="store_true", help="replace the run that --out holds")
    parser.add_argument("--recover", action="store_true", help="with --resume: allow a new " +
                        ", ".join(RECOVERY_CHANGES) + " (e.g. after a divergence); recorded in metrics.jsonl")
    parser.add_argument("--list-presets", action="store_true", help="print all preset names and exit")
    parser.add_argument("--help-config", action="store_true", help="print the resolved config as YAML and exit")
    args, rest = parser.parse_known_args(argv)
    if args.list_presets:
        print("\n".join(preset_names()), flush=True)
        return 0
    bad = [r for r in rest if not (r.startswith("--") and "=" in r)]
    if bad:
        return _error(f"unrecognised argument(s) {bad}; overrides look like --key=value")
    try:
        if args.resume and args.out is None:
            raise ConfigError("--resume needs --out RUN_DIR (the folder holding checkpoint.pt)")
        ckpt = load_checkpoint(Path(args.out) / CHECKPOINT) if args.resume else None
        if ckpt is not None and args.preset is None:  # the run's own config
            cfg = Config.from_dict(ckpt["config"])
            cfg = replace(cfg, load_yaml(args.config)) if args.config else cfg
            cfg = replace(cfg, parse_overrides(rest)) if rest else cfg
        else:
            cfg = from_args(args.preset or "digits-cpu", args.config, rest)
        if args.help_config:
            print(dumps(cfg), end="", flush=True)
            return 0
        run_dir = Path(args.out) if args.out is not None else Path("runs") / cfg.preset.replace("/", "_")
        _start(cfg, run_dir, ckpt, overwrite=args.overwrite, recover=args.recover)
    except (ConfigError, kdata.DataError, CheckpointError, RunFolderError) as err:
        return _error(_clean_message(err))
    except TrainingError as err:
        return _error(str(err), 1)
    except Interrupted as stop:
        name = signal.Signals(stop.signum).name
        if stop.step is None:  # before the first step, or a second signal: stopped at once
            kept = f"the checkpoint {stop.path} is as it was" if stop.path.exists() else "no checkpoint was written"
            print(f"kerjepa.train: interrupted by {name}, stopped at once; {kept}", file=sys.stderr)
        else:
            print(f"kerjepa.train: interrupted by {name} at step {stop.step}; the checkpoint {stop.path} holds it; "
                  f"continue with: python -m kerjepa.train --out {stop.path.parent} --resume", file=sys.stderr)
        return 128 + stop.signum
    except KeyboardInterrupt:
        print("kerjepa.train: interrupted before a checkpoint could be written", file=sys.stderr)
        return 130
    except OSError as err:  # a file the run needs that cannot be read or written
        return _error(f"{err.strerror or err}: {err.filename}" if err.filename else str(err))
    return 0
