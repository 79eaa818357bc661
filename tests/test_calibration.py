"""lambda_from_lejepa: the loss it gives equals LeJEPA's, up to a constant factor, on real tensors."""
import math

import pytest
import torch

import kerjepa
from kerjepa.calibration import calibrate_lambda, lambda_from_lejepa, reference_batches


@pytest.mark.parametrize("views,dim", [(2, 8), (4, 16), (6, 5)])
def test_kerjepa_loss_is_lejepa_loss_times_a_constant(views, dim):
    g = torch.Generator().manual_seed(views * 100 + dim)
    lam_l = 0.02
    reg = kerjepa.regularizer("epps_pulley", slices=8)
    lam_k = lambda_from_lejepa(lam_l, views=views, dim=dim)
    factors = []
    for _ in range(3):   # the ratio must not depend on the batch
        z = torch.randn(views, 32, dim, generator=g, dtype=torch.float64) * torch.rand(1, generator=g, dtype=torch.float64)
        omega = reg(z)
        lejepa = (1 - lam_l) * kerjepa.alignment_loss(z, "center_mse") + lam_l * omega
        ours = kerjepa.alignment_loss(z, "pairs") + lam_k * omega
        factors.append(float(ours / lejepa))
    assert factors == pytest.approx([2 * views * dim / (views - 1) / (1 - lam_l)] * 3, rel=1e-10)


def test_kerjepa_scale_multiplies_by_n_sqrt_2pi():
    assert lambda_from_lejepa(0.1, 4, 16, scale="kerjepa", batch_size=64) == pytest.approx(
        lambda_from_lejepa(0.1, 4, 16) * 64 * math.sqrt(2 * math.pi), rel=1e-12)


@pytest.mark.parametrize("kwargs,match", [
    (dict(lam_lejepa=1.0, views=4, dim=8), "lam_lejepa"), (dict(lam_lejepa=0.1, views=1, dim=8), "views"),
    (dict(lam_lejepa=0.1, views=4, dim=0), "dim"), (dict(lam_lejepa=0.1, views=4, dim=8, scale="x"), "scale"),
    (dict(lam_lejepa=0.1, views=4, dim=8, scale="kerjepa"), "batch_size")])
def test_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        lambda_from_lejepa(**kwargs)


# ------------------------------------------------------------------ calibrate_lambda

class _Power(torch.nn.Module):
    """Omega(Z) = c * sum_i ||z_i||^p: per-row gradient c p ||z_i||^(p-2) z_i, norm c p ||z_i||^(p-1)."""

    def __init__(self, p, c=1.0):
        super().__init__()
        self.p, self.c = p, c

    def forward(self, z):
        return self.c * z.norm(dim=-1).pow(self.p).sum()


def test_calibrate_lambda_against_closed_form_gradients():
    zs = reference_batches(6, num=40, spreads=(0.3, 1.0, 3.0), rank=2, seed=5)
    lam = calibrate_lambda(_Power(4), _Power(2), 5.0, zs)
    logs = []
    for z in zs:
        r = z.norm(dim=-1)
        logs.append(math.log(float((2 * r).mean()) / float((4 * r ** 3).mean())))
    assert lam == pytest.approx(5.0 * math.exp(sum(logs) / len(logs)), rel=1e-10)
    assert calibrate_lambda(_Power(4, c=8.0), _Power(2), 5.0, zs) == pytest.approx(lam / 8, rel=1e-12)
    assert calibrate_lambda(_Power(2), _Power(2), 5.0, zs) == pytest.approx(5.0, rel=1e-12)


def test_default_reference_is_sigreg_at_lejepas_lambda():
    sigreg = kerjepa.regularizer("epps_pulley", slices=1024, n_points=21)
    zs = reference_batches(8, num=32, spreads=(0.5, 1.0))
    assert calibrate_lambda(sigreg, batches=zs) == pytest.approx(lambda_from_lejepa(0.02, views=4, dim=8), rel=1e-12)


def test_calibration_leaves_the_slice_counter_alone():
    reg = kerjepa.regularizer("ksd", slices=8)
    calibrate_lambda(reg, _Power(2), 1.0, reference_batches(4, num=16, spreads=(1.0,)))
    assert int(reg.step) == 0


def test_reference_batches_have_the_stated_spread_and_rank():
    zs = reference_batches(64, num=2000, spreads=(0.5, 2.0))
    assert [tuple(z.shape) for z in zs] == [(2000, 64)] * 4 and all(z.dtype == torch.float64 for z in zs)
    for z, s in zip(zs, (0.5, 2.0, 0.5, 2.0)):
        # mean per-coordinate variance: its relative standard error is below 0.1 for both families here
        assert float(z.var(0).mean()) == pytest.approx(s * s, rel=0.3)
    assert [int(torch.linalg.matrix_rank(z)) for z in zs] == [64, 64, 4, 4]
    assert torch.equal(reference_batches(8, num=4)[0], reference_batches(8, num=4)[0])   # fixed by the seed


@pytest.mark.parametrize("call, match", [
    (lambda: calibrate_lambda(_Power(2)), "batches or dim"),
    (lambda: calibrate_lambda(_Power(2), _Power(2), 1.0, [torch.ones(4, 3), torch.ones(4, 5)]), "same D"),
    (lambda: calibrate_lambda(_Power(2), _Power(2), 1.0, []), "at least one"),
    (lambda: calibrate_lambda(_Power(2), _Power(2), -1.0, [torch.ones(4, 3)]), "lam_reference"),
    (lambda: calibrate_lambda(_Power(0), _Power(2), 1.0, [torch.ones(4, 3)]), "vanishes"),
    (lambda: calibrate_lambda(_Power(2), _Power(2), 1.0, [torch.ones(2, 4, 3)]), "batches\\[0\\]"),
    (lambda: reference_batches(4, rank=5), "rank"),
    (lambda: reference_batches(4, spreads=()), "spreads"),
    (lambda: reference_batches(4, spreads=(1.0, -1.0)), "spreads")])
def test_calibration_bad_arguments(call, match):
    with pytest.raises(ValueError, match=match):
        call()
