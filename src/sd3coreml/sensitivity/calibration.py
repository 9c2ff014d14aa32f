"""Calibration inputs: what each MMDiT piece receives when the app generates, per prompt and step.

The chain is the app's (verify/end_to_end/app_chain.py): its tokenizer on the prompt, both CLIP
encoders as their packages compute them (`TextEncoderForApp`), the embeddings laid out as the
app lays them, its initial latent for the seed, its sampler under the model's steps and
timestep shift. It runs in float32 PyTorch piece by piece, as the stage jobs build them
(convert/mmdit_modules.py): each step loads Conditioning, the input piece and one joint block
at a time from the checkpoint, runs it for every prompt, and lets it go, so the memory is one
block's weights and the activations, never the whole transformer (the whole-model end-to-end
job needs 16.7 GiB at SD3 Medium size).

The artifact is a folder: `calibration.json` (what determined it, and which prompt and step
each sample is) and one safetensors file per piece, its inputs stacked over samples in the
order (prompt, step): `conditioning` (pooled, timestep), `input` (latent, tokens, modulation)
and `block<i>` (image, text, modulation). The last block's target also feeds the head.
Bytes repeat on one machine: the job fixes its thread count, and safetensors and the JSON are
written in a fixed order.
"""

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from sd3coreml.atomic import written_atomically
from sd3coreml.contract import HIDDEN_EMBEDS, INPUT_IDS, POOLED_OUTPUTS, TEXT_ENCODERS
from sd3coreml.errors import PipelineError

FORMAT = "sd3coreml-calibration/1"
DESCRIPTION = "calibration.json"
CONDITIONING, INPUT, BLOCK = "conditioning", "input", "block"
# The inputs each piece's file holds, by name.
PIECE_INPUTS = {
    CONDITIONING: ("pooled", "timestep"),
    INPUT: ("latent", "tokens", "modulation"),
    BLOCK: ("image", "text", "modulation"),
}


def piece_names(depth: int) -> list[str]:
    """Every piece of a transformer of `depth` joint blocks that has its own calibration and analysis."""
    return [CONDITIONING, INPUT, *(f"{BLOCK}{index}" for index in range(depth))]


def piece_kind(piece: str) -> str:
    if piece in (CONDITIONING, INPUT):
        return piece
    if piece.startswith(BLOCK) and piece[len(BLOCK) :].isdigit():
        return BLOCK
    raise PipelineError(f"piece {piece!r} is none of {CONDITIONING}, {INPUT} or {BLOCK}<index>")


@dataclass(frozen=True)
class ChainSettings:
    """What determines a calibration besides the model: prompts, steps, shift, seed, latent size."""

    prompts: tuple[str, ...]
    steps: int
    shift: float
    seed: int
    latent: tuple[int, int]

    def describe(self) -> dict:
        return {"format": FORMAT, "prompts": list(self.prompts), "steps": self.steps, "shift": self.shift,
                "seed": self.seed, "latent": list(self.latent)}  # fmt: skip


def encoder_outputs(components: Path, prompts) -> dict[str, dict[str, np.ndarray]]:
    """What each text encoder receives and returns for every prompt, in float32, stacked over the
    prompts: {entry: {input_ids (N, 77), hidden_embeds (N, 77, C), pooled_outputs (N, P)}}."""
    import torch

    from sd3coreml.convert.text_encoder import TextEncoderForApp, load_text_encoder
    from sd3coreml.verify.end_to_end.app_tokenizer import app_token_ids

    ids = [app_token_ids(components / "tokenizer", prompt) for prompt in prompts]
    outputs = {}
    for entry, folder in TEXT_ENCODERS.items():  # one at a time: CLIP-G alone is 2.8 GB in float32
        encoder = TextEncoderForApp(load_text_encoder(components / folder))
        batch = np.array([prompt[entry] for prompt in ids], dtype=np.float32)
        with torch.no_grad():
            hidden, pooled = zip(*(encoder(torch.from_numpy(row[None])) for row in batch))
        outputs[entry] = {INPUT_IDS: batch, HIDDEN_EMBEDS: torch.cat(hidden).numpy(),
                          POOLED_OUTPUTS: torch.cat(pooled).numpy()}  # fmt: skip
        del encoder
    return outputs


def encode_prompts(components: Path, prompts, joint_attention_dim: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """Each prompt as the MMDiT receives it: (tokens (1, C, 1, 154), pooled (1, 2048, 1, 1)), float32."""
    from sd3coreml.verify.end_to_end.app_chain import as_mmdit_inputs, prompt_embeddings

    outputs = encoder_outputs(components, prompts)
    per_prompt = [
        [{name: outputs[entry][name][i : i + 1] for name in (HIDDEN_EMBEDS, POOLED_OUTPUTS)} for entry in TEXT_ENCODERS]
        for i in range(len(prompts))
    ]
    return [as_mmdit_inputs(*prompt_embeddings(*encoders, joint_attention_dim)) for encoders in per_prompt]


class PieceInputs:
    """Collects each piece's inputs, sample by sample, in (prompt, step) order."""

    def __init__(self, prompts: int, steps: int):
        self.prompts, self.steps = prompts, steps
        self.inputs: dict[str, dict[str, list]] = {}

    def put(self, piece: str, prompt: int, step: int, **tensors) -> None:
        slots = self.inputs.setdefault(piece, {name: [None] * (self.prompts * self.steps) for name in tensors})
        for name, value in tensors.items():
            slots[name][prompt * self.steps + step] = np.asarray(value, dtype=np.float32)

    def pop_stacked(self, piece: str) -> dict[str, np.ndarray]:
        """`piece`'s inputs stacked [samples, ...], no longer held here: at SD3 Medium size the pieces'
        inputs are gigabytes, so they are stacked and written one piece at a time."""
        return {name: np.concatenate(values, axis=0) for name, values in self.inputs.pop(piece).items()}


def run_chain(weights: Path, config_path: Path, components: Path, chain: ChainSettings) -> PieceInputs:
    """The app's chain over every prompt, piece by piece, recording what each piece receives."""
    import torch

    from sd3coreml.convert.mmdit_modules import build_block_range, build_conditioning, build_input_stage
    from sd3coreml.inputs.checkpoint import load_transformer_config
    from sd3coreml.inputs.geometry import MMDiTShape
    from sd3coreml.verify.end_to_end.app_chain import initial_latent
    from sd3coreml.verify.end_to_end.sampler import AppSchedule

    shape = MMDiTShape.from_config(load_transformer_config(config_path), *chain.latent)
    schedule = AppSchedule(chain.steps, chain.shift)
    encoded = encode_prompts(Path(components), chain.prompts, shape.joint_attention_dim)
    latent_shape = (1, shape.in_channels, *chain.latent)
    latents = [initial_latent(chain.seed, latent_shape) for _ in chain.prompts]
    record = PieceInputs(len(chain.prompts), chain.steps)
    as_tensor = torch.from_numpy
    with torch.no_grad():
        for step, timestep in enumerate(schedule.timesteps):
            conditioning = build_conditioning(shape, weights)
            times = np.array([timestep], dtype=np.float32)
            modulation = []
            for prompt, (_, pooled) in enumerate(encoded):
                record.put(CONDITIONING, prompt, step, pooled=pooled, timestep=times)
                modulation.append(conditioning(as_tensor(pooled), as_tensor(times)))
            del conditioning
            input_stage = build_input_stage(shape, weights)
            streams = []
            for prompt, (tokens, _) in enumerate(encoded):
                record.put(INPUT, prompt, step, latent=latents[prompt], tokens=tokens, modulation=modulation[prompt])
                streams.append(input_stage(as_tensor(latents[prompt]), as_tensor(tokens), modulation[prompt]))
            del input_stage
            for index in range(shape.depth):
                block = build_block_range(shape, index, index + 1, weights)
                for prompt, (image, text) in enumerate(streams):
                    record.put(f"{BLOCK}{index}", prompt, step, image=image, text=text, modulation=modulation[prompt])
                    streams[prompt] = block(image, text, modulation[prompt])
                del block
            for prompt, velocity in enumerate(streams):
                latents[prompt], _ = schedule.step(step, latents[prompt], velocity.numpy())
    return record


def capture_calibration(weights, config_path, components, chain: ChainSettings, out: Path) -> None:
    """Run the chain and write the calibration folder `out`."""
    if not chain.prompts:
        raise PipelineError("sensitivity.prompts is empty; give at least one prompt to calibrate with")
    record = run_chain(Path(weights), Path(config_path), Path(components), chain)
    samples = [{"prompt": p, "step": s} for p in range(len(chain.prompts)) for s in range(chain.steps)]
    files = ((piece, record.pop_stacked(piece)) for piece in sorted(record.inputs))
    write_calibration(Path(out), files, {**chain.describe(), "samples": samples})


def capture_text_calibration(components, prompts, out: Path) -> None:
    """Write the text encoders' calibration folder `out`: what the app feeds each encoder (its
    tokenizer's ids) and what the encoder returns, one safetensors file per folder entry; the
    outputs are the references an encoder's analysis measures its effect against."""
    if not prompts:
        raise PipelineError("sensitivity.prompts is empty; give at least one prompt to calibrate with")
    outputs = encoder_outputs(Path(components), prompts)
    description = {"format": FORMAT, "prompts": list(prompts), "encoders": list(TEXT_ENCODERS)}
    write_calibration(Path(out), sorted(outputs.items()), description)


def write_calibration(out: Path, files, description: dict) -> None:
    """A calibration folder `out`, whole or not at all: one safetensors file per piece, from
    `files`, (piece, {tensor name: array}) pairs in sorted order (each may be made as it is
    written), and the description."""
    import torch

    from sd3coreml.inputs.checkpoint import save_safetensors

    with written_atomically(out) as folder:
        folder.mkdir()
        for piece, tensors in files:
            save_safetensors({name: torch.from_numpy(np.ascontiguousarray(value)) for name, value in tensors.items()},
                             folder / f"{piece}.safetensors")  # fmt: skip
        (folder / DESCRIPTION).write_text(json.dumps(description, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def read_tensors(calibration: Path, piece: str, expected: list[str]) -> dict[str, np.ndarray]:
    """The tensors of `piece`'s file in the calibration folder, which must be those `expected`."""
    from safetensors.numpy import load_file

    path = Path(calibration) / f"{piece}.safetensors"
    if not path.is_file():
        raise PipelineError(f"{path}: missing; the calibration folder {calibration} is incomplete, rerun its job")
    tensors = load_file(str(path))
    if sorted(tensors) != sorted(expected):
        raise PipelineError(f"{path}: holds {sorted(tensors)}, not {expected}; rerun the calibration job")
    return tensors


def read_encoder_calibration(calibration: Path, entry: str) -> dict[str, np.ndarray]:
    """One text encoder's calibration: input_ids, hidden_embeds, pooled_outputs over the prompts."""
    return read_tensors(calibration, entry, sorted((INPUT_IDS, HIDDEN_EMBEDS, POOLED_OUTPUTS)))


def read_piece_inputs(calibration: Path, piece: str) -> dict[str, np.ndarray]:
    """The inputs of `piece` in the calibration folder, as float32 arrays [samples, ...]."""
    return read_tensors(calibration, piece, list(PIECE_INPUTS[piece_kind(piece)]))


def read_description(calibration: Path) -> dict:
    path = Path(calibration) / DESCRIPTION
    try:
        description = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise PipelineError(f"{path}: cannot be read ({error}); rerun the calibration job") from None
    if description.get("format") != FORMAT:
        raise PipelineError(f"{path}: format {description.get('format')!r}, not {FORMAT}; rerun the calibration job")
    return description
