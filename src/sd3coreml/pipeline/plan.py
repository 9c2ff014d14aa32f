"""From config to plan: stage ranges and the content-derived names of every artifact.

An artifact's path says what determines its content (model, block range, head, latent
size, conversion target, precision), never its position in one layout, so two layouts that
share a block range share the file and a stage-size change replans only what changed.
"""

import json
import re
from dataclasses import dataclass
from pathlib import Path

from sd3coreml.compress.settings import entry_compression
from sd3coreml.contract import CLIENT, TEXT_ENCODERS, TOKENIZER_FILES
from sd3coreml.contract import CONDITIONING as CONTRACT_CONDITIONING
from sd3coreml.contract import STAGE as CONTRACT_STAGE
from sd3coreml.errors import PipelineError


@dataclass(frozen=True)
class BlockRange:
    start: int
    end: int
    has_head: bool

    @property
    def slug(self) -> str:
        return f"blocks{self.start}-{self.end}" + ("_head" if self.has_head else "")

    @classmethod
    def from_slug(cls, slug: str) -> "BlockRange | None":
        """The range an artifact name holds (`blocks4-8`, `blocks20-24_head`), or None."""
        named = re.fullmatch(r"blocks(\d+)-(\d+)(_head)?", slug)
        return cls(int(named[1]), int(named[2]), bool(named[3])) if named else None


def stage_ranges(stage_sizes: list[int], depth: int, key: str = "stage_sizes") -> list[BlockRange]:
    """Block ranges of Stage1..N; the sizes must be positive integers summing to the depth."""
    if not stage_sizes:
        raise PipelineError(f"config key '{key}' is empty; give block counts summing to {depth}")
    for size in stage_sizes:
        if isinstance(size, bool) or not isinstance(size, int) or size <= 0:
            raise PipelineError(f"config key '{key}' holds {size!r}; each stage size must be a positive integer")
    if sum(stage_sizes) != depth:
        raise PipelineError(
            f"config key '{key}' sums to {sum(stage_sizes)} but the transformer has {depth} blocks; "
            f"make the sizes sum to {depth}"
        )
    ranges, start = [], 0
    for size in stage_sizes:
        ranges.append(BlockRange(start, start + size, has_head=start + size == depth))
        start += size
    return ranges


def entry_settings(ranges: list[BlockRange], config: dict) -> dict[str, dict]:
    """Contract name (without suffix) -> the config values that shaped that folder entry.

    Recorded in every folder's manifest.json, so a reader sees what each file was made from.
    """
    target, latent, compression = config["conversion_target"], config["latent_size"], config["compression"]

    def mmdit(entry: str) -> dict:
        settings = {"conversion_target": target, "source": "transformer_weights"}
        return {**settings, "compression": entry_compression(compression, entry, "mmdit")}

    settings = {
        name: {
            "conversion_target": target,
            "compression": entry_compression(compression, name, "text_encoders"),
            "source": f"components/{folder}",
        }
        for name, folder in TEXT_ENCODERS.items()
    }
    settings["VAEDecoder"] = {"conversion_target": target, "source": "components/vae", "latent_size": latent}
    settings[CONTRACT_CONDITIONING] = mmdit(CONTRACT_CONDITIONING)
    stage0 = CONTRACT_STAGE.format(index=0)
    settings[stage0] = {**mmdit(stage0), "latent_size": latent}
    for index, block_range in enumerate(ranges, 1):
        entry = CONTRACT_STAGE.format(index=index)
        blocks = {"blocks": [block_range.start, block_range.end], "head": block_range.has_head}
        settings[entry] = {**mmdit(entry), "latent_size": latent, **blocks}
    settings.update({name: {"source": "components/tokenizer"} for name in TOKENIZER_FILES})
    return settings


def manifest_request(model, config: dict, toolchain: dict, kind: str, compiler: dict | None = None) -> dict:
    """What shaped a folder, recorded in its manifest.json: no host paths, no times.

    `model` is the model's plan (config.ModelPlan): its key, block ranges and input files;
    `compiler` the compiler settings of an app folder (assemble-folder adds its versions).
    """
    compiled = {"compiler": {key: compiler[key] for key in ("command", "deployment_target")}} if compiler else {}
    return {
        **compiled,
        "kind": kind,
        "client": CLIENT,
        "model": model.key,
        "config": {
            "stage_sizes": [r.end - r.start for r in model.ranges],
            "stage_block_ranges": [[r.start, r.end] for r in model.ranges],
            "latent_size": config["latent_size"],
            "batch_size": config["batch_size"],
            "conversion_target": config["conversion_target"],
            "compression": config["compression"],
        },
        "artifacts": entry_settings(model.ranges, config),
        "toolchain": toolchain,
        "input_files": {
            "transformer_weights": str(model.weights),
            "transformer_config": str(model.config_path),
            "components": config["components"],
        },
    }


def folder_spec(entries: dict, manifest: dict, packages: dict | None = None) -> str:
    """The JSON `assemble-folder` reads: entries, manifest and (app folders) the packages compiled."""
    spec = {"entries": entries, "manifest": manifest, **({"packages": packages} if packages else {})}
    return json.dumps(spec, sort_keys=True)


def assemble_spec(artifacts, model, config: dict, toolchain: dict, kind: str) -> str:
    """What `assemble-folder` reads for one model's folder of `kind` (packages or app)."""
    entries = artifacts.folder_entries(model.key, model.ranges, kind)
    if kind == "packages":
        return folder_spec(entries, manifest_request(model, config, toolchain, kind))
    manifest = manifest_request(model, config, toolchain, kind, config["compiler"])
    return folder_spec(entries, manifest, artifacts.compiled_from(model.key, model.ranges))


def measurement_flags(measurements: dict[str, str]) -> str:
    """fidelity-report's arguments: one `--measurement NAME=PATH` per folder entry."""
    return " ".join(f"--measurement {name}={path}" for name, path in measurements.items())


def end_to_end_bar(config: dict, model: str) -> float:
    """The end-to-end check's bar of one model: its own, else fidelity's."""
    return config["models"][model].get("end_to_end_min_psnr_db", config["fidelity"]["end_to_end_min_psnr_db"])


def referenced_targets(models: dict, sweep) -> list[str]:
    """What a user of this config can ask for: its artifacts are what cleanup keeps."""
    folders = [f"coremlsd3_{model}{suffix}" for model in models for suffix in ("_packages", "")]
    return folders + ["verify"] + (["sweep"] if sweep else [])


def coreml_policy_flags(config: dict) -> str:
    """fidelity-report's and end-to-end's flags for Core ML's own bar."""
    fidelity = config["fidelity"]
    return f"--coreml-min-psnr-db {fidelity['coreml_min_psnr_db']}" + (" --enforce-coreml" * fidelity["enforce_coreml"])


def end_to_end_mem_mb(weights: Path) -> int:
    """The end-to-end job's memory: measured at SD3 Medium size, 16.7 GiB peak for 4.2 GB of fp16
    weights (the reference holds them in fp32 beside the packages'); before they exist, that size."""
    return max(2000, int(4.4 * weights.stat().st_size / 2**20)) if weights.exists() else 18000
