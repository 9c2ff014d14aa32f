"""The two forms a weight's input statistics take (kept rows, or a Gram matrix gathered over its
upper triangle), the statistic shared by linears that read one tensor, and records that do not
depend on how the weights are grouped."""

import numpy as np
import pytest
import torch
from torch import nn

from sd3coreml.sensitivity.analysis import nsr, weight_records
from sd3coreml.sensitivity.input_statistics import GRAM_COLUMNS, InputStatistics, gathered_inputs


def direct_energy(rows: list[torch.Tensor], matrix: np.ndarray) -> float:
    """tr(M X^T X M^T) = ||X M^T||^2, all in float64."""
    x = torch.cat(rows).double()
    return float(((x @ torch.from_numpy(matrix).double().T) ** 2).sum())


@pytest.mark.parametrize("rows_per_sample, samples", [(3, 4), (40, 4)], ids=["kept-rows", "gram"])
def test_both_forms_give_the_output_energy_of_their_inputs(rows_per_sample, samples):
    in_features = GRAM_COLUMNS + 88  # two block rows, the second narrower
    generator = torch.Generator().manual_seed(1)
    rows = [torch.randn(1, rows_per_sample, in_features, generator=generator) for _ in range(samples)]
    statistics = InputStatistics(in_features, samples)
    for sample in rows:
        statistics.add(sample)
    matrix = np.random.default_rng(2).standard_normal((7, in_features)).astype(np.float32)
    energy = statistics.energy(matrix)
    assert statistics.kept_rows == (rows_per_sample * samples <= in_features)
    assert energy == pytest.approx(direct_energy([r.reshape(-1, in_features) for r in rows], matrix), rel=1e-5)
    if not statistics.kept_rows:
        assert torch.equal(statistics.matrix, statistics.matrix.T)  # symmetric to the bit


def test_rows_kept_before_the_gram_matrix_starts_are_counted_in_it():
    in_features, generator = 64, torch.Generator().manual_seed(3)
    rows = [torch.randn(n, in_features, generator=generator) for n in (2, 40, 40)]  # the first call fits, then not
    statistics = InputStatistics(in_features, 3)
    for sample in rows:
        statistics.add(sample)
    matrix = np.random.default_rng(4).standard_normal((5, in_features)).astype(np.float32)
    assert statistics.energy(matrix) == pytest.approx(direct_energy(rows, matrix), rel=1e-5)
    assert not statistics.kept_rows


class SharedInput(nn.Module):
    """q, k and v read one tensor, as in an attention block; `out` reads another."""

    def __init__(self, width: int):
        super().__init__()
        self.q, self.k, self.v, self.out = (nn.Linear(width, width, bias=False) for _ in range(4))

    def forward(self, x):
        return self.out(torch.tanh(self.q(x) + self.k(x) * self.v(x)))


def test_linears_reading_one_tensor_share_one_statistic():
    torch.manual_seed(0)
    module = SharedInput(120)
    samples = [torch.randn(1, 50, 120) for _ in range(3)]
    linears = {name: getattr(module, name) for name in ("q", "k", "v", "out")}
    statistics = gathered_inputs(module, lambda m, x: m(x), samples, linears)
    assert statistics["q"] is statistics["k"] is statistics["v"]
    assert statistics["out"] is not statistics["q"]
    weight = module.q.weight.detach().numpy()
    assert statistics["k"].energy(weight) == pytest.approx(direct_energy([s[0] for s in samples], weight), rel=1e-5)


def test_a_record_is_the_same_whatever_the_group_bound():
    torch.manual_seed(0)
    module = SharedInput(128)
    samples = [torch.randn(1, 100, 128) for _ in range(3)]
    linears = {f"{name}.weight": getattr(module, name) for name in ("q", "k", "v", "out")}

    def records(bound):
        return weight_records(module, lambda m, x: [m(x)], samples, samples[:1], nsr, linears, [2, 4], [4], 1, bound)

    one_group, one_weight_a_group = records(1 << 30), records(1)
    assert one_group == one_weight_a_group
    assert {name: record["curve"]["2"]["own_nsr"] > record["curve"]["4"]["own_nsr"] for name, record in
            one_group.items()} == dict.fromkeys(linears, True)  # fmt: skip
