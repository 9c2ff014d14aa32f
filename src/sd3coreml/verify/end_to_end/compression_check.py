"""What a compression mode costs end to end: the app's chain with the mode's MMDiT packages
against the same chain with fp16 MMDiT packages, everything else the same.

Both sides run in the MIL executor (app_chain.py) on one prompt and the app's initial latent for
the seed, with the same text encoders, VAE decoder and tokenizer files, so the figures are the
MMDiT's compression alone (the text encoders' own palettes would otherwise floor every figure
near 35 dB). The fp16 side is the same for every mode of a sweep, so it runs once
(`fp16_chain`, a safetensors file of the judged values) and each mode's check reads it. Each
side is a folder of links under a temporary root, laid out as the app finds packages. Figures:
PSNR (peak = max |reference|) of the final latent, the decoded latent and the image; the fp32
reference is not involved.
"""

import tempfile
from pathlib import Path

import numpy as np

from sd3coreml.errors import PipelineError
from sd3coreml.verify.measure import json_figure, psnr

JUDGED = ("final_latent", "decoded_latent", "image")


def linked_folder(entries: dict[str, str], root: Path) -> Path:
    """A folder holding a link to each entry under its contract name."""
    root.mkdir(parents=True)
    for name, source in sorted(entries.items()):
        if not Path(source).exists():
            raise PipelineError(f"{source}: missing; rebuild it before the end-to-end check of its mode")
        (root / name).symlink_to(Path(source).resolve())
    return root


def judged_values(spec: dict) -> dict[str, np.ndarray]:
    """The JUDGED values of the app's chain over the spec's shared entries and MMDiT packages.

    `spec`: {"shared": {name: path}, "mmdit": {name: path}, "prompt", "seed", "steps", "shift",
    "latent": [H, W], "in_channels", "joint_attention_dim"}."""
    from sd3coreml.verify.end_to_end.app_chain import initial_latent, run_app_chain
    from sd3coreml.verify.end_to_end.app_tokenizer import app_token_ids
    from sd3coreml.verify.end_to_end.sampler import AppSchedule

    schedule = AppSchedule(spec["steps"], spec["shift"])
    noise = initial_latent(spec["seed"], (1, spec["in_channels"], *spec["latent"]))
    with tempfile.TemporaryDirectory(prefix="sd3coreml-mode-") as scratch:
        folder = linked_folder({**spec["shared"], **spec["mmdit"]}, Path(scratch) / "folder")
        record = run_app_chain(folder, app_token_ids(folder, spec["prompt"]), noise, schedule,
                               spec["joint_attention_dim"])  # fmt: skip
    return {name: record.values[(None, name)] for name in JUDGED}


def write_fp16_chain(spec: dict, out: Path) -> None:
    """The fp16 side, once per sweep: its judged values as a safetensors file, written whole or not at all."""
    from safetensors.numpy import save_file

    from sd3coreml.atomic import written_atomically

    values = judged_values(spec)
    with written_atomically(Path(out)) as path:
        save_file({name: np.ascontiguousarray(value) for name, value in values.items()}, str(path))


def read_fp16_chain(path: Path) -> dict[str, np.ndarray]:
    from safetensors.numpy import load_file

    values = load_file(str(path))
    if sorted(values) != sorted(JUDGED):
        raise PipelineError(f"{path}: holds {sorted(values)}, not {sorted(JUDGED)}; rerun the sweep's fp16 chain job")
    return values


def compression_check(spec: dict, fp16_chain: Path) -> dict:
    """`spec` as `judged_values` takes it, with the mode's MMDiT, "mode" and "layout"; `fp16_chain`
    the file `write_fp16_chain` wrote for the same chain with the fp16 MMDiT."""
    reference = read_fp16_chain(fp16_chain)
    compressed = judged_values(spec)
    figures = {f"{name}_db": json_figure(round(psnr(reference[name], compressed[name]), 3)) for name in JUDGED}
    return {"mode": spec["mode"], "layout": spec["layout"], "prompt": spec["prompt"], "seed": spec["seed"],
            "steps": spec["steps"], "against": "the same chain with fp16 MMDiT packages", **figures}  # fmt: skip
