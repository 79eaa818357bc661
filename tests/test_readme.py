"""The README's Python examples run as written."""
import pathlib
import re

import torch
from torch import nn


def test_readme_training_loop_example_runs():
    readme = (pathlib.Path(__file__).resolve().parents[1] / "README.md").read_text()
    code = re.search(r"```python\n(import kerjepa.*?)```", readme, re.S).group(1)
    encoder = nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, 16))
    projector = nn.Linear(16, 8)
    params = list(encoder.parameters()) + list(projector.parameters())
    before = [p.detach().clone() for p in params]
    scope = {"loader": [torch.randn(4, 6, 3, 8, 8)], "encoder": encoder, "projector": projector,
             "opt": torch.optim.SGD(params, lr=1e-3)}
    exec(compile(code, "README.md", "exec"), scope)
    assert torch.isfinite(scope["loss"])
    assert all(not torch.equal(a, b) for a, b in zip(before, params))


def test_readme_goodness_of_fit_example_runs():
    readme = (pathlib.Path(__file__).resolve().parents[1] / "README.md").read_text()
    code = re.search(r"```python\n(import torch\nfrom kerjepa import gof.*?)```", readme, re.S).group(1)
    scope = {}
    exec(compile(code, "README.md", "exec"), scope)
    result = scope["result"]
    assert 0 < result.pvalue <= 1 and result.num_bootstrap == 500
    assert not result.reject      # z is drawn from the prior: this seed does not reject
