"""Values the rules hand their jobs that are not paths: bars, policies, memory.

Each is read from the config (and, for memory, from an input's size) at parse time.
"""

from pathlib import Path

from sd3coreml.compress.settings import fidelity_bars
from sd3coreml.pipeline.artifacts import ATTENTION_FIELDS, folder_name
from sd3coreml.step_spec import write_spec


def piece_args(wildcards: dict) -> str:
    """An MMDiT piece's own arguments to its conversion and check steps, from its path's wildcards."""
    blocks = f"--start {wildcards['start']} --end {wildcards['end']} " if "start" in wildcards else ""
    latent = f"--latent {wildcards['height']} {wildcards['width']}" if "height" in wildcards else ""
    return (blocks + latent).strip()


def attention_args(wildcards: dict) -> str:
    """A block range's attention for its conversion, from its path: none for the default (joint)."""
    field = wildcards.get("attention", "")
    return f"--attention {ATTENTION_FIELDS[field]}" if field else ""


def fidelity_report_spec(
    measurements: dict[str, str], config: dict, compression, coreml_measurements: dict | None = None
) -> str:
    """What fidelity-report reads: each folder entry's measurement and, where planned (macOS),
    its Core ML measurement; the bars (`compression`'s recipes have their own), Core ML's own bar."""
    fidelity = config["fidelity"]
    coreml = {"min_psnr_db": fidelity["coreml_min_psnr_db"], "enforce": fidelity["enforce_coreml"]}
    thresholds = fidelity_bars(fidelity["min_psnr_db"], compression.settings())
    spec = {"measurements": measurements, "thresholds": thresholds, "coreml": coreml}
    return write_spec({**spec, "coreml_measurements": coreml_measurements} if coreml_measurements else spec)


def end_to_end_bar(config: dict, model: str) -> float:
    """The end-to-end check's bar of one model: its own, else fidelity's."""
    return config["models"][model].get("end_to_end_min_psnr_db", config["fidelity"]["end_to_end_min_psnr_db"])


def referenced_targets(models: dict, sweep) -> list[str]:
    """What a user of this config can ask for: its artifacts are what cleanup keeps."""
    folders = [folder_name(model, kind) for model in models for kind in ("packages", "app")]
    return folders + ["verify"] + (["sweep"] if sweep else [])


def app_chain_mem_mb(packages: list) -> int:
    """A sweep's end-to-end chain (the executor over one folder's packages): measured at SD3 Medium
    size, 7.9 GB peak over 4.8 GB of packages (fp16 MMDiT), 3.4-4.1 GB over 2.7-2.9 GB (compressed)."""
    from sd3coreml.checksums import tree_bytes

    return max(1000, int(2 * sum(tree_bytes(Path(package)) for package in packages if Path(package).exists()) / 2**20))


def end_to_end_mem_mb(weights: Path) -> int:
    """The end-to-end job's memory: measured at SD3 Medium size, 16.7 GiB peak for 4.2 GB of fp16
    weights (the reference holds them in fp32 beside the packages'); before they exist, that size."""
    return max(2000, int(4.4 * weights.stat().st_size / 2**20)) if weights.exists() else 18000
