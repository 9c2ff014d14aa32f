"""What a compression mode costs end to end: the app's chain with the mode's MMDiT packages
against the same chain with fp16 MMDiT packages, everything else the same.

Both sides run in the MIL executor (app_chain.py) on one prompt and the app's initial latent for
the seed, with the same text encoders, VAE decoder and tokenizer files, so the figures are the
MMDiT's compression alone (the text encoders' own palettes would otherwise floor every figure
near 35 dB). Each side is a folder of links under a temporary root, laid out as the app finds
packages. Figures: PSNR (peak = max |reference|) of the final latent, the decoded latent and
the image; the fp32 reference is not involved.
"""

import tempfile
from pathlib import Path

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


def compression_check(spec: dict) -> dict:
    """`spec`: {"shared": {name: path}, "fp16": {name: path}, "compressed": {name: path}, "prompt", "seed",
    "steps", "shift", "latent": [H, W], "in_channels", "joint_attention_dim", "mode", "layout"}."""
    from sd3coreml.verify.end_to_end.app_chain import initial_latent, run_app_chain
    from sd3coreml.verify.end_to_end.app_tokenizer import app_token_ids
    from sd3coreml.verify.end_to_end.sampler import AppSchedule

    schedule = AppSchedule(spec["steps"], spec["shift"])
    noise = initial_latent(spec["seed"], (1, spec["in_channels"], *spec["latent"]))
    with tempfile.TemporaryDirectory(prefix="sd3coreml-mode-") as scratch:
        records = {}
        for side in ("fp16", "compressed"):
            folder = linked_folder({**spec["shared"], **spec[side]}, Path(scratch) / side)
            ids = app_token_ids(folder, spec["prompt"])
            records[side] = run_app_chain(folder, ids, noise, schedule, spec["joint_attention_dim"])
    figures = {
        f"{name}_db": json_figure(round(psnr(records["fp16"].values[(None, name)],
                                             records["compressed"].values[(None, name)]), 3))
        for name in JUDGED
    }  # fmt: skip
    return {"mode": spec["mode"], "layout": spec["layout"], "prompt": spec["prompt"], "seed": spec["seed"],
            "steps": spec["steps"], "against": "the same chain with fp16 MMDiT packages", **figures}  # fmt: skip
