"""Data: fabricated ImageNette trees, digits, deterministic views and batch order, clear errors."""
from __future__ import annotations

import pytest
import torch

from kerjepa.training import data as kdata
from kerjepa.training.config import get_preset


def make_imagenette(root, per_class: int = 2, size: int = 40, classes=kdata.IMAGENETTE_WNIDS[:3],
                    folder: str = "imagenette2-160"):
    """Write a tiny ImageNette-shaped tree: <root>/<folder>/{train,val}/<wnid>/*.JPEG (random JPEGs)."""
    from PIL import Image
    gen = torch.Generator().manual_seed(0)
    for split in ("train", "val"):
        for c, wnid in enumerate(classes):
            d = root / folder / split / wnid
            d.mkdir(parents=True, exist_ok=True)
            for i in range(per_class):
                pixels = torch.randint(0, 256, (size, size + 8, 3), generator=gen, dtype=torch.uint8)
                pixels[..., c % 3] = 200  # a class-dependent colour
                Image.fromarray(pixels.numpy()).save(d / f"{wnid}_{split}_{i}.JPEG", quality=80)
    return root


@pytest.fixture
def imagenette_root(tmp_path):
    return make_imagenette(tmp_path)


def smoke_cfg(root, **changes):
    return get_preset("smoke").replace(data_root=str(root), **changes)


def test_imagenette_tree_loads_with_real_wnids(imagenette_root):
    train, val, num_classes, in_chans = kdata.build_datasets(smoke_cfg(imagenette_root))
    assert (len(train), len(val), num_classes, in_chans) == (6, 6, 3, 3)
    assert train.wnids == list(kdata.IMAGENETTE_WNIDS[:3])


def test_views_are_deterministic_and_leave_the_global_rng_alone(imagenette_root):
    cfg = smoke_cfg(imagenette_root, views=3)
    ds = kdata.ViewDataset(kdata.build_datasets(cfg)[0], cfg)
    state = torch.get_rng_state()
    views, local, label = ds[(4, 7)]
    assert torch.equal(state, torch.get_rng_state())
    assert views.shape == (3, 3, 32, 32) and local.numel() == 0 and label == 2
    assert torch.isfinite(views).all()
    assert torch.equal(views, ds[(4, 7)][0])          # same (index, epoch) -> same views
    assert not torch.equal(views, ds[(4, 8)][0])      # a new epoch -> new views
    assert not torch.equal(views[0], views[1])        # views of one image differ


def test_local_views_have_their_own_size(imagenette_root):
    cfg = smoke_cfg(imagenette_root, local_views=2, local_img_size=16)
    views, local, _ = kdata.ViewDataset(kdata.build_datasets(cfg)[0], cfg)[(0, 0)]
    assert views.shape == (2, 3, 32, 32) and local.shape == (2, 3, 16, 16)


def test_eval_transform_is_center_crop(imagenette_root):
    cfg = smoke_cfg(imagenette_root)
    ds = kdata.EvalDataset(kdata.build_datasets(cfg)[1], cfg)
    x, y = ds[0]
    assert x.shape == (3, 32, 32) and torch.equal(x, ds[0][0])


def test_digits_split_views_and_batched_collate():
    cfg = get_preset("digits-cpu")
    train, val, num_classes, in_chans = kdata.build_datasets(cfg)
    assert (len(train), len(val), num_classes, in_chans) == (1437, 360, 10, 1)
    ds = kdata.ViewDataset(train, cfg)
    keys = kdata.epoch_batches(len(train), 8, epoch=0, seed=0)[0]
    views, local, labels = ds.collate([ds[k] for k in keys])
    assert views.shape == (8, 4, 1, 16, 16) and labels.shape == (8,)
    # a view depends only on its own image's seed, not on the rest of the batch
    part, _, _ = ds.collate([ds[k] for k in keys[2:5]])
    torch.testing.assert_close(part, views[2:5], rtol=0, atol=1e-6)
    assert views.std() > 0.3 and torch.isfinite(views).all()


def test_epoch_batches_split_the_global_batch_over_ranks():
    single = kdata.epoch_batches(103, 8, epoch=3, seed=1)
    assert len(single) == 12 and all(len(b) == 8 for b in single)
    assert len({i for b in single for i, _ in b}) == 96  # no repeats within an epoch
    ranks = [kdata.epoch_batches(103, 8, epoch=3, seed=1, rank=r, world_size=2) for r in range(2)]
    for b, (b0, b1) in enumerate(zip(*ranks)):
        assert b0 + b1 == single[b]
    assert kdata.epoch_batches(103, 8, epoch=3, seed=1, start=5) == single[5:]
    assert kdata.epoch_batches(103, 8, epoch=4, seed=1) != single
    with pytest.raises(ValueError, match="not divisible"):
        kdata.epoch_batches(103, 8, epoch=0, seed=0, world_size=3)


def test_missing_imagenette_says_how_to_get_it(tmp_path):
    with pytest.raises(kdata.DataError, match="download=true"):
        kdata.build_datasets(smoke_cfg(tmp_path / "nowhere"))


def test_missing_image_folder(tmp_path):
    with pytest.raises(kdata.DataError, match="does not exist"):
        kdata.build_datasets(smoke_cfg(tmp_path, dataset="imagefolder"))


def test_image_folder_tree(tmp_path):
    make_imagenette(tmp_path, folder="mine", classes=("cats", "dogs"))
    train, val, num_classes, _ = kdata.build_datasets(smoke_cfg(tmp_path / "mine", dataset="imagefolder"))
    assert (len(train), num_classes) == (4, 2)


def test_undecodable_image_names_the_file(imagenette_root):
    bad = imagenette_root / "imagenette2-160" / "train" / kdata.IMAGENETTE_WNIDS[0] / "broken.JPEG"
    bad.write_bytes(b"not a jpeg at all")
    train = kdata.build_datasets(smoke_cfg(imagenette_root))[0]
    index = [p for p, _ in train._samples].index(str(bad))
    with pytest.raises(kdata.DataError, match="cannot decode image .*broken.JPEG"):
        train[index]


def test_every_undecodable_image_of_both_splits_is_found(imagenette_root):
    train, val, _, _ = kdata.build_datasets(smoke_cfg(imagenette_root))
    files = kdata.image_files(train) + kdata.image_files(val)
    assert len(files) == 12 and all(f.endswith(".JPEG") for f in files)
    assert kdata.undecodable_images(files, 32, threads=2) == []
    truncated, garbage = files[1], files[-1]  # one in train, one in val
    data = open(truncated, "rb").read()
    open(truncated, "wb").write(data[: len(data) // 2])
    open(garbage, "wb").write(b"not an image")
    errors = kdata.undecodable_images(files, 32, threads=2)
    assert [e.split(" (")[0] for e in errors] == [truncated, garbage]
    assert "truncated" in errors[0] and "UnidentifiedImageError" in errors[1]
    message = kdata.undecodable_message(errors, len(files))
    assert message.startswith("cannot decode 2 of 12 images") and "\n" not in message
    assert kdata.image_files(kdata.build_datasets(get_preset("digits-cpu"))[0]) == []  # in memory: nothing to scan
