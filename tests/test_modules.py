"""nn.Module regularizers and the factory."""
import math

import pytest
import torch

import kerjepa
from kerjepa import functional as F, kernels, priors, slicing

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
    """The module's slices come from seed + step, and scale="lejepa" is N sqrt(2 pi) x MMD^2."""
    z = torch.randn(128, 8, generator=torch.Generator().manual_seed(3), dtype=torch.float64) * 1.3 + 0.2
    reg = kerjepa.regularizer("mmd", slices=16, gamma=0.5, scale="lejepa", num_knots=64, seed=4)
    value = reg(z)
    mmd2 = F.sliced_mmd2(z, kernels.Gaussian(0.5), priors.Gaussian(), 16, num_knots=64,
                         generator=torch.Generator().manual_seed(4))
    assert math.isclose(float(value), 128 * math.sqrt(2 * math.pi) * float(mmd2), rel_tol=1e-12)
    dirs = slicing.random_directions(16, 8, torch.Generator().manual_seed(4), dtype=torch.float64)
    assert float(F.epps_pulley(z, directions=dirs) / value) == pytest.approx(1.0, abs=3e-3)
    assert int(reg.step) == 1 and float(reg(z)) != float(value)  # the next call draws new slices


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


#: (factory spec, the argument the message names, the expected values it lists, what came)
BAD_OPTIONS = [
    (dict(kind="mmd", backend="gpu"), "backend", "'auto', 'chunked', 'dense'", "'gpu'"),
    (dict(kind="ksd", backend="gpu"), "backend", "'auto', 'chunked', 'dense'", "'gpu'"),
    (dict(kind="mmd", slices="analytic", backend="gpu"), "backend", "'auto', 'chunked', 'dense'", "'gpu'"),
    (dict(kind="mmd", slices="analytic", approx="taylor"), "approx", "['imq', None]", "'taylor'"),
    (dict(kind="ksd", slices="analytic", approx="taylor"), "approx", "['imq', 'imq-rule', None]", "'taylor'"),
    (dict(kind="mmd", slices=8, target_cf="Paper"), "target_cf", "'marginal', 'paper'", "'Paper'"),
    (dict(kind="mmd", slices=8, prior="student_t", nu=4.0, target_cf="paper"), "target_cf",
     "Gaussian and Laplace priors", "Student-t"),
    (dict(kind="mmd", slices=8, kernel="imq"), "kernel", "Gaussian kernel", "IMQ"),
    (dict(kind="ksd", slices=8, kernel="imq"), "kernel", "Gaussian kernel", "IMQ"),
    (dict(kind="mmd", slices="analytic", kernel="imq"), "kernel", "Gaussian kernel", "IMQ"),
    (dict(kind="ksd", slices="analytic", kernel="imq"), "kernel", "kernels.Gaussian x priors.Gaussian", "IMQ x Gaussian"),
    (dict(kind="mmd", slices="analytic", prior="laplace"), "prior", "kernels.Gaussian x priors.Gaussian",
     "Gaussian x Laplace"),
    (dict(kind="ksd", slices="analytic", prior="laplace"), "prior", "kernels.Gaussian x priors.Gaussian",
     "Gaussian x Laplace"),
    (dict(kind="mmd", estimator="w"), "estimator", "'u', 'v'", "'w'"),
    (dict(kind="ksd", slices=8, estimator="W"), "estimator", "'u', 'v'", "'W'"),
    (dict(kind="mmd", slices=8, num_knots=0), "num_knots", ">= 1", "0"),
    (dict(kind="ksd", slices=8, num_knots=2.5), "num_knots", ">= 1", "2.5"),
    (dict(kind="epps_pulley", n_points=16), "n_points", "odd", "16"),
    (dict(kind="epps_pulley", t_max=-1.0), "t_max", "> 0", "-1.0"),
    (dict(kind="mmd", prior="laplace", prior_samples=1), "prior_samples", ">= 2", "1"),
    (dict(kind="mmd", gamma=-0.5), "gamma", "> 0", "-0.5"),
    (dict(kind="ksd", kernel="imq", alpha="mean"), "alpha", "'median'", "'mean'"),
    (dict(kind="ksd", kernel="imq", beta=0.0), "beta", "> 0", "0.0"),
    (dict(kind="ksd", sigma=float("nan")), "sigma", "> 0", "nan"),
    (dict(kind="ksd", prior="student_t", nu=-3.0), "nu", "> 0", "-3.0"),
    (dict(kind="mmd", kernel="Gaussian"), "kernel", "'gaussian', 'imq'", "'Gaussian'"),
    (dict(kind="mmd", scale="LeJEPA"), "scale", "'kerjepa', 'lejepa'", "'LeJEPA'"),
]


@pytest.mark.parametrize("spec,argument,expected,got", BAD_OPTIONS,
                         ids=["-".join(f"{k}={v}" for k, v in b[0].items()) for b in BAD_OPTIONS])
def test_every_option_is_checked_when_the_regularizer_is_built(spec, argument, expected, got):
    """Refused by the factory itself, before any batch: the message names the argument, the
    values it accepts and what it was given."""
    with pytest.raises((ValueError, TypeError)) as info:
        kerjepa.regularizer(**spec)
    message = str(info.value)
    assert argument in message and expected in message and got in message, message


@pytest.mark.parametrize("build,argument", [
    (lambda: kerjepa.MMD(kernels.Gaussian(), priors.Gaussian(), backend="gpu"), "backend"),
    (lambda: kerjepa.KSD(kernels.IMQ(), priors.Gaussian(), backend="gpu"), "backend"),
    (lambda: kerjepa.SlicedMMD(kernels.Gaussian(), priors.Gaussian(), None, approx="taylor"), "approx"),
    (lambda: kerjepa.SlicedMMD(kernels.Gaussian(), priors.Gaussian(), 8, target_cf="Paper"), "target_cf"),
    (lambda: kerjepa.SlicedKSD(kernels.IMQ(), priors.Gaussian(), 8), "kernel"),
    (lambda: kerjepa.SlicedKSD(kernels.Gaussian(), priors.Laplace(), None), "Laplace"),
    (lambda: kerjepa.SlicedKSD(kernels.Gaussian(), priors.Gaussian(), 0), "num_slices"),
    (lambda: kerjepa.EppsPulley(num_slices=0), "num_slices"),
    (lambda: kerjepa.KSD("imq", priors.Gaussian()), "kernel"),
    (lambda: kerjepa.MMD(kernels.Gaussian(), "gaussian"), "prior"),
])
def test_modules_check_their_options_in_init(build, argument):
    with pytest.raises((ValueError, TypeError), match=argument):
        build()


_G, _Q = kernels.Gaussian(), priors.Gaussian()
#: (call, exception, what the message says): shape and size faults get our message, not torch's
SHAPE_FAULTS = [
    (lambda: F.mmd2(torch.randn(0, 5, 3), _G, _Q), ValueError, r"at least one view \(V >= 1\)"),
    (lambda: F.ksd2(torch.randn(0, 5, 3), _G, _Q), ValueError, r"at least one view \(V >= 1\)"),
    (lambda: F.sliced_mmd2(torch.randn(0, 5, 3), _G, _Q, 4), ValueError, r"at least one view"),
    (lambda: F.sliced_ksd2(torch.randn(0, 5, 3), _G, _Q, 4), ValueError, r"at least one view"),
    (lambda: F.epps_pulley(torch.randn(0, 5, 3), 4), ValueError, r"at least one view"),
    (lambda: F.sliced_ksd2(torch.randn(0, 5, 3), _G, _Q, None), ValueError, r"at least one view"),
    (lambda: kerjepa.regularizer("mmd")(torch.randn(0, 5, 3)), ValueError, r"at least one view"),
    (lambda: kerjepa.regularizer("epps_pulley", slices=4)(torch.randn(0, 5, 3)), ValueError, r"at least one view"),
    (lambda: F.ksd2(torch.randn(0, 3), _G, _Q, estimator="v"), ValueError, r"at least 1 row\(s\) along N"),
    (lambda: F.epps_pulley(torch.randn(0, 3), 4), ValueError, r"at least 1 row\(s\) along N"),
    (lambda: F.mmd2(torch.randn(5, 0), _G, _Q), ValueError, r"at least one feature \(D >= 1\)"),
    (lambda: F.mmd2(torch.randn(2, 2, 5, 3), _G, _Q), ValueError, r"shape \(N, D\) or \(V, N, D\)"),
    (lambda: kerjepa.regularizer("ksd")(torch.randn(5)), ValueError, r"shape \(N, D\) or \(V, N, D\)"),
    (lambda: F.mmd2(torch.randn(5, 3, dtype=torch.cfloat), _G, _Q), TypeError, "float32 or float64"),
    (lambda: F.mmd2([[1.0, 2.0]], _G, _Q), TypeError, "z must be a torch.Tensor"),
    (lambda: F.sliced_mmd2(torch.randn(5, 3), _G, _Q, directions=torch.randn(0, 3)), ValueError,
     r"directions must have shape \(K, 3\) with K >= 1"),
    (lambda: F.sliced_mmd2(torch.randn(5, 3), _G, _Q, directions=torch.randn(3)), ValueError,
     r"directions must have shape \(K, 3\)"),
    (lambda: F.sliced_ksd2(torch.randn(5, 3), _G, _Q, directions=torch.ones(2, 3, dtype=torch.long)),
     TypeError, "directions must be a floating-point tensor"),
    (lambda: F.stein_kernel(torch.randn(5, 3), torch.randn(4, 2), _G, _Q), ValueError, "same number of features"),
    (lambda: F.stein_kernel(torch.randn(5, 3), torch.randn(4), _G, _Q), ValueError, r"y must have shape \(N, D\)"),
    (lambda: F.ksd2(torch.randn(1, 3), kernels.IMQ("median"), _Q, estimator="v"), ValueError,
     "'median' bandwidth needs at least 2 rows of z"),
    (lambda: F.ksd2(torch.randn(4, 3), _G, _Q, block_size=0), ValueError, "block_size must be an int >= 1"),
    (lambda: _Q.sample(0, 3), ValueError, "n must be an int >= 1"),
    (lambda: slicing.random_directions(4, 0), ValueError, "dim must be an int >= 1"),
]


@pytest.mark.parametrize("call,exc,match", SHAPE_FAULTS)
def test_shape_and_size_faults_give_our_message(call, exc, match):
    with pytest.raises(exc, match=match):
        call()
