"""nn.Module regularizers and the factory."""
import math

import pytest
import torch

import kerjepa
from kerjepa import functional as F, kernels, priors

SPECS = [
    dict(kind="mmd"),
    dict(kind="mmd", kernel="imq", beta=1.0),
    dict(kind="mmd", prior="laplace", prior_samples=64),
    dict(kind="mmd", slices=32),
    dict(kind="mmd", slices=32, prior="student_t", nu=3.0),
    dict(kind="mmd", slices=32, prior="laplace", target_cf="paper"),
    dict(kind="mmd", slices="analytic"),
    dict(kind="ksd"),
    dict(kind="ksd", kernel="imq", prior="laplace"),
    dict(kind="ksd", kernel="imq", prior="student_t", nu=5.0, estimator="v"),
    dict(kind="ksd", slices=32),
    dict(kind="ksd", slices="analytic"),
    dict(kind="epps_pulley"),
    dict(kind="epps_pulley", slices=64, t_max=5.0),
]


@pytest.mark.parametrize("spec", SPECS, ids=lambda s: "-".join(str(v) for v in s.values()))
def test_every_spec_builds_and_backpropagates(spec):
    reg = kerjepa.regularizer(**spec)
    z = torch.randn(2, 24, 6, generator=torch.Generator().manual_seed(0), requires_grad=True)
    value = reg(z)
    value.backward()
    assert value.shape == () and torch.isfinite(value)
    assert torch.isfinite(z.grad).all() and float(z.grad.abs().sum()) > 0


def test_modules_match_functional():
    z = torch.randn(40, 5, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    reg = kerjepa.regularizer("mmd", kernel="imq", alpha=0.3, sigma=1.2)
    torch.testing.assert_close(reg(z), F.mmd2(z, kernels.IMQ(0.3), priors.Gaussian(1.2)))
    reg = kerjepa.regularizer("mmd", slices=16, gamma=0.5, seed=7)
    gen = torch.Generator().manual_seed(7)
    torch.testing.assert_close(reg(z), F.sliced_mmd2(z, kernels.Gaussian(0.5), priors.Gaussian(), 16, generator=gen))


def test_step_counter_resumes_the_slice_sequence():
    z = torch.randn(32, 8, generator=torch.Generator().manual_seed(2))
    a = kerjepa.regularizer("mmd", slices=8)
    values = [a(z) for _ in range(3)]
    assert int(a.step) == 3 and len({float(v) for v in values}) == 3
    b = kerjepa.regularizer("mmd", slices=8)
    b.load_state_dict({"step": torch.tensor(2)})
    torch.testing.assert_close(b(z), values[2])


def test_lejepa_scale_transfers_epps_pulley():
    z = torch.randn(128, 8, generator=torch.Generator().manual_seed(3), dtype=torch.float64) * 1.3 + 0.2
    dirs = torch.randn(16, 8, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    reg = kerjepa.regularizer("mmd", slices=16, gamma=0.5, scale="lejepa", num_knots=64)
    reg.statistic = lambda x: F.sliced_mmd2(x, reg.kernel, reg.prior, num_knots=64, directions=dirs)
    ratio = float(F.epps_pulley(z, directions=dirs) / reg(z))
    assert ratio == pytest.approx(1.0, abs=3e-3)
    assert math.isclose(float(reg(z)), 128 * math.sqrt(2 * math.pi) * float(reg.statistic(z)))


@pytest.mark.parametrize("spec,match", [
    (dict(kind="sigreg"), "'epps_pulley', 'ksd', 'mmd'"),
    (dict(kind="mmd", kernel="rbf"), "'gaussian', 'imq'"),
    (dict(kind="ksd", prior="cauchy"), "'gaussian', 'laplace', 'student_t'"),
    (dict(kind="ksd", prior="student_t"), "nu"),
    (dict(kind="mmd", slices="many"), "slices"),
    (dict(kind="mmd", slices=0), "slices"),
    (dict(kind="mmd", prior="laplace"), "prior_samples"),
    (dict(kind="mmd", scale="big"), "scale"),
    (dict(kind="epps_pulley", slices="analytic"), "infinite-slice"),
])
def test_bad_specs(spec, match):
    with pytest.raises(ValueError, match=match):
        kerjepa.regularizer(**spec)


@pytest.mark.parametrize("spec,unused", [
    (dict(kind="epps_pulley", num_knots=41), "num_knots"),
    (dict(kind="epps_pulley", scale="lejepa"), "scale"),
    (dict(kind="mmd", kernel="imq", gamma=0.5), "gamma"),
    (dict(kind="mmd", alpha=0.5), "alpha"),
    (dict(kind="ksd", prior_samples=10), "prior_samples"),
    (dict(kind="mmd", nu=3.0), "nu"),
    (dict(kind="mmd", slices=16, approx="imq"), "approx"),
    (dict(kind="ksd", slices=16, target_cf="paper"), "target_cf"),
    (dict(kind="mmd", t_max=5.0), "t_max"),
])
def test_options_that_do_not_apply_are_refused(spec, unused):
    with pytest.raises(ValueError, match=f"{unused} do"):
        kerjepa.regularizer(**spec)


def test_median_bandwidth_builds_and_resolves_per_batch():
    z = torch.randn(32, 4, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    reg = kerjepa.regularizer("mmd", gamma="median")
    gamma = kernels.median_heuristic(z)
    torch.testing.assert_close(reg(z), F.mmd2(z, kernels.Gaussian(gamma), priors.Gaussian()))
