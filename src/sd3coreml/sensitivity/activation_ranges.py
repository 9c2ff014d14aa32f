"""Activation ranges of one fp16 package over the calibration inputs its piece receives in the app's chain.

The ranges a package's 8-bit activations are quantized with (compress/activations.py) are the
extremes of each tensor coremltools' activation passes read, over every calibration sample,
computed by the project's executor (Core ML predicts only on macOS). The samples are those of
the package's first piece: an MMDiT block range starts where `block<start>` receives its
inputs, the input stage and Conditioning are pieces of their own, and a text encoder receives
its ids (sensitivity/calibration.py). The record is JSON: extremes of fp16 tensors, exact, so it
repeats on any machine.

The same job chooses which ops keep fp16 activations, as ml-stable-diffusion's layer-wise
analysis does for UNets: each op the passes would quantize is quantized alone (the tensors it
reads and writes rounded to 8 bits by coremltools' own scale, every other op fp16), its effect
measured at the package's outputs as a noise-to-signal ratio over the probe samples, and the
most sensitive ops are kept fp16 until the predicted SNR of the rest (the effects summed)
reaches `sensitivity.activation_min_snr_db`. Effects are rounded to 6 digits and ties go to the
op name that sorts first, so the choice repeats like a recipe.
"""

import math

import numpy as np

from sd3coreml.contract import (
    INPUT_IDS,
    LATENT_IMAGE_EMBEDDINGS,
    MODULATION_INPUTS,
    POOLED_TEXT_EMBEDDINGS,
    TEXT_ENCODERS,
    TIMESTEP,
    TOKEN_LEVEL_TEXT_EMBEDDINGS,
)
from sd3coreml.errors import PipelineError
from sd3coreml.sensitivity.calibration import (
    BLOCK,
    CONDITIONING,
    INPUT,
    piece_kind,
    read_description,
    read_encoder_calibration,
    read_piece_inputs,
)

FORMAT = "sd3coreml-activation-ranges/1"
# A piece's calibration tensors by the names its package's inputs have (convert/mmdit.py).
PACKAGE_FEEDS = {
    CONDITIONING: {"pooled": POOLED_TEXT_EMBEDDINGS, "timestep": TIMESTEP},
    INPUT: {"latent": LATENT_IMAGE_EMBEDDINGS, "tokens": TOKEN_LEVEL_TEXT_EMBEDDINGS, "modulation": MODULATION_INPUTS},
    BLOCK: {"image": LATENT_IMAGE_EMBEDDINGS, "text": TOKEN_LEVEL_TEXT_EMBEDDINGS, "modulation": MODULATION_INPUTS},
}


def calibration_tensors(calibration, piece: str) -> dict[str, np.ndarray]:
    """{package input name: samples stacked} of `piece` (an MMDiT piece, or a text encoder's entry)."""
    if piece in TEXT_ENCODERS:
        return {INPUT_IDS: read_encoder_calibration(calibration, piece)[INPUT_IDS]}
    feeds = PACKAGE_FEEDS[piece_kind(piece)]
    return {feeds[name]: value for name, value in read_piece_inputs(calibration, piece).items()}


def package_samples(program, calibration, piece: str) -> list[dict[str, np.ndarray]]:
    """One feed per calibration sample, each input in the dtype the package declares for it."""
    from coremltools.converters.mil.mil import types

    tensors = calibration_tensors(calibration, piece)
    inputs = program.functions["main"].inputs
    if sorted(tensors) != sorted(inputs):
        raise PipelineError(
            f"calibration {calibration} piece {piece} holds {sorted(tensors)}, the package takes {sorted(inputs)}: "
            "the package is not this piece's; check the rule's piece"
        )
    dtypes = {name: types.nptype_from_builtin(var.dtype) for name, var in inputs.items()}
    count = len(next(iter(tensors.values())))
    return [{name: value[i : i + 1].astype(dtypes[name]) for name, value in tensors.items()} for i in range(count)]


def fake_quantized(value: np.ndarray, stat: dict) -> np.ndarray:
    """`value` through a quantize/dequantize pair as coremltools' insert passes build it: the
    symmetric int8 scale of the range [rmin, rmax] read as the tensor's dtype, MIL's rounding."""
    from coremltools.converters.mil.mil import types
    from coremltools.optimize import _utils as optimize_utils

    extremes = np.array([stat["rmin"], stat["rmax"]], dtype=value.dtype)
    _, scale, _ = optimize_utils.quantize_weight_by_dtype(extremes, axes=0, dtype=types.int8,
                                                          quantization_mode="LINEAR_SYMMETRIC")  # fmt: skip
    scale = np.asarray(scale).astype(value.dtype).reshape(())
    if scale == 0:
        return value
    return (np.clip(np.round(value / scale), -128, 127) * scale).astype(value.dtype)


def noise_to_signal(reference: list[dict], outputs: list[dict]) -> float:
    noise = math.fsum(float(((o[k].astype(np.float64) - r[k].astype(np.float64)) ** 2).sum())
                      for r, o in zip(reference, outputs) for k in r)  # fmt: skip
    signal = math.fsum(float((r[k].astype(np.float64) ** 2).sum()) for r in reference for k in r)
    return noise / signal if signal > 0 else 0.0


def outputs_quantized_alone(program, target, samples: list[dict], stats: dict) -> list[dict]:
    """The program's outputs for each of `samples` when only op `target` has 8-bit activations, as
    coremltools' passes would build it: what `target` reads through the prefix pass's pairs (on
    its own input edges only), and the tensor every consumer reads through the suffix pass's pair."""
    from sd3coreml.compress.activations import prefix_inputs, suffix_tensor
    from sd3coreml.verify.mil_executor import run_program

    prefixed, suffixed = prefix_inputs(target), suffix_tensor(target)

    def reads(op):
        return {var.name: fake_quantized(var.val, stats[var.name]) for var in prefixed} if op is target else None

    def substitute(op, values):
        return [fake_quantized(v, stats[var.name]) if var.name == suffixed else v for var, v in zip(op.outputs, values)]

    return [run_program(program, sample, reads=reads, substitute=substitute) for sample in samples]


def activation_effects(program, samples: list[dict], stats: dict) -> dict[str, float]:
    """{op: the NSR at the outputs when only that op's activations are 8-bit}, over `samples`."""
    from sd3coreml.compress.activations import quantizable_ops
    from sd3coreml.compress.allocation import rounded
    from sd3coreml.verify.mil_executor import run_program

    reference = [run_program(program, sample) for sample in samples]
    effects = {op.name: rounded(noise_to_signal(reference, outputs_quantized_alone(program, op, samples, stats)))
               for op in quantizable_ops(program)}  # fmt: skip
    return dict(sorted(effects.items()))


def kept_fp16(effects: dict[str, float], min_snr_db: float) -> list[str]:
    """The most sensitive ops, fewest first, kept fp16 until the rest's summed effect meets the floor."""
    ceiling = 10 ** (-min_snr_db / 10)
    order = sorted(effects, key=lambda name: (-effects[name], name))
    remaining, kept = math.fsum(effects.values()), []
    for name in order:
        if remaining <= ceiling:
            break
        kept.append(name)
        remaining = math.fsum(effects[other] for other in order[len(kept) :])
    return sorted(kept)


def activation_ranges(package, calibration, piece: str, probe_samples: int = 1, min_snr_db: float = 30.0) -> dict:
    """The record of `package`'s activation ranges over the calibration samples of `piece`, each
    quantizable op's effect on `probe_samples` of them, and the ops kept fp16 for `min_snr_db`."""
    from sd3coreml.compress.activations import gather_activation_stats, refuse_below_ios17
    from sd3coreml.convert.package import load_package, load_program
    from sd3coreml.sensitivity.analysis import probe_indices
    from sd3coreml.sensitivity.budget import snr_db

    model = load_package(package)
    refuse_below_ios17(model)
    program = load_program(model)
    samples = package_samples(program, calibration, piece)
    stats = gather_activation_stats(program, samples)
    probes = probe_indices(len(samples), probe_samples)
    effects = activation_effects(program, [samples[i] for i in probes], stats)
    keep = kept_fp16(effects, min_snr_db)
    rest = math.fsum(effect for name, effect in effects.items() if name not in keep)
    return {"format": FORMAT, "piece": piece, "calibration": read_description(calibration), "samples": len(samples),
            "ranges": stats, "probe_samples": probes, "effects": effects, "min_snr_db": min_snr_db,
            "keep_fp16": keep, "predicted_snr_db": snr_db(rest),
            "predicted_snr_db_all_quantized": snr_db(math.fsum(effects.values()))}  # fmt: skip


def read_ranges(path) -> tuple[dict[str, dict[str, float]], frozenset[str]]:
    """(ranges, ops kept fp16) of an activation-ranges record, refused in one line if it is not one."""
    import json
    from pathlib import Path

    try:
        record = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise PipelineError(f"{path}: cannot be read ({error}); rerun its activation-ranges job") from None
    if not isinstance(record, dict) or record.get("format") != FORMAT:
        raise PipelineError(f"{path}: not an activation-ranges record ({FORMAT}); rerun its activation-ranges job")
    return record["ranges"], frozenset(record["keep_fp16"])
