"""Sensitivity of one CLIP text encoder's weights to palettes, measured where the MMDiT reads them.

The same measure as an MMDiT piece's (sensitivity/analysis.py: each weight palettized alone,
its own-output noise from the Gram matrix of its inputs, a transfer probed at the encoder's
outputs), over the text encoders' calibration (sensitivity/calibration.py's
`capture_text_calibration`: the app's ids for each prompt, and both encoders' outputs).

The effect is counted at the MMDiT's inputs, where both encoders meet: the app lays CLIP-L's and
CLIP-G's hidden states side by side in the token embeddings and their pooled outputs side by side
in the pooled embedding (verify/end_to_end/app_chain.py's `prompt_embeddings`). A weight's effect
is the noise it causes in the token embeddings over their energy (both encoders'), plus the same
for the pooled embedding. The two are summed rather than pooled into one ratio: the pooled
embedding is 1/77 of the tokens' values, yet it modulates every block, and the encoders' last
layer reaches the MMDiT through it alone (the token embeddings are the penultimate layer's).
Effects of both encoders so share one scale, and one budget allocates bits across both.
"""

import math
from pathlib import Path

from sd3coreml.contract import HIDDEN_EMBEDS, INPUT_IDS, POOLED_OUTPUTS, TEXT_ENCODERS
from sd3coreml.errors import PipelineError
from sd3coreml.sensitivity.analysis import (
    FORMAT,
    GROUP_BYTES,
    check_widths,
    eligible_linears,
    probe_indices,
    weight_records,
)
from sd3coreml.sensitivity.calibration import read_description, read_encoder_calibration

OUTPUTS = (HIDDEN_EMBEDS, POOLED_OUTPUTS)
# Half a joint block's group: CLIP-G at SD3 Medium size peaked at 5.31 GB with the block's bounds.
TEXT_ENCODER_GROUP_BYTES = GROUP_BYTES // 2


def joint_energies(calibration: Path, probes: list[int]) -> tuple[float, ...]:
    """Each embedding's energy over the probe prompts, both encoders' parts summed: the
    denominators of an effect at the MMDiT's inputs."""
    encoders = [read_encoder_calibration(calibration, entry) for entry in TEXT_ENCODERS]
    return tuple(math.fsum(float((encoder[name][probes].astype("float64") ** 2).sum()) for encoder in encoders)
                 for name in OUTPUTS)  # fmt: skip


def joint_effect(energies):
    """effect(reference, outputs): the noise in each embedding over its joint energy, summed."""

    def effect(reference: list, candidate: list) -> float:
        total = 0.0
        for index, energy in enumerate(energies):
            noise = math.fsum(float(((c[index].double() - r[index].double()) ** 2).sum())
                              for r, c in zip(reference, candidate))  # fmt: skip
            total += noise / energy if energy > 0 else 0.0
        return total

    return effect


def analyse_text_encoder(components, calibration, entry, widths, min_values, probe_widths, probe_samples, threads):
    """The sensitivity record of text encoder `entry` (TextEncoder, TextEncoder2)."""
    import torch

    from sd3coreml.convert.text_encoder import TextEncoderForApp, load_text_encoder

    if entry not in TEXT_ENCODERS:
        raise PipelineError(f"text encoder {entry!r} is none of {', '.join(TEXT_ENCODERS)}")
    check_widths(widths, min_values, probe_widths)
    description = read_description(calibration)
    ids = read_encoder_calibration(calibration, entry)[INPUT_IDS]
    encoder = load_text_encoder(Path(components) / TEXT_ENCODERS[entry])
    module = TextEncoderForApp(encoder)
    probes = probe_indices(len(ids), probe_samples)
    batch = [torch.from_numpy(ids[i : i + 1].copy()) for i in range(len(ids))]
    # Named as the checkpoint names them (the encoder's own state dict), as recipes and consts are.
    linears = eligible_linears(encoder, min_values)
    records = weight_records(module, lambda m, x: m(x), batch, [batch[i] for i in probes],
                             joint_effect(joint_energies(calibration, probes)), linears, widths, probe_widths,
                             threads, TEXT_ENCODER_GROUP_BYTES)  # fmt: skip
    return {"format": FORMAT, "piece": entry, "calibration": description, "probe_samples": probes,
            "samples": len(ids), "widths": list(widths), "probe_widths": list(probe_widths),
            "effect": "predicted noise-to-signal ratio of the MMDiT's token embeddings plus that of its pooled "
                      "embedding (both encoders' energy), against the fp16 weights",
            "weights": records}  # fmt: skip
