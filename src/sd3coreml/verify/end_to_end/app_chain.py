"""What the app does with a resource folder, step by step, run through `mil_executor`.

Tokenize with the folder's vocab.json/merges.txt as the app does (`app_tokenizer`: CLIP-L's
ids padded with EOS, CLIP-G's with "!"), encode with both CLIP packages, lay the
embeddings out as the MMDiT expects them (CLIP-L and CLIP-G side by side, zero-padded to
`joint_attention_dim`, then 77 zero T5 slots), run Conditioning and Stage0..N under the
app's sampler from the app's initial latent for a seed (`initial_latent`), then the VAE decoder
on the last step's denoised prediction, `/ 1.5305 + 0.0609`, all in float32 as the app computes
it (`sampler`, `app_noise`). Every intermediate the reference can be compared with is recorded
in `ChainRecord`.
"""

import re
from pathlib import Path

import numpy as np

from sd3coreml.contract import (
    CONDITIONING,
    HIDDEN_EMBEDS,
    INPUT_IDS,
    LATENT_IMAGE_EMBEDDINGS,
    LATENT_IMAGE_EMBEDDINGS_OUT,
    MODULATION_INPUTS,
    NOISE_PRED,
    POOLED_OUTPUTS,
    POOLED_TEXT_EMBEDDINGS,
    STAGE_PREFIX,
    TEXT_ENCODERS,
    TIMESTEP,
    TOKEN_LEVEL_TEXT_EMBEDDINGS,
    TOKEN_LEVEL_TEXT_EMBEDDINGS_OUT,
    VAE_DECODER,
    VAE_IMAGE,
    VAE_LATENT,
    VAE_SCALING_FACTOR,
    VAE_SHIFT_FACTOR,
)
from sd3coreml.errors import PipelineError
from sd3coreml.verify.end_to_end import app_noise
from sd3coreml.verify.end_to_end.chain_record import ChainRecord
from sd3coreml.verify.end_to_end.sampler import AppSchedule
from sd3coreml.verify.mil_executor import run_package

STAGE = re.compile(rf"{STAGE_PREFIX}(\d+)\.mlpackage")


def initial_latent(seed: int, shape: tuple[int, ...]) -> np.ndarray:
    """The latent the app starts from for `seed` (`generateLatentSamples`): NumPyRandomSource
    normals with `stdev = initNoiseSigma`, which is 1 for DiscreteFlowScheduler."""
    return app_noise.initial_latent(seed, shape, stdev=1.0)


def folder_stages(folder: Path) -> list[Path]:
    """The stages as the app finds them: listed and sorted numerically, with no gap check."""
    stages = [path for path in Path(folder).iterdir() if STAGE.fullmatch(path.name)]
    return sorted(stages, key=lambda path: int(STAGE.fullmatch(path.name).group(1)))


def encode_prompt(folder: Path, ids: dict[str, list[int]], joint_attention_dim: int, record: ChainRecord, run):
    """(1, joint_attention_dim, 1, 154) token embeddings and (1, 2048, 1, 1) pooled embeddings."""
    clip_l, clip_g = (
        run(folder / f"{name}.mlpackage", {INPUT_IDS: np.array([ids[name]], dtype=np.float32)})
        for name in TEXT_ENCODERS
    )
    tokens, pooled = prompt_embeddings(clip_l, clip_g, joint_attention_dim)
    record.put(None, "prompt_embeds", tokens)
    record.put(None, "pooled_projections", pooled)
    return as_mmdit_inputs(tokens, pooled)


def prompt_embeddings(clip_l: dict, clip_g: dict, joint_attention_dim: int) -> tuple[np.ndarray, np.ndarray]:
    """The app's layout of the two encoders' outputs: (1, 154, joint_attention_dim) tokens, CLIP-L
    and CLIP-G side by side zero-padded, then 77 zero T5 slots; (1, 2048) pooled, side by side."""
    clip = np.concatenate([clip_l[HIDDEN_EMBEDS], clip_g[HIDDEN_EMBEDS]], axis=-1).astype(np.float32)
    clip = np.pad(clip, ((0, 0), (0, 0), (0, joint_attention_dim - clip.shape[-1])))
    tokens = np.concatenate([clip, np.zeros_like(clip)], axis=1)
    pooled = np.concatenate([clip_l[POOLED_OUTPUTS], clip_g[POOLED_OUTPUTS]], axis=-1).astype(np.float32)
    return tokens, pooled


def as_mmdit_inputs(tokens: np.ndarray, pooled: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The shapes the MMDiT's packages take: tokens (1, C, 1, T), as Apple's SD pipelines lay them, pooled (1, P, 1, 1)."""
    return tokens.transpose(0, 2, 1)[:, :, None, :], pooled.reshape(1, -1, 1, 1)


def predict_velocity(folder: Path, latent, text, pooled, timestep: float, step: int, record: ChainRecord, run):
    conditioning = folder / f"{CONDITIONING}.mlpackage"
    feeds = {POOLED_TEXT_EMBEDDINGS: pooled, TIMESTEP: np.array([timestep], dtype=np.float32)}
    modulation = run(conditioning, feeds)[MODULATION_INPUTS].astype(np.float32)
    record.put(step, conditioning.name, modulation)
    image, text_tokens = latent, text
    for stage in folder_stages(folder):
        feeds = {
            LATENT_IMAGE_EMBEDDINGS: image,
            TOKEN_LEVEL_TEXT_EMBEDDINGS: text_tokens,
            MODULATION_INPUTS: modulation,
        }
        outputs = run(stage, feeds)
        if NOISE_PRED in outputs:
            record.put(step, stage.name, outputs[NOISE_PRED])
            return outputs[NOISE_PRED]
        image = outputs[LATENT_IMAGE_EMBEDDINGS_OUT].astype(np.float32)
        text_tokens = outputs[TOKEN_LEVEL_TEXT_EMBEDDINGS_OUT].astype(np.float32)
        record.put(step, stage.name, np.concatenate([text_tokens, image], axis=1))
    raise PipelineError(f"{folder}: no stage returns noise_pred; the last stage is missing, rebuild the folder")


def run_app_chain(
    folder: Path,
    ids: dict[str, list[int]],
    noise: np.ndarray,
    schedule: AppSchedule,
    joint_attention_dim: int,
    run=run_package,
) -> ChainRecord:
    """The app's chain on the ids it feeds each text encoder (`app_tokenizer.app_token_ids`),
    from `noise` (`initial_latent`) under `schedule` (its steps and timestep shift).

    `run(package, feeds) -> outputs` runs one package: the MIL executor, or Core ML itself
    (`coreml_chain.coreml_chain`, on a Mac).
    """
    folder = Path(folder)
    record = ChainRecord()
    text, pooled = encode_prompt(folder, ids, joint_attention_dim, record, run)
    latent = noise.astype(np.float32)
    denoised = latent
    for step, timestep in enumerate(schedule.timesteps):
        velocity = predict_velocity(folder, latent, text, pooled, timestep, step, record, run)
        latent, denoised = schedule.step(step, latent, velocity)
    record.put(None, "final_latent", latent)
    # StableDiffusion3Pipeline.swift decodes `denoisedLatents`, set after each step to
    # `scheduler[i].modelOutputs.last` (the step's `x - v * sigma`), not `latents`:
    # `let images = try decodeToImages(denoisedLatents, configuration: config)`.
    record.put(None, "decoded_latent", denoised)
    # Decoder.swift: `$0 / scaleFactor + shiftFactor`, in Float32.
    z = denoised / np.float32(VAE_SCALING_FACTOR) + np.float32(VAE_SHIFT_FACTOR)
    record.put(None, "image", run(folder / f"{VAE_DECODER}.mlpackage", {VAE_LATENT: z})[VAE_IMAGE])
    return record
