"""Datasets, multi-view augmentation and the deterministic batch order of the trainer.

Three sources (``Config.dataset``):

* ``"imagenette"``: ``torchvision.datasets.Imagenette`` at ``size`` full / 320px / 160px, read from
  ``<data_root>/imagenette2[-320|-160]/{train,val}``; ``download=True`` fetches it (needs internet).
* ``"imagefolder"``: any ``<data_root>/{train,val}/<class>/<image>`` tree.
* ``"digits"``: scikit-learn's 8x8 handwritten digits (shipped inside scikit-learn, works offline),
  upsampled to ``img_size`` once at load time; a fixed split of 1437 train / 360 val images.
* ``"digits-holdout"``: the tuning split of the digits: the first 1149 of the 1437 training images
  train, the other 288 evaluate, and the 360 validation images are never read. Hyperparameters
  chosen on it leave the reported validation accuracy unbiased.

Views follow LeJEPA's minimal ImageNette example (its MINIMAL.md): every one of the V views gets the
same random augmentation pipeline. Augmentation randomness is a pure function of
``(seed, epoch, image index)``, so a batch is the same whatever the rank, the number of DataLoader
workers, or whether the run was resumed; the model's own randomness (drop-path) uses the global
RNG, saved in checkpoints.
"""
from __future__ import annotations

import math
import os
from pathlib import Path

import torch

__all__ = ["DataError", "IMAGENETTE_WNIDS", "build_datasets", "ViewDataset", "EvalDataset", "DigitsViews",
           "view_transform", "eval_transform", "epoch_batches", "steps_per_epoch", "image_files",
           "undecodable_images"]

#: The ten ImageNet classes of ImageNette, in torchvision's (sorted) order.
IMAGENETTE_WNIDS = ("n01440764", "n02102040", "n02979186", "n03000684", "n03028079", "n03394916",
                    "n03417042", "n03425413", "n03445777", "n03888257")
_IMAGENETTE_FOLDER = {"full": "imagenette2", "320px": "imagenette2-320", "160px": "imagenette2-160"}
_IMAGENETTE_URL = "https://s3.amazonaws.com/fast-ai-imageclas/{}.tgz"
_IMAGENET_MEAN, _IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


class DataError(RuntimeError):
    """A dataset that cannot be read: a missing folder, an image that cannot be decoded."""


def _load_image(path):
    """Open an image file as RGB, turning any decoding failure into a DataError naming the file."""
    from PIL import Image
    try:
        with open(path, "rb") as fh:
            img = Image.open(fh)
            return img.convert("RGB")
    except Exception as err:  # PIL raises several types (UnidentifiedImageError, OSError, SyntaxError)
        raise DataError(f"cannot decode image {path}: {type(err).__name__}: {err}") from None


#: training images of the digits tuning split (80 % of the 1437); the rest of the 1437 evaluate.
_HOLDOUT_TRAIN = 1149


class _Digits(torch.utils.data.Dataset):
    """scikit-learn digits as (1, S, S) float tensors in [0, 1], bilinearly upsampled from 8x8."""

    def __init__(self, split: str, img_size: int):
        from sklearn.datasets import load_digits
        digits = load_digits()
        images = torch.tensor(digits.images, dtype=torch.float32).unsqueeze(1) / 16.0
        labels = torch.tensor(digits.target, dtype=torch.long)
        order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(0))
        idx = {"train": order[:1437], "val": order[1437:], "holdout-train": order[:_HOLDOUT_TRAIN],
               "holdout-val": order[_HOLDOUT_TRAIN:1437]}[split]
        images = torch.nn.functional.interpolate(images[idx], size=(img_size, img_size), mode="bilinear",
                                                 align_corners=False)
        self.images, self.targets = images.clamp(0, 1), labels[idx]
        self.classes = [str(d) for d in range(10)]

    def __len__(self):
        return len(self.targets)

    def __getitem__(self, i):
        return self.images[i], int(self.targets[i])


def build_datasets(cfg):
    """The (train, val) datasets of raw images for `cfg`, and their number of classes and channels.

    Returns:
        (train, val, num_classes, in_chans); items are (PIL image or tensor, int label).

    Raises:
        DataError: the folder is missing (with the command or URL that fetches it) or holds no images.
    """
    if cfg.dataset == "digits":
        return _Digits("train", cfg.img_size), _Digits("val", cfg.img_size), 10, 1
    if cfg.dataset == "digits-holdout":
        return _Digits("holdout-train", cfg.img_size), _Digits("holdout-val", cfg.img_size), 10, 1
    from torchvision import datasets
    root = Path(cfg.data_root)
    if cfg.dataset == "imagenette":
        folder = _IMAGENETTE_FOLDER[cfg.imagenette_size]
        if not cfg.download and not (root / folder).is_dir():
            raise DataError(
                f"ImageNette ({cfg.imagenette_size}) not found: expected the folder {root / folder} with train/ "
                f"and val/ inside. Download it once with --download=true (about 94 MB for 160px, needs "
                f"internet), or fetch {_IMAGENETTE_URL.format(folder)} and extract it into {root}/ "
                f"(see data/README.md); or point --data_root at the folder that holds {folder}/.")
        try:
            train, val = (datasets.Imagenette(str(root), split=split, size=cfg.imagenette_size,
                                              download=cfg.download and split == "train", loader=_load_image)
                          for split in ("train", "val"))
        except (RuntimeError, OSError, FileNotFoundError) as err:
            raise DataError(f"cannot read ImageNette from {root / folder}: {err}") from None
        return train, val, len(train.wnids), 3
    for split in ("train", "val"):
        if not (root / split).is_dir():
            raise DataError(f"image folder dataset: expected {root / split}/<class>/<image> (data_root={root}), "
                            f"but {root / split} does not exist")
    try:
        train, val = (datasets.ImageFolder(str(root / s), loader=_load_image) for s in ("train", "val"))
    except (RuntimeError, OSError, FileNotFoundError) as err:
        raise DataError(f"cannot read the image folder {root}: {err}") from None
    if train.classes != val.classes:
        raise DataError(f"train and val of {root} have different classes: {train.classes} vs {val.classes}")
    return train, val, len(train.classes), 3


def image_files(dataset) -> list:
    """The image files of a folder dataset (ImageFolder, Imagenette), in index order; [] for in-memory digits."""
    samples = getattr(dataset, "samples", None) or getattr(dataset, "_samples", None) or []
    return [str(path) for path, _ in samples]


def _decode_error(path: str, size: int):
    from PIL import Image
    try:
        with Image.open(path) as img:
            img.draft("RGB", (size, size))  # JPEG: decode at a reduced scale, still reading every byte
            img.load()
        return None
    except Exception as err:  # PIL raises several types (UnidentifiedImageError, OSError, SyntaxError)
        return f"{path} ({type(err).__name__}: {err})"


def undecodable_images(paths, size: int, threads: int = 1) -> list:
    """Decode every image file once; return "path (error)" for each that fails.

    Run before training, so a broken file anywhere (the validation split included) stops the run at its
    start rather than hours in. ``size`` lets JPEGs decode at a reduced scale (every byte is still read).
    """
    from concurrent.futures import ThreadPoolExecutor
    from functools import partial
    if not paths:
        return []
    with ThreadPoolExecutor(max(1, threads)) as pool:  # PIL releases the GIL while decoding
        return [err for err in pool.map(partial(_decode_error, size=size), paths, chunksize=64) if err]


def undecodable_message(errors: list, scanned: int) -> str:
    """One line for :class:`DataError`: how many images failed, the first few, and what to do."""
    shown = "; ".join(errors[:3]) + (f"; and {len(errors) - 3} more" if len(errors) > 3 else "")
    return (f"cannot decode {len(errors)} of {scanned} images: {shown}. Remove or replace them (or skip this "
            f"check with --check_images=false)")


def view_transform(cfg, local: bool = False):
    """The random augmentation applied independently to each view (torchvision transforms v2).

    ``augment="lejepa"`` is LeJEPA's minimal ImageNette pipeline: RandomResizedCrop
    (scale (crop_scale_min, 1)), colour jitter (0.8, 0.8, 0.8, 0.2) w.p. 0.8, grayscale w.p. 0.2,
    Gaussian blur (7, sigma 0.1-2) w.p. 0.5, solarize w.p. 0.2, horizontal flip, ImageNet
    normalisation. ``augment="digits"`` is a mild version for small grayscale digits: crops of at
    least 40 % of the area, brightness/contrast jitter, a light blur, no flips (a mirrored 2 is not a 2).
    ``local=True`` gives the multi-crop variant at ``local_img_size`` with ``local_crop_scale``.
    The digits pipeline is :class:`DigitsViews` (all V views of an image in one batched call).
    """
    from torchvision.transforms import v2
    size = cfg.local_img_size if local else cfg.img_size
    if cfg.augment == "digits":
        return DigitsViews(size, tuple(cfg.local_crop_scale) if local else (0.4, 1.0))
    scale = tuple(cfg.local_crop_scale) if local else (cfg.crop_scale_min, 1.0)
    if cfg.augment == "none":
        ops = [v2.RandomResizedCrop(size, scale=scale, antialias=True)]
    else:
        ops = [
            v2.RandomResizedCrop(size, scale=scale, antialias=True),
            v2.RandomApply([v2.ColorJitter(0.8, 0.8, 0.8, 0.2)], p=0.8),
            v2.RandomGrayscale(p=0.2),
            v2.RandomApply([v2.GaussianBlur(kernel_size=7, sigma=(0.1, 2.0))], p=0.5),
            v2.RandomApply([v2.RandomSolarize(threshold=128)], p=0.2),
            v2.RandomHorizontalFlip(),
        ]
    return v2.Compose([v2.ToImage(), *ops, v2.ToDtype(torch.float32, scale=True),
                       v2.Normalize(mean=list(_IMAGENET_MEAN), std=list(_IMAGENET_STD))])


class DigitsViews:
    """Mild augmentation for small grayscale digits, vectorised over a whole batch of views (cheap on a CPU).

    Each view: a random crop of `scale` of the area (aspect ratio 0.8-1.25) with a rotation of at most
    10 degrees, resampled to `size` (zero background, like the digits); brightness and contrast jitter
    (0.6-1.4) each with probability 0.8; a 3x3 Gaussian blur (sigma 0.1-1) with probability 0.5; then
    the same normalisation as :func:`eval_transform`. No flips: a mirrored 2 is not a 2.

    ``draw(num_views, generator) -> (num_views, 11)`` uniforms (drawn per image, so a view depends only on
    its image's seed), then ``apply(images (B, 1, S, S), u (B, 11)) -> (B, 1, size, size)``.
    """

    def __init__(self, size: int, scale=(0.4, 1.0)):
        self.size, self.scale = size, scale

    @staticmethod
    def draw(num_views, generator):
        return torch.rand(num_views, 11, generator=generator)

    def apply(self, images, u):
        B = len(u)

        def between(col, lo, hi):
            return lo + (hi - lo) * u[:, col]
        area, log_ratio = between(0, *self.scale), between(1, math.log(0.8), math.log(1.25))
        w, h = (area * log_ratio.exp()).sqrt().clamp(max=1), (area / log_ratio.exp()).sqrt().clamp(max=1)
        tx, ty = (1 - w) * between(2, -1, 1), (1 - h) * between(3, -1, 1)
        angle = between(4, -math.pi / 18, math.pi / 18)
        cos, sin = angle.cos(), angle.sin()
        theta = torch.stack([torch.stack([w * cos, -h * sin, tx], 1), torch.stack([w * sin, h * cos, ty], 1)], 1)
        grid = torch.nn.functional.affine_grid(theta, (B, 1, self.size, self.size), align_corners=False)
        x = torch.nn.functional.grid_sample(images, grid, align_corners=False)
        ones = torch.ones(B)
        contrast = torch.where(u[:, 5] < 0.8, between(6, 0.6, 1.4), ones).view(B, 1, 1, 1)
        brightness = torch.where(u[:, 7] < 0.8, between(8, 0.6, 1.4), ones).view(B, 1, 1, 1)
        mean = x.mean((1, 2, 3), keepdim=True)
        x = (((x - mean) * contrast + mean) * brightness).clamp(0, 1)
        sigma = torch.where(u[:, 9] < 0.5, between(10, 0.1, 1.0), torch.full((B,), 1e-3))
        taps = torch.exp(-torch.tensor([-1.0, 0.0, 1.0]) ** 2 / (2 * sigma.view(B, 1) ** 2))
        taps = taps / taps.sum(1, keepdim=True)
        kernel = (taps[:, :, None] * taps[:, None, :]).unsqueeze(1)  # (B, 1, 3, 3); tiny sigma = identity
        x = torch.nn.functional.conv2d(x.transpose(0, 1), kernel, padding=1, groups=B).transpose(0, 1)
        return (x - 0.3) / 0.4


def eval_transform(cfg):
    """Deterministic view for evaluation: Resize + CenterCrop to img_size (digits: normalise only)."""
    from torchvision.transforms import v2
    if cfg.dataset in ("digits", "digits-holdout"):
        return v2.Normalize(mean=[0.3], std=[0.4])
    return v2.Compose([v2.ToImage(), v2.Resize(cfg.img_size, antialias=True), v2.CenterCrop(cfg.img_size),
                       v2.ToDtype(torch.float32, scale=True),
                       v2.Normalize(mean=list(_IMAGENET_MEAN), std=list(_IMAGENET_STD))])


def _sample_seed(seed: int, epoch: int, index: int) -> int:
    return ((seed * 1_000_003 + epoch) * 10_000_019 + index) % (2**63 - 1)


class ViewDataset(torch.utils.data.Dataset):
    """V augmented global views (and optional local views) of each image.

    Indexed by ``(index, epoch)`` pairs (see :func:`epoch_batches`); the augmentation RNG is seeded from
    ``(seed, epoch, index)`` inside a forked RNG, so the caller's global RNG is untouched.

    Returns:
        (global_views (V, C, H, W), local_views (L, C, h, w) or an empty tensor, label)
    """

    def __init__(self, base, cfg):
        self.base, self.views, self.local_views, self.seed = base, cfg.views, cfg.local_views, cfg.seed
        self.transform = view_transform(cfg)
        self.local_transform = view_transform(cfg, local=True) if cfg.local_views else None

    def __len__(self):
        return len(self.base)

    def __getitem__(self, key):
        index, epoch = key
        image, label = self.base[index]
        if isinstance(self.transform, DigitsViews):  # draw the parameters here, apply them per batch in collate
            gen = torch.Generator().manual_seed(_sample_seed(self.seed, epoch, index))
            return image, DigitsViews.draw(self.views + self.local_views, gen), label
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(_sample_seed(self.seed, epoch, index))
            views = torch.stack([self.transform(image) for _ in range(self.views)])
            local = (torch.stack([self.local_transform(image) for _ in range(self.local_views)])
                     if self.local_views else torch.empty(0))
        return views, local, label


    def collate(self, items):
        """Stack a batch; for digits, apply the augmentation to all N*V views at once."""
        if not isinstance(self.transform, DigitsViews):
            return torch.utils.data.default_collate(items)
        images = torch.stack([it[0] for it in items])                     # (N, 1, S, S)
        u = torch.stack([it[1] for it in items])                          # (N, V+L, 11)
        labels = torch.tensor([it[2] for it in items])
        N, V = len(items), self.views

        def make(transform, params, count):
            x = images.repeat_interleave(count, 0)
            return transform.apply(x, params.reshape(-1, params.shape[-1])).view(N, count, *x.shape[1:2],
                                                                                 transform.size, transform.size)
        views = make(self.transform, u[:, :V], V)
        local = make(self.local_transform, u[:, V:], self.local_views) if self.local_views else torch.empty(0)
        return views, local, labels


class EvalDataset(torch.utils.data.Dataset):
    """Single deterministic views for the probes: (image (C, H, W), label)."""

    def __init__(self, base, cfg):
        self.base, self.transform = base, eval_transform(cfg)

    def __len__(self):
        return len(self.base)

    def __getitem__(self, index):
        image, label = self.base[index]
        return self.transform(image), label


def steps_per_epoch(num_images: int, batch_size: int) -> int:
    """Full global batches per epoch (the last partial batch is dropped, as in LeJEPA's example)."""
    return num_images // batch_size


def epoch_batches(num_images: int, batch_size: int, epoch: int, seed: int, rank: int = 0,
                  world_size: int = 1, start: int = 0) -> list:
    """This rank's share of every global batch of an epoch, from batch `start` on.

    The epoch's permutation is drawn from a generator seeded by ``(seed, epoch)``; global batch b is
    ``perm[b*B:(b+1)*B]`` and rank r takes its r-th contiguous slice of B / world_size images, so the
    union over ranks is exactly the single-process batch. Items are ``(index, epoch)`` pairs.
    """
    if batch_size % world_size:
        raise ValueError(f"batch_size {batch_size} is not divisible by the world size {world_size}")
    gen = torch.Generator().manual_seed(_sample_seed(seed, epoch, 0x5EED))
    perm = torch.randperm(num_images, generator=gen).tolist()
    local = batch_size // world_size
    out = []
    for b in range(start, steps_per_epoch(num_images, batch_size)):
        chunk = perm[b * batch_size + rank * local: b * batch_size + (rank + 1) * local]
        out.append([(i, epoch) for i in chunk])
    return out


def default_num_workers(requested: int) -> int:
    """`requested`, capped by the CPUs this process may use."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:
        cpus = os.cpu_count() or 1
    return max(0, min(requested, cpus))
