"""lambda_from_lejepa: the loss it gives equals LeJEPA's, up to a constant factor, on real tensors."""
import math

import pytest
import torch

import kerjepa
from kerjepa.calibration import lambda_from_lejepa


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
