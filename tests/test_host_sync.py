"""A valid call reads no tensor value on the host, beyond what its result needs.

On an accelerator every such read (``.item()``, ``bool(t)``, ``float(t)``, ``.cpu()``, ...) waits
for the device. Here the Python entry points of those reads are counted during calls of every
public estimator and module on valid input. The only read that is needed is the ``"median"``
bandwidth (a Python float by design): one per resolution. On a GPU, tests/test_gpu.py runs the
same calls under CUDA's sync debug mode.
"""
import functools

import pytest
import torch

import kerjepa
from kerjepa import analytic, functional as F, kernels, priors

#: the Tensor methods through which Python reads a value on the host
READS = ("item", "__bool__", "__float__", "__int__", "__index__", "cpu", "tolist", "numpy")


@pytest.fixture
def count_reads(monkeypatch):
    counts = {}

    def counting(name, original):
        @functools.wraps(original)
        def wrapper(self, *args, **kwargs):
            counts[name] = counts.get(name, 0) + 1
            return original(self, *args, **kwargs)
        return wrapper

    def start():
        for name in READS:
            monkeypatch.setattr(torch.Tensor, name, counting(name, getattr(torch.Tensor, name)))
        return counts

    yield start
    monkeypatch.undo()


G, IMQ = kernels.Gaussian(0.3), kernels.IMQ(0.4)
GAUSS, LAPLACE, STUDENT = priors.Gaussian(), priors.Laplace(), priors.StudentT(5.0)

#: (name, call(z), host reads a valid call needs)
CALLS = [
    ("mmd2-gaussian", lambda z: F.mmd2(z, G, GAUSS), 0),
    ("mmd2-imq", lambda z: F.mmd2(z, IMQ, GAUSS), 0),
    ("mmd2-chunked", lambda z: F.mmd2(z, G, GAUSS, backend="chunked", block_size=8), 0),
    ("mmd2-median", lambda z: F.mmd2(z, kernels.Gaussian("median"), GAUSS), 2),  # one per view
    ("ksd2-imq-gaussian", lambda z: F.ksd2(z, IMQ, GAUSS), 0),
    ("ksd2-gaussian-laplace", lambda z: F.ksd2(z, G, LAPLACE, estimator="v"), 0),
    ("ksd2-imq-student-chunked", lambda z: F.ksd2(z, IMQ, STUDENT, backend="chunked", block_size=8), 0),
    ("ksd2-median", lambda z: F.ksd2(z, kernels.IMQ("median"), GAUSS), 2),  # one per view
    ("stein_kernel", lambda z: F.stein_kernel(z[0], None, IMQ, STUDENT), 0),
    ("sliced_mmd2", lambda z: F.sliced_mmd2(z, G, GAUSS, num_slices=16), 0),
    ("sliced_mmd2-directions", lambda z: F.sliced_mmd2(z, G, GAUSS, directions=torch.randn(5, 6)), 0),
    ("sliced_mmd2-laplace", lambda z: F.sliced_mmd2(z, G, LAPLACE, num_slices=16), 0),
    # the Student-t target is SciPy's, evaluated on the Gauss-Hermite knots while they are still
    # host tensors (computed there, then moved): two reads (cpu, numpy) of host memory, none of the device's
    ("sliced_mmd2-student", lambda z: F.sliced_mmd2(z, G, STUDENT, num_slices=16), 2),
    ("sliced_ksd2", lambda z: F.sliced_ksd2(z, G, LAPLACE, num_slices=16, estimator="u"), 0),
    ("sliced_ksd2-median", lambda z: F.sliced_ksd2(z, kernels.Gaussian("median"), GAUSS, num_slices=16), 1),
    ("epps_pulley", lambda z: F.epps_pulley(z, num_slices=16), 0),
    ("analytic_sliced_mmd2", lambda z: analytic.analytic_sliced_mmd2(z, kernels.Gaussian(0.5), GAUSS), 0),
    ("analytic_sliced_ksd2", lambda z: analytic.analytic_sliced_ksd2(z, kernels.Gaussian(0.5), GAUSS), 0),
    ("analytic_sliced_ksd2-imq", lambda z: analytic.analytic_sliced_ksd2(z, kernels.Gaussian(0.5), GAUSS,
                                                                         approx="imq"), 0),
]

#: (factory spec, host reads per call a valid call needs)
SPECS = [(dict(kind="mmd"), 0), (dict(kind="mmd", kernel="imq"), 0),
         # the prior is sampled on the host (SciPy's inverse CDFs of CPU uniforms), then moved:
         # two reads of host tensors per call, none of device memory
         (dict(kind="mmd", prior="laplace", prior_samples=16), 2),
         (dict(kind="mmd", slices=16), 0), (dict(kind="mmd", slices="analytic"), 0), (dict(kind="ksd"), 0),
         (dict(kind="ksd", kernel="imq", prior="student_t", nu=4.0), 0), (dict(kind="ksd", slices=16), 0),
         (dict(kind="ksd", slices=16, prior="student_t", nu=4.0), 0),
         (dict(kind="ksd", slices="analytic"), 0), (dict(kind="epps_pulley", slices=16), 0),
         (dict(kind="ksd", kernel="imq", alpha="median"), 2)]  # the median bandwidth: one per view


def _batch(requires_grad=True):
    return torch.randn(2, 20, 6, generator=torch.Generator().manual_seed(0)).requires_grad_(requires_grad)


@pytest.mark.parametrize("name,call,needed", CALLS, ids=[c[0] for c in CALLS])
def test_estimator_reads_nothing_on_the_host(name, call, needed, count_reads):
    z = _batch()
    call(z).sum().backward()  # warm the caches built once per process (1F1 coefficients, on the host)
    counts = count_reads()
    value = call(z)
    value.sum().backward()
    assert sum(counts.values()) == needed, counts


@pytest.mark.parametrize("spec,needed", SPECS, ids=["-".join(str(v) for v in s.values()) for s, _ in SPECS])
def test_module_reads_nothing_on_the_host(spec, needed, count_reads):
    reg = kerjepa.regularizer(**spec)
    z = _batch()
    reg(z)
    counts = count_reads()
    for _ in range(2):
        reg(z).backward()
    assert sum(counts.values()) == 2 * needed, counts


def test_loading_a_state_dict_reads_the_step_once(count_reads):
    reg = kerjepa.regularizer("mmd", slices=8)
    counts = count_reads()
    reg.load_state_dict({"step": torch.tensor(4)})
    assert counts == {"__int__": 1}
    assert reg._step == 4


@pytest.mark.parametrize("name,call,needed", CALLS, ids=[c[0] for c in CALLS])
@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_input_gives_a_non_finite_result(name, call, needed, bad):
    """Values are not checked (that would read them on the host): NaN or Inf propagates,
    also through the median bandwidth (which reads a value anyway)."""
    z = _batch(requires_grad=False).clone()
    z[0, 3, 2] = bad
    assert not torch.isfinite(call(z)).all()
