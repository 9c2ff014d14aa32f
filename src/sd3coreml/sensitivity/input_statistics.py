"""What an analysis keeps of each weight's inputs over the calibration samples, to measure the
output energy tr(M G M^T) of the weight or of its error (sensitivity/analysis.py), G = X^T X."""

import numpy as np

# Columns of a Gram matrix per product: its upper triangle takes a product per block row, from
# the diagonal on (about 54% of a full product's multiply-adds for a 6144-wide input).
GRAM_COLUMNS = 512


class InputStatistics:
    """What tr(M G M^T) needs of one linear's inputs X over every calibration sample, G = X^T X.

    The cheaper of two forms, by the rows X will hold (its calls' rows times `samples`): X itself
    while it has no more rows than input features (out x rows x in multiply-adds a product: the
    modulation linears read one row a sample, CLIP's linears 77), else G, gathered over its upper
    triangle in float32 products summed in float64 (out x in x in a product). Either way every
    figure is the same function of the inputs, so a record does not depend on its group.
    """

    def __init__(self, in_features: int, samples: int):
        self.in_features, self.samples = in_features, samples
        self.rows, self.gram, self.matrix, self.kept_rows = [], None, None, False

    def add(self, inputs) -> None:
        import torch

        rows = inputs.detach().reshape(-1, self.in_features).float()
        if self.gram is None and len(rows) * self.samples <= self.in_features:
            self.rows.append(rows.clone())
            return
        if self.gram is None:  # rows kept so far (a call with fewer rows than the others) go in too
            self.gram = torch.zeros(self.in_features, self.in_features, dtype=torch.float64)
            kept, self.rows = self.rows, []
            for earlier in kept:
                self.add_to_gram(earlier)
        self.add_to_gram(rows)

    def add_to_gram(self, rows) -> None:
        """The rows' products into the Gram matrix's upper triangle, a block row at a time."""
        for start in range(0, self.in_features, GRAM_COLUMNS):
            stop = min(start + GRAM_COLUMNS, self.in_features)
            self.gram[start:stop, start:] += (rows[:, start:stop].T @ rows[:, start:]).double()

    def finish(self) -> None:
        """The rows stacked, or the Gram matrix made symmetric from its upper triangle, in float32."""
        import torch

        if self.matrix is None:
            self.kept_rows = self.gram is None
            if self.kept_rows:
                self.matrix = torch.cat(self.rows)
            else:
                self.matrix = (torch.triu(self.gram) + torch.triu(self.gram, 1).T).float()
            self.rows, self.gram = [], None

    def energy(self, matrix: np.ndarray) -> float:
        """tr(M G M^T): the output energy of weight M (or of its error) over the calibration
        inputs, products in float32, the sum in float64."""
        import torch

        self.finish()
        m = torch.from_numpy(matrix)
        if self.kept_rows:
            return float(((self.matrix @ m.T).double() ** 2).sum())
        return float(((m @ self.matrix) * m).double().sum())


class GatheredInputs:
    """Forward hooks that gather each named linear's InputStatistics over `samples` samples.

    Linears that read one tensor (q, k and v read the same normalised states) share one
    statistic, gathered once: the hook compares the tensor with the one the previous hook saw.
    """

    def __init__(self, linears: dict, samples: int):
        self.statistics = {name: InputStatistics(linear.in_features, samples) for name, linear in linears.items()}
        self.last = None
        self.handles = [module.register_forward_pre_hook(self.hook(name)) for name, module in linears.items()]

    def hook(self, name):
        def gather(module, args):
            if self.last is not None and self.last[0] is args[0]:
                self.statistics[name] = self.last[1]
                return
            self.statistics[name].add(args[0])
            self.last = (args[0], self.statistics[name])

        return gather

    def next_sample(self) -> None:
        self.last = None

    def remove(self):
        for handle in self.handles:
            handle.remove()


def gathered_inputs(module, call, all_samples: list, linears: dict) -> dict:
    """{name: InputStatistics of that linear's inputs over `all_samples`}, by one pass over them."""
    import torch

    gathered = GatheredInputs(linears, len(all_samples))
    try:
        with torch.no_grad():  # only the hooks' sums are wanted of this pass
            for sample in all_samples:
                gathered.next_sample()
                call(module, sample)
    finally:
        gathered.remove()
    return gathered.statistics
