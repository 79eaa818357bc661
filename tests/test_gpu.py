"""CPU vs CUDA: ``ksd2`` and ``mmd2`` give the same values and gradients on an accelerator, and
a valid call makes no host synchronisation there (CUDA's sync debug mode turns one into an
error). Skipped without a CUDA device (tests/conftest.py)."""
import functools

import pytest
import torch

import kerjepa
from kerjepa import functional as F, kernels, priors
from tolerances import RTOL

pytestmark = pytest.mark.gpu

KERNELS = {"gaussian": kernels.Gaussian(0.3), "imq": kernels.IMQ(0.4, beta=0.5)}
PRIORS = {"gaussian": priors.Gaussian(1.1), "laplace": priors.Laplace(0.7), "student_t": priors.StudentT(5.0)}


def _calls():
    out = {}
    for k in KERNELS:
        for est in ("u", "v"):
            for backend in ("dense", "chunked"):
                for q in PRIORS:
                    out[f"ksd2-{k}-{q}-{est}-{backend}"] = functools.partial(
                        F.ksd2, kernel=KERNELS[k], prior=PRIORS[q], estimator=est, backend=backend, block_size=32)
                out[f"mmd2-{k}-gaussian-{est}-{backend}"] = functools.partial(
                    F.mmd2, kernel=KERNELS[k], prior=PRIORS["gaussian"], estimator=est, backend=backend,
                    block_size=32)
    return out


CALLS = _calls()


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=str)
@pytest.mark.parametrize("name", sorted(CALLS))
def test_cuda_equals_cpu(name, dtype):
    fn = CALLS[name]
    g = torch.Generator().manual_seed(sum(map(ord, name)))
    z = (1.3 * torch.randn(2, 70, 5, generator=g, dtype=torch.float64) + 0.2).to(dtype)
    z_cpu = z.clone().requires_grad_(True)
    z_gpu = z.to("cuda").requires_grad_(True)
    v_cpu, v_gpu = fn(z_cpu), fn(z_gpu)
    (g_cpu,) = torch.autograd.grad(v_cpu, z_cpu)
    (g_gpu,) = torch.autograd.grad(v_gpu, z_gpu)
    assert v_gpu.device.type == "cuda" and v_gpu.dtype == dtype
    # the sums run in another order on the device (TF32 matmul is off by default): round-off of
    # terms of order one that cancel in a U-statistic near 0
    rtol = 100 * RTOL[dtype]
    scale = abs(float(v_cpu)) + 1.0
    assert abs(float(v_gpu) - float(v_cpu)) <= rtol * scale, (float(v_gpu), float(v_cpu))
    torch.testing.assert_close(g_gpu.cpu(), g_cpu, rtol=rtol, atol=rtol * float(g_cpu.abs().max()))


@pytest.mark.parametrize("spec", [dict(kind="mmd"), dict(kind="mmd", kernel="imq"), dict(kind="ksd"),
                                  dict(kind="ksd", kernel="imq", prior="student_t", nu=4.0),
                                  dict(kind="ksd", prior="laplace", backend="chunked"),
                                  dict(kind="mmd", kernel="imq", estimator="v", backend="chunked")],
                         ids=lambda s: "-".join(str(v) for v in s.values()))
def test_no_host_synchronisation_on_cuda(spec):
    """The module and its backward run under torch.cuda.set_sync_debug_mode("error")."""
    reg = kerjepa.regularizer(**spec).to("cuda")
    z = torch.randn(2, 64, 8, device="cuda", requires_grad=True)
    reg(z).backward()  # warm-up: caches built once per process
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        value = reg(z)
        value.backward()
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert torch.isfinite(value.detach().cpu())
