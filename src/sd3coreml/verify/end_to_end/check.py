"""End-to-end check of a packages folder: the app's chain against stock diffusers.

One prompt, tokenized as the app tokenizes it (`app_tokenizer`), and the initial latent the
app draws for the seed (`app_chain.initial_latent`) go through the folder's packages as the app
runs them (`app_chain`, under the model's steps and timestep shift) and, as the same ids and the
same latent, through `StableDiffusion3Pipeline` (`reference`). Every recorded intermediate is
compared by PSNR (peak = max |reference|); the prompt encoding, the first step's stage
boundaries, the final latent, the decoded latent (the last step's denoised prediction, which the
app decodes) and the image must clear the bar, so a wrong stage is named, and both images are
written side by side. On a Mac the same chain runs in Core ML (`coreml_side`) as a check of its
own, under Core ML's bar, which fails it only where enforced.

Beside it, tokenization only: for a set of prompts with punctuation, `#`, non-ASCII text, one
over 75 tokens and two where Swift's string rules decide (accents typed decomposed, which the
app finds by canonical equivalence; a combining mark after a space, which joins the words on
either side, and a zero-width space, which Foundation trims), the report lists each prompt whose
app ids differ from those of diffusers' own tokenizers, per text encoder, and where.
"""

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from sd3coreml.atomic import written_atomically
from sd3coreml.errors import PipelineError
from sd3coreml.verify.end_to_end.sampler import AppSchedule
from sd3coreml.verify.measure import json_figure, psnr

DEFAULT_PROMPT = "a photo of an astronaut riding a horse on the moon"
TOKENIZATION_PROMPTS = (
    DEFAULT_PROMPT,
    "a robot, painted in oil; dramatic light!",
    "#sunset over the sea #nofilter",
    "café au lait … in a paris bistro",
    "东京 at night 🌃",
    " ".join(["a very long prompt about a quiet mountain village"] * 10),
    "cafe\u0301 au lait, cre\u0300me bru\u0302le\u0301e",
    "a cat \u0301 on a mat\u200b",
)
# Ids shown on each side from the first difference on.
SHOWN_IDS = 4


def first_difference(app_ids: list[int], stock_ids: list[int]) -> int | None:
    return next((index for index, (a, b) in enumerate(zip(app_ids, stock_ids)) if a != b), None)


def tokenization_differences(folder: Path, components: Path, prompts=TOKENIZATION_PROMPTS) -> list[dict]:
    """Each (prompt, encoder) whose app ids differ from diffusers' tokenizer's, and where."""
    from sd3coreml.contract import APP_PADDING, MAX_TOKENS
    from sd3coreml.inputs.tokenizer import load_clip_tokenizer
    from sd3coreml.verify.end_to_end.app_tokenizer import AppTokenizer

    rows = []
    for encoder, tokenizer_dir in (("TextEncoder", "tokenizer"), ("TextEncoder2", "tokenizer_2")):
        app = AppTokenizer.from_folder(folder, APP_PADDING[encoder][0])
        stock = load_clip_tokenizer(components / tokenizer_dir)
        for prompt in prompts:
            app_ids = app.token_ids(prompt)
            stock_ids = stock(prompt, padding="max_length", max_length=MAX_TOKENS, truncation=True).input_ids
            at = first_difference(app_ids, stock_ids)
            if at is not None:
                shown = slice(at, at + SHOWN_IDS)
                rows.append({"prompt": prompt, "encoder": encoder, "first_difference": at,
                             "app_ids": app_ids[shown], "diffusers_ids": stock_ids[shown]})  # fmt: skip
    return rows


def comparisons(package_side, reference_side, timesteps) -> list[dict]:
    rows = []
    for (step, name), expected in reference_side.values.items():
        if (step, name) not in package_side.values:
            raise PipelineError(f"end-to-end: the folder produced no {name} at step {step}")
        figure = psnr(expected, package_side.values[(step, name)])
        timestep = None if step is None else float(timesteps[step])
        rows.append({"step": step, "timestep": timestep, "name": name, "psnr_db": json_figure(round(figure, 3))})
    return rows


def judged(row: dict) -> bool:
    """The prompt encoding, the first step's boundaries (before errors compound), the final
    latent, the decoded latent and the image; later steps are reported only."""
    return row["step"] in (None, 0)


def first_failure(rows: list[dict], bar: float) -> str | None:
    for row in rows:
        if judged(row) and float(row["psnr_db"]) < bar:
            where = "" if row["step"] is None else f" at step {row['step']} (timestep {row['timestep']:g})"
            return (
                f"end-to-end: {row['name']}{where} has PSNR {float(row['psnr_db']):.1f} dB against stock diffusers, "
                f"under the bar of {bar:g} dB"
            )
    return None


def image_bytes(image: np.ndarray) -> np.ndarray:
    """(1, 3, H, W) in [-1, 1] -> (H, W, 3) uint8, as diffusers' image processor denormalises."""
    pixels = np.clip((image[0].transpose(1, 2, 0) + 1.0) / 2.0, 0.0, 1.0)
    return (pixels * 255.0).round().astype(np.uint8)


def write_side_by_side(package_image: np.ndarray, reference_image: np.ndarray, out: Path) -> None:
    from PIL import Image

    pixels = np.concatenate([image_bytes(package_image), image_bytes(reference_image)], axis=1)
    with written_atomically(Path(out)) as temporary:
        Image.fromarray(pixels).save(temporary, format="PNG")


def coreml_side(folder: Path, ids, noise, schedule: AppSchedule, joint_attention_dim: int, reference, bar: float,
                coreml) -> tuple:  # fmt: skip
    """The same chain in Core ML (macOS 15 or newer, in a child process), against the same reference.

    `coreml` is (compute units, enforce). Returns what the report holds of it, Core ML's image
    (None where Core ML did not run) and the failure line where Core ML is enforced and fell short.
    """
    from sd3coreml.verify.end_to_end.chain_record import ChainRecord
    from sd3coreml.verify.end_to_end.coreml_chain import isolated_chain

    compute_units, enforce = coreml
    outcome = isolated_chain(folder, ids, noise, schedule, joint_attention_dim, compute_units)
    if isinstance(outcome, str):
        return {"coreml": outcome, "compute_units": None, "comparisons": []}, None, None
    if "failed" in outcome:
        failure = f"end-to-end: the Core ML chain failed ({outcome['failed']})" if enforce else None
        return {"coreml": "failed", "compute_units": compute_units, "failure": outcome, "comparisons": []}, None, failure
    record = ChainRecord(outcome)
    rows = comparisons(record, reference, schedule.timesteps)
    failure = first_failure(rows, bar)
    report = {"coreml": "measured", "compute_units": compute_units, **judged_latents(rows), "comparisons": rows}
    return report, record.values[(None, "image")], (f"{failure} (in Core ML)" if failure and enforce else None)


def judged_latents(rows: list[dict]) -> dict:
    final, decoded = (next(row for row in rows if row["name"] == name) for name in ("final_latent", "decoded_latent"))
    return {"final_latent_psnr_db": final["psnr_db"], "decoded_latent_psnr_db": decoded["psnr_db"]}


def build_config_of(folder: Path) -> dict:
    """What shaped the folder (its manifest's `config`): the layout and the latent size."""
    from sd3coreml.release.manifest import read_manifest

    return read_manifest(folder)["config"]


@dataclass(frozen=True)
class EndToEnd:
    """One end-to-end check: the report, both images, and the failure line (None when it passed)."""

    report: dict
    package_image: np.ndarray
    reference_image: np.ndarray
    failure: str | None


def end_to_end_check(
    folder,
    weights,
    config,
    components,
    steps: int,
    seed: int,
    bar: float,
    prompt: str = DEFAULT_PROMPT,
    coreml=None,
    shift: float = 3.0,
) -> EndToEnd:
    """The chain in the MIL executor, or, with `coreml` (compute units, enforce), in Core ML itself
    (macOS 15), each against the same reference under the bar it is given (`bar`). Core ML's check
    fails only where enforced, and where Core ML did not run its image is left grey.

    `seed`: the app's UInt32 seed; `shift`: the app's timestep shift (its `DiffusionModelKind.timestepShift`,
    3.0), which the workflow passes from `models.<name>.timestep_shift`.
    """
    from sd3coreml.verify.end_to_end.app_chain import initial_latent, run_app_chain
    from sd3coreml.verify.end_to_end.app_tokenizer import app_token_ids
    from sd3coreml.verify.end_to_end.reference import load_pipeline, run_reference

    folder, components = Path(folder), Path(components)
    schedule = AppSchedule(steps, shift)
    pipeline = load_pipeline(weights, config, components, shift)
    transformer = pipeline.transformer.config
    build = build_config_of(folder)
    block_ranges = [tuple(block_range) for block_range in build["stage_block_ranges"]]
    noise = initial_latent(seed, (1, transformer.in_channels, *build["latent_size"]))
    ids = app_token_ids(folder, prompt)
    reference = run_reference(pipeline, prompt, ids, noise, steps, block_ranges)
    report = {
        "folder": folder.name,
        "runner": "coreml" if coreml else "executor",
        "prompt": prompt,
        "token_ids": ids,
        "seed": seed,
        "steps": steps,
        "timestep_shift": shift,
        "timesteps": [float(t) for t in schedule.timesteps],
        "min_psnr_db": bar,
    }
    if coreml is not None:
        outcome, image, failure = coreml_side(folder, ids, noise, schedule, transformer.joint_attention_dim, reference,
                                              bar, coreml)  # fmt: skip
        report.update({**outcome, "enforced": coreml[1], "passed": failure is None})
        reference_image = reference.values[(None, "image")]
        return EndToEnd(report, np.zeros_like(reference_image) if image is None else image, reference_image, failure)
    package_side = run_app_chain(folder, ids, noise, schedule, transformer.joint_attention_dim)
    rows = comparisons(package_side, reference, schedule.timesteps)
    failure = first_failure(rows, bar)
    tokenization = {"prompts": list(TOKENIZATION_PROMPTS), "differences": tokenization_differences(folder, components)}
    report.update({"tokenization": tokenization, **judged_latents(rows), "passed": failure is None, "comparisons": rows})
    images = (package_side.values[(None, "image")], reference.values[(None, "image")])
    return EndToEnd(report, *images, failure)
