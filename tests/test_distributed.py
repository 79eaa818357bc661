"""Distributed-exact regularizers: W gloo processes on CPU reproduce one process on the global batch.

One spawn per world size runs every regularizer kind in float32 and float64. Each rank holds
an uneven shard of the global batch; the value must equal the single-process value of the
concatenated batch, and ``z_r.grad / W`` the rows of its single-process gradient
(the convention of :mod:`kerjepa.distributed`).
"""
import os
import socket
import tempfile

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

import kerjepa
from kerjepa import distributed
from tolerances import DISTRIBUTED

pytestmark = pytest.mark.ddp

RTOL = DISTRIBUTED
D = 4
SHARDS = {2: [11, 13], 4: [5, 7, 6, 6]}
#: step counter each rank starts from: the sliced modules must agree on the maximum
START_STEP = 5


def specs():
    """(name, factory kwargs, views) for every regularizer kind."""
    out = [
        ("mmd-gauss", dict(kind="mmd", kernel="gaussian", gamma=0.2), False),
        ("mmd-imq-v", dict(kind="mmd", kernel="imq", estimator="v"), False),
        ("ksd-median-views", dict(kind="ksd", kernel="imq", alpha="median"), True),
        ("mmd-prior-samples", dict(kind="mmd", prior="laplace", prior_samples=9), False),
        ("ksd-imq-gauss", dict(kind="ksd", kernel="imq"), False),
        ("ksd-gauss-laplace-chunked", dict(kind="ksd", kernel="gaussian", prior="laplace",
                                           backend="chunked"), False),
        ("ksd-imq-student-v", dict(kind="ksd", kernel="imq", prior="student_t", nu=5.0,
                                   estimator="v"), False),
        ("sliced-mmd", dict(kind="mmd", slices=8, scale="lejepa"), False),
        ("sliced-mmd-u-views", dict(kind="mmd", slices=8, estimator="u"), True),
        ("sliced-ksd", dict(kind="ksd", slices=8), False),
        ("sliced-ksd-u-laplace", dict(kind="ksd", slices=8, prior="laplace", estimator="u"), False),
        ("epps-pulley", dict(kind="epps_pulley", slices=8), False),
        ("analytic-mmd", dict(kind="mmd", slices="analytic"), False),
        ("analytic-ksd", dict(kind="ksd", slices="analytic"), False),
    ]
    return out


def global_batch(name, dtype, views):
    g = torch.Generator().manual_seed(sum(map(ord, name)))
    shape = (2, 24, D) if views else (24, D)
    # away from the prior, so the statistics are O(1) and not a cancellation of round-off
    return (1.7 * torch.randn(shape, generator=g, dtype=torch.float64) + 0.4).to(dtype)


def build(kwargs):
    kwargs = dict(kwargs)
    reg = kerjepa.regularizer(kwargs.pop("kind"), **kwargs)
    return reg


def row_mean_statistic(z):
    """A sliced-style statistic written with the hook: squared error of mean cos/sin."""
    arg = z @ torch.linspace(-1.0, 1.0, 3 * D, dtype=z.dtype).reshape(D, 3)
    n = distributed.global_rows(z.shape[0])
    cos, sin = distributed.row_mean(torch.cos(arg)), distributed.row_mean(torch.sin(arg))
    return n * ((cos - 0.5).square() + sin.square()).sum()


def _worker(rank, world, port, out_dir, cases):
    torch.set_num_threads(1)
    os.environ["MASTER_ADDR"] = "127.0.0.1"
    os.environ["MASTER_PORT"] = str(port)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        sizes = SHARDS[world]
        start, stop = sum(sizes[:rank]), sum(sizes[:rank + 1])
        results = {}
        for name, kwargs, views, dtype in cases:
            z = global_batch(name, dtype, views)
            z_r = z[..., start:stop, :].clone().requires_grad_(True)
            reg = build(kwargs)
            reg.load_state_dict({"step": torch.tensor(START_STEP if rank == world - 1 else 0)})
            value = reg(z_r)
            value.backward()
            results[(name, str(dtype))] = (value.detach(), z_r.grad, int(reg.step))
        for dtype in (torch.float32, torch.float64):  # the row_mean hook of local_rows
            z = global_batch("row-mean", dtype, False)
            z_r = z[start:stop].clone().requires_grad_(True)
            with distributed.local_rows(z_r):
                value = row_mean_statistic(z_r)
            value.backward()
            results[("row-mean", str(dtype))] = (value.detach(), z_r.grad, 0)
        torch.save(results, os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("world", [2, 4])
def test_global_batch_value_and_gradient(world):
    cases = [(name, kw, views, dtype) for name, kw, views in specs()
             for dtype in (torch.float32, torch.float64)]
    with tempfile.TemporaryDirectory() as out_dir:
        # fork: the children inherit the imported modules (a spawned child re-imports torch)
        mp.start_processes(_worker, args=(world, _free_port(), out_dir, cases), nprocs=world,
                           join=True, start_method="fork")
        ranks = [torch.load(os.path.join(out_dir, f"rank{r}.pt")) for r in range(world)]
    sizes = SHARDS[world]
    for name, kwargs, views, dtype in cases:
        z = global_batch(name, dtype, views).requires_grad_(True)
        reg = build(kwargs)
        reg.load_state_dict({"step": torch.tensor(START_STEP)})
        expected = reg(z)
        (grad,) = torch.autograd.grad(expected, z)
        rtol = RTOL[dtype]
        start = 0
        for r in range(world):
            value, grad_r, step = ranks[r][(name, str(dtype))]
            tag = f"{name} {dtype} rank {r}/{world}"
            assert step == int(reg.step), tag
            torch.testing.assert_close(value, expected.detach(), rtol=rtol, atol=0.0, msg=tag)
            rows = grad[..., start:start + sizes[r], :]
            torch.testing.assert_close(grad_r / world, rows, rtol=rtol,
                                       atol=rtol * float(grad.abs().max()), msg=tag)
            start += sizes[r]
    for dtype in (torch.float32, torch.float64):
        z = global_batch("row-mean", dtype, False).requires_grad_(True)
        expected = row_mean_statistic(z)
        (grad,) = torch.autograd.grad(expected, z)
        start = 0
        for r in range(world):
            value, grad_r, _ = ranks[r][("row-mean", str(dtype))]
            torch.testing.assert_close(value, expected.detach(), rtol=RTOL[dtype], atol=0.0)
            torch.testing.assert_close(grad_r / world, grad[start:start + sizes[r]], rtol=RTOL[dtype],
                                       atol=RTOL[dtype] * float(grad.abs().max()))
            start += sizes[r]


def test_no_process_group_is_a_no_op():
    assert not distributed.is_active()
    assert distributed.world_size() == 1 and distributed.rank() == 0
    z = torch.randn(5, 3, requires_grad=True)
    assert distributed.gather_rows(z) is z
    assert distributed.all_reduce_sum(z) is z
    with distributed.sharded_pairs():
        reg = kerjepa.regularizer("ksd", kernel="imq")
        torch.testing.assert_close(reg(z), kerjepa.functional.ksd2(z, kerjepa.kernels.IMQ(), kerjepa.priors.Gaussian()))
    with distributed.local_rows(z):
        torch.testing.assert_close(distributed.row_mean(z), z.mean(0))
        assert distributed.global_rows(5) == 5
