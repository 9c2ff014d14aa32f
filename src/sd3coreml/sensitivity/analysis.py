"""Sensitivity of one MMDiT piece's weights to palettes: each weight compressed alone, at each width.

For each linear weight of more than `min_values` values (coremltools palettizes no smaller one)
the weight is palettized alone exactly as its package would be (the fp16 weight, coremltools'
k-means palette per tensor: compress/palettes.py) at each candidate width. Its effect is measured
where it is cheap and scaled to where it matters:

- at the weight's own output over every calibration sample, as a noise-to-signal ratio
  tr(dW G dW^T) / tr(W G W^T), with G = X^T X over the weight's inputs X gathered once, no
  forward pass per width (see InputStatistics for the cheaper of two forms it is kept in);
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
from sd3coreml.sensitivity.input_statistics import InputStatistics, gathered_inputs

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


def palettes_of(linear, widths, threads: int) -> dict[int, np.ndarray]:
    """{width: the linear's fp16 weight palettized at that width}, on `threads` threads (the exact
    k-means is a C call that lets others run); each result is the same whatever the count."""
    from concurrent.futures import ThreadPoolExecutor

    weight = linear.weight.detach().numpy().astype(np.float16)
    with ThreadPoolExecutor(max_workers=max(1, threads)) as pool:
        return dict(zip(widths, pool.map(lambda width: palettized(weight, width), widths)))


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


# What the input statistics of one group of weights analysed together may hold, counted as
# float64 Gram matrices (kept rows take at most half of that). A joint block of SD3 Medium is one
# group; a text encoder (sensitivity/text_encoders.py) takes half as much, as its whole module
# stays loaded (CLIP-G: 2.8 GB in float32), paying more passes over its prompts.
GROUP_BYTES = 1 << 30


def weight_groups(linears: dict, bound: int = GROUP_BYTES) -> list[dict]:
    """`linears` cut, in order, into groups whose statistics stay within `bound` bytes."""
    groups, current, total = [], {}, 0
    for name, linear in linears.items():
        size = 8 * linear.in_features**2
        if current and total + size > bound:
            groups.append(current)
            current, total = {}, 0
        current[name] = linear
        total += size
    return [*groups, current] if current else groups


def weight_records(module, call, all_samples: list, probe_batch: list, effect, linears: dict, widths, probe_widths,
                   threads: int, bound: int = GROUP_BYTES) -> dict:  # fmt: skip
    """{weight name: its record (weight_record)} for `linears` (name -> nn.Linear of `module`).

    `call(module, sample)` runs the module; the input statistics gather over `all_samples`, the
    probes run `probe_batch`, and `effect(reference, outputs)` is what a probe measures at the
    module's outputs (lists over the batch of lists of tensors). The reference is the fp16
    package's weights. A weight's record does not depend on the group it is measured in. Its
    palettes are made when it is measured, so a group holds one weight's palettized copies.
    """
    import torch

    refuse_non_finite(linears)
    with torch.no_grad():
        for linear in linears.values():
            linear.weight.copy_(linear.weight.half().float())
    reference = run(module, call, probe_batch)
    records = {}
    for group in weight_groups(linears, bound):
        statistics = gathered_inputs(module, call, all_samples, group)
        for name, linear in group.items():
            records[name] = weight_record(name, linear, statistics.pop(name), palettes_of(linear, widths, threads),
                                          probe_widths,
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


def weight_record(name, linear, inputs: InputStatistics, palettes: dict, probe_widths, measure_piece) -> dict:
    """One weight's curve from its palettized forms (`palettes`, by width): bytes, own NSR and
    predicted effect per width; measured at the piece's output at the probe widths."""
    import torch

    original = linear.weight.detach().clone()
    base = original.numpy()  # already the fp16 package's values (analyse_piece rounded them)
    own, measured, widths = {}, {}, list(palettes)
    signal = inputs.energy(base)
    for width in widths:
        compressed = palettes[width].astype(np.float32)
        own[width] = inputs.energy(compressed - base) / signal if signal > 0 else 0.0
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
