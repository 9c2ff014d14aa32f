"""Sensitivity of one MMDiT piece's weights to palettes: each weight compressed alone, at each width.

For each linear weight of more than `min_values` values (coremltools palettizes no smaller one)
the weight is palettized alone exactly as its package would be (the fp16 weight, coremltools'
k-means palette per tensor: compress/palettes.py) at each candidate width. Its effect is measured
where it is cheap and scaled to where it matters:

- at the weight's own output over every calibration sample, as a noise-to-signal ratio
  tr(dW G dW^T) / tr(W G W^T), with G the Gram matrix of the weight's inputs gathered once:
  out x in x in multiply-adds per width, no forward pass;
- at the piece's output over a few samples, at the probe widths only: the first probe gives the
  weight's transfer (piece NSR / own NSR), the others check the prediction.

A weight's effect at a width is its own NSR times its transfer: the predicted NSR at the piece's
output, relative to the fp16 package. Pieces chain through the residual stream, so effects are
summed across the transformer by the allocator (compress/allocation.py). The record holds
prediction and measurement at every probe width, so the report can show how well one predicts
the other. Figures are rounded to 6 significant digits; the job fixes its thread count
(commands/sensitivity.py), so they repeat on one machine whatever OMP_NUM_THREADS says.
"""

import math
from pathlib import Path

import numpy as np

from sd3coreml.compress.allocation import rounded
from sd3coreml.compress.palettes import EXACT_KMEANS_MIN_VALUES
from sd3coreml.compress.settings import FP16
from sd3coreml.errors import PipelineError
from sd3coreml.sensitivity.calibration import BLOCK, CONDITIONING, INPUT, piece_kind, read_description, read_piece_inputs

FORMAT = "sd3coreml-sensitivity/1"


def palette_bytes(values: int, nbits: int) -> int:
    """What a weight takes palettized: packed indices and an fp16 palette of 2**nbits entries."""
    return math.ceil(values * nbits / 8) + 2 * (1 << nbits)


def build_piece(piece: str, shape, weights: Path):
    """The piece's float32 module, built as its stage job builds it, and how to call it on one sample."""
    from sd3coreml.convert.mmdit_modules import build_block_range, build_conditioning, build_input_stage

    kind = piece_kind(piece)
    if kind == CONDITIONING:
        return build_conditioning(shape, weights), lambda m, x: m(x["pooled"], x["timestep"])
    if kind == INPUT:
        return build_input_stage(shape, weights), lambda m, x: m(x["latent"], x["tokens"], x["modulation"])
    index = int(piece[len(BLOCK) :])
    if index >= shape.depth:
        raise PipelineError(f"piece {piece}: the transformer has {shape.depth} joint blocks (block0..block{shape.depth - 1})")
    module = build_block_range(shape, index, index + 1, weights)
    return module, lambda m, x: m(x["image"], x["text"], x["modulation"])


def as_outputs(result) -> list:
    return list(result) if isinstance(result, tuple | list) else [result]


class Grams:
    """Forward hooks that gather each named linear's input Gram matrix over every sample."""

    def __init__(self, linears: dict):
        self.grams = {name: None for name in linears}
        self.handles = [module.register_forward_pre_hook(self.hook(name)) for name, module in linears.items()]

    def hook(self, name):
        def gather(module, args):
            # Products in float32 (a float64 Gram of a 6144-wide input costs seconds a sample), sums in float64.
            rows = args[0].reshape(-1, args[0].shape[-1])
            gram = (rows.T @ rows).double()
            self.grams[name] = gram if self.grams[name] is None else self.grams[name] + gram

        return gather

    def remove(self):
        for handle in self.handles:
            handle.remove()


def samples(inputs: dict, indices) -> list[dict]:
    import torch

    return [{name: torch.from_numpy(value[i : i + 1].copy()) for name, value in inputs.items()} for i in indices]


def run(module, call, batch: list[dict]) -> list:
    import torch

    with torch.no_grad():
        return [[output.clone() for output in as_outputs(call(module, x))] for x in batch]


def nsr(reference: list, candidate: list) -> float:
    """Noise-to-signal ratio of `candidate` against `reference`, over every output of every sample."""
    noise = math.fsum(float(((c.double() - r.double()) ** 2).sum()) for rs, cs in zip(reference, candidate)
                      for r, c in zip(rs, cs))  # fmt: skip
    signal = math.fsum(float((r.double() ** 2).sum()) for rs in reference for r in rs)
    return noise / signal if signal > 0 else 0.0


def palettized(weight16: np.ndarray, nbits: int) -> np.ndarray:
    """The fp16 weight as its package holds it at `nbits`: coremltools' k-means palette, per tensor."""
    from sd3coreml.compress.palettes import kmeans_palette

    lut, indices = kmeans_palette(weight16, nbits)
    return lut[indices].reshape(weight16.shape)


def palettes_of(linears: dict, widths, threads: int) -> dict[str, dict[int, np.ndarray]]:
    """{weight: {width: palettized fp16 weight}}, on `threads` threads (the exact k-means is a C
    call that lets others run); each result is the same whatever the count."""
    from concurrent.futures import ThreadPoolExecutor

    weights = {name: linear.weight.detach().numpy().astype(np.float16) for name, linear in linears.items()}
    tasks = [(name, width) for name in weights for width in widths]
    with ThreadPoolExecutor(max_workers=max(1, threads)) as pool:
        results = list(pool.map(lambda task: palettized(weights[task[0]], task[1]), tasks))
    palettes = {name: {} for name in weights}
    for (name, width), result in zip(tasks, results):
        palettes[name][width] = result
    return palettes


def output_energy(matrix: np.ndarray, gram) -> float:
    """tr(M G M^T), a weight's (or its error's) output energy over the calibration inputs: the
    product in float32 (the cost: out x in x in), the sum in float64."""
    import torch

    m = torch.from_numpy(matrix)
    return float(((m @ gram) * m).double().sum())


def refuse_non_finite(linears: dict) -> None:
    """A weight holding inf or NaN in fp16 (a value beyond 65504 becomes inf) has no meaningful palette."""
    import torch

    for name, linear in linears.items():
        if not torch.isfinite(linear.weight.half()).all():
            raise PipelineError(
                f"tensor {name} holds inf or NaN as fp16; its palettes would be garbage: fix the checkpoint's tensor"
            )


def eligible_linears(module, min_values: int) -> dict:
    from torch import nn

    return {f"{name}.weight": linear for name, linear in sorted(module.named_modules())
            if isinstance(linear, nn.Linear) and linear.weight.numel() > min_values}  # fmt: skip


def check_widths(widths, min_values: int, probe_widths) -> None:
    if min_values < EXACT_KMEANS_MIN_VALUES:
        raise PipelineError(
            f"sensitivity.min_values is {min_values}; coremltools palettizes only weights of more than "
            f"{EXACT_KMEANS_MIN_VALUES:,} values, so set it to {EXACT_KMEANS_MIN_VALUES} or more"
        )
    missing = [width for width in probe_widths if width not in widths]
    if missing:
        raise PipelineError(f"sensitivity.probe_widths holds {missing[0]}, which is not among widths {list(widths)}")


def probe_indices(count: int, probe_samples: int) -> list[int]:
    """`probe_samples` samples spread evenly over `count`, first and last included."""
    return sorted({round(i * (count - 1) / max(1, probe_samples - 1)) for i in range(min(probe_samples, count))})


# What one group of weights analysed together may hold (weight_groups): (bytes of their Gram
# matrices, float64; bytes of their palettized copies, fp16, one per width). A joint block of SD3
# Medium is one group; a text encoder (sensitivity/text_encoders.py) takes half as much, as its
# whole module stays loaded (CLIP-G: 2.8 GB in float32), paying more passes over its prompts.
GROUP_BYTES = (1 << 30, 3 << 28)


def weight_groups(linears: dict, widths, bounds=GROUP_BYTES) -> list[dict]:
    """`linears` cut, in order, into groups within `bounds` (see GROUP_BYTES)."""
    gram_bound, palette_bound = bounds
    groups, current, grams, palettes = [], {}, 0, 0
    for name, linear in linears.items():
        out_features, in_features = linear.weight.shape
        gram, palette = 8 * in_features * in_features, 2 * out_features * in_features * len(widths)
        if current and (grams + gram > gram_bound or palettes + palette > palette_bound):
            groups.append(current)
            current, grams, palettes = {}, 0, 0
        current[name] = linear
        grams, palettes = grams + gram, palettes + palette
    return [*groups, current] if current else groups


def gathered_grams(module, call, all_samples: list, linears: dict) -> dict:
    """{name: the Gram matrix of that linear's inputs over `all_samples`}, by one pass over them."""
    import torch

    grams = Grams(linears)
    try:
        with torch.no_grad():  # only the hooks' sums are wanted of this pass
            for sample in all_samples:
                call(module, sample)
    finally:
        grams.remove()
    return grams.grams


def weight_records(module, call, all_samples: list, probe_batch: list, effect, linears: dict, widths, probe_widths,
                   threads: int, bounds=GROUP_BYTES) -> dict:  # fmt: skip
    """{weight name: its record (weight_record)} for `linears` (name -> nn.Linear of `module`).

    `call(module, sample)` runs the module; the Gram matrices gather over `all_samples`, the probes
    run `probe_batch`, and `effect(reference, outputs)` is what a probe measures at the module's
    outputs (lists over the batch of lists of tensors). The reference is the fp16 package's weights.
    A weight's record does not depend on the group it is measured in.
    """
    import torch

    refuse_non_finite(linears)
    with torch.no_grad():
        for linear in linears.values():
            linear.weight.copy_(linear.weight.half().float())
    reference = run(module, call, probe_batch)
    records = {}
    for group in weight_groups(linears, widths, bounds):
        grams = gathered_grams(module, call, all_samples, group)
        palettes = palettes_of(group, widths, threads)
        for name, linear in group.items():
            records[name] = weight_record(name, linear, grams.pop(name).float(), palettes.pop(name), probe_widths,
                                          lambda: effect(reference, run(module, call, probe_batch)))  # fmt: skip
    return records


def analyse_piece(weights, config_path, calibration, piece, widths, min_values, probe_widths, probe_samples, threads):
    """The piece's sensitivity record (see the module's docstring); `widths` palette widths."""
    from sd3coreml.inputs.checkpoint import load_transformer_config
    from sd3coreml.inputs.geometry import MMDiTShape

    check_widths(widths, min_values, probe_widths)
    description = read_description(calibration)
    shape = MMDiTShape.from_config(load_transformer_config(config_path), *description["latent"])
    module, call = build_piece(piece, shape, weights)
    inputs = read_piece_inputs(calibration, piece)
    count = len(next(iter(inputs.values())))
    probes = probe_indices(count, probe_samples)
    records = weight_records(module, call, samples(inputs, range(count)), samples(inputs, probes), nsr,
                             eligible_linears(module, min_values), widths, probe_widths, threads)  # fmt: skip
    return {"format": FORMAT, "piece": piece, "calibration": description, "probe_samples": probes,
            "samples": count, "widths": list(widths), "probe_widths": list(probe_widths),
            "effect": "predicted noise-to-signal ratio at the piece's output, against the fp16 weights",
            "weights": records}  # fmt: skip


def weight_record(name, linear, gram, palettes: dict, probe_widths, measure_piece) -> dict:
    """One weight's curve from its palettized forms (`palettes`, by width): bytes, own NSR and
    predicted effect per width; measured at the piece's output at the probe widths."""
    import torch

    original = linear.weight.detach().clone()
    base = original.numpy()  # already the fp16 package's values (analyse_piece rounded them)
    own, measured, widths = {}, {}, list(palettes)
    signal = output_energy(base, gram)
    for width in widths:
        compressed = palettes[width].astype(np.float32)
        own[width] = output_energy(compressed - base, gram) / signal if signal > 0 else 0.0
        if width in probe_widths:
            with torch.no_grad():
                linear.weight.copy_(torch.from_numpy(compressed))
            measured[width] = measure_piece()
    with torch.no_grad():
        linear.weight.copy_(original)
    first = probe_widths[0]
    transfer = measured[first] / own[first] if own[first] > 0 else 1.0
    values = int(base.size)
    curve = {str(width): {"bytes": palette_bytes(values, width), "own_nsr": rounded(own[width]),
                          "effect": rounded(transfer * own[width])} for width in widths}  # fmt: skip
    curve[FP16] = {"bytes": 2 * values, "own_nsr": 0.0, "effect": 0.0}
    return {"values": values, "shape": list(base.shape), "transfer": rounded(transfer), "curve": curve,
            "measured": {str(width): rounded(value) for width, value in measured.items()}}  # fmt: skip
