"""Activation ranges of one fp16 package over the calibration inputs its piece receives in the app's chain.

The ranges a package's 8-bit activations are quantized with (compress/activations.py) are the
extremes of each tensor coremltools' activation passes read, over every calibration sample,
computed by the project's executor (Core ML predicts only on macOS). The samples are those of
the package's first piece: an MMDiT block range starts where `block<start>` receives its
inputs, the input stage and Conditioning are pieces of their own, and a text encoder receives
its ids (sensitivity/calibration.py). The record is JSON: extremes of fp16 tensors, exact, so it
repeats on any machine.
"""

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


def activation_ranges(package, calibration, piece: str) -> dict:
    """The record of `package`'s activation ranges over the calibration samples of `piece`."""
    from sd3coreml.compress.activations import gather_activation_stats, refuse_below_ios17
    from sd3coreml.compress.weights import load_program
    from sd3coreml.convert.package import load_package

    model = load_package(package)
    refuse_below_ios17(model)
    program = load_program(model)
    samples = package_samples(program, calibration, piece)
    return {"format": FORMAT, "piece": piece, "calibration": read_description(calibration), "samples": len(samples),
            "ranges": gather_activation_stats(program, samples)}  # fmt: skip


def read_ranges(path) -> dict[str, dict[str, float]]:
    """The ranges of an activation-ranges record, refused in one line if it is not one."""
    import json
    from pathlib import Path

    try:
        record = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise PipelineError(f"{path}: cannot be read ({error}); rerun its activation-ranges job") from None
    if not isinstance(record, dict) or record.get("format") != FORMAT:
        raise PipelineError(f"{path}: not an activation-ranges record ({FORMAT}); rerun its activation-ranges job")
    return record["ranges"]
