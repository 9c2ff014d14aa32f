"""A hand-made Hugging Face cache for downloads with HF_HUB_OFFLINE=1 (no network): a repo of distilled
weights and SD3's components, each at one commit. conftest.py's `hub_cache` fixture switches huggingface_hub to it."""

import hashlib
import os
from pathlib import Path

MODEL_REPO = "Owner/MobileDiffuser-test"
SD3_REPO = "stabilityai/stable-diffusion-3-medium-diffusers"
COMMIT = "0123456789abcdef0123456789abcdef01234567"
WEIGHTS = "checkpoints/sd3-medium-4step.safetensors"
SD3_FILES = {
    "text_encoder/config.json": b'{"hidden_size": 768}\n',
    "text_encoder_2/config.json": b'{"hidden_size": 1280}\n',
    "vae/config.json": b'{"latent_channels": 16}\n',
    "tokenizer/vocab.json": b'{"a": 0}\n',
    "tokenizer/merges.txt": b"#version: 0.2\na b\n",
}
# In the repo, never to be placed: the snapshot takes the pinned files only.
UNPINNED = {"text_encoder_3/config.json": b"{}\n", "transformer/config.json": b"{}\n"}


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def fill_cache(cache: Path, repo: str, files: dict[str, bytes]) -> dict[str, str]:
    """huggingface_hub's cache layout for `repo` at COMMIT; returns {path: sha256}."""
    storage = cache / f"models--{repo.replace('/', '--')}"
    (storage / "refs").mkdir(parents=True, exist_ok=True)
    (storage / "refs" / "main").write_text(COMMIT)
    for path, data in files.items():
        blob = storage / "blobs" / sha256(data)
        blob.parent.mkdir(parents=True, exist_ok=True)
        blob.write_bytes(data)
        pointer = storage / "snapshots" / COMMIT / path
        pointer.parent.mkdir(parents=True, exist_ok=True)
        pointer.symlink_to(os.path.relpath(blob, pointer.parent))
    return {path: sha256(data) for path, data in files.items()}
