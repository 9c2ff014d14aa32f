"""Bad input fails with one line that names the file or key and the fix, before any job runs.

Most cases run the real parse-time check, `plan_models`, in-process on a schema-valid config
(Snakemake's own `validate` fills the defaults); Snakemake itself runs in
tests/workflow/test_refusals.py, where its wiring is what is tested. One test, or one
parametrize id, per case:

- stage sizes, unknown targets, a compiler target older than the conversion target, compression
  the conversion target cannot run, a per-artifact override of no folder entry, a bad latent
  size, a generated input outside output_root or of another preset than synthetic.preset, a downloads root outside the working directory:
  test_bad_config_value[<id>]; through Snakemake, with a built artifact left as it was:
  tests/workflow/test_refusals.py::test_parse_time_refusal_leaves_built_artifacts_untouched
  (and tests/unit/pipeline/test_config.py, which also holds config.py's compression table against coremltools)
- missing checkpoint, truncated or corrupt safetensors, another architecture, missing or extra
  tensors, a config that disagrees with the weights: test_bad_checkpoint[<id>]
- pickle checkpoints: test_pickle_checkpoint_is_refused_unread
- palettization without coremltools' exact k-means: test_palettes_without_exact_kmeans_are_refused
- missing or malformed tokenizer files: test_bad_tokenizer_files[<id>]; a tokenizer_2 unlike tokenizer:
  test_a_second_tokenizer_unlike_the_first_is_refused; a bad components folder under a config that also
  generates synthetic inputs (a file, broken tokenizer files, a missing folder; a broken generated one):
  tests/unit/pipeline/test_components_refusals.py, and through Snakemake with the build kept,
  tests/workflow/test_refusals.py::test_a_bad_components_folder_leaves_the_build_as_it_was
- an output folder that cannot be made: test_an_output_root_that_is_a_file; through Snakemake,
  tests/workflow/test_refusals.py::test_a_file_where_an_output_folder_must_be
- a full disk: test_full_disk_mid_write, test_full_disk_during_a_package_save, a full TMPDIR under
  coremltools: test_full_temporary_folder_under_coremltools_is_one_line (and tests/unit/inputs/test_checkpoint.py,
  the safetensors writer)
- a downloaded file whose sha256 differs from the pin:
  tests/unit/inputs/test_download.py::test_sha256_mismatch_refuses_and_deletes
"""

import json
import os
import resource
import shutil
import struct
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from harness import REPO, linear_model, new_workdir, only_error_line
from safetensors.torch import load_file, save_file
from snakemake.utils import validate

from sd3coreml import checksums
from sd3coreml.errors import PipelineError
from sd3coreml.pipeline.config import plan_models
from sd3coreml.pipeline.disk import require_creatable
from sd3coreml.synthetic.checkpoints import write_synthetic_transformer
from sd3coreml.synthetic.clip_vocabulary import write_sd3_tokenizers

TINY_CONFIG = str(REPO / "config" / "transformers" / "sd3-tiny.json")
INT4 = {"mode": "linear_symmetric", "nbits": 4, "granularity": "per_channel"}


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> Path:
    """A tiny diffusers-format transformer and a components folder with real-layout tokenizer files."""
    folder = tmp_path_factory.mktemp("inputs")
    write_synthetic_transformer("tiny", 4, folder / "tiny.safetensors", folder / "tiny.json")
    for name in ("text_encoder", "text_encoder_2", "vae"):
        (folder / "components" / name).mkdir(parents=True)
    write_sd3_tokenizers(folder / "components")
    return folder


@pytest.fixture
def workdir(tmp_path, monkeypatch, inputs) -> Path:
    """A scratch working directory (config paths are relative to it) holding copies of the inputs."""
    new_workdir(tmp_path)
    shutil.copytree(inputs / "components", tmp_path / "components")
    shutil.copy(inputs / "tiny.safetensors", tmp_path / "tiny.safetensors")
    monkeypatch.chdir(tmp_path)
    return tmp_path


def demo_config(**changes) -> dict:
    """config/demo.yaml (synthetic inputs, made by jobs under results/demo), changed, defaults filled."""
    config = {**yaml.safe_load((REPO / "config" / "demo.yaml").read_text()), **changes}
    validate(config, str(REPO / "config" / "schema.yaml"))  # fills the defaults, as the Snakefile does
    return config


def with_weights(path: str, config: str = TINY_CONFIG, **entry) -> dict:
    """One model read from files that exist, as a real build reads them."""
    model = {"4step": {"weights": path, "config": config, **entry}}
    config = demo_config(components="components", models=model)
    del config["synthetic"]
    return config


def refusal(config: dict) -> str:
    with pytest.raises(PipelineError) as error:
        plan_models(config)
    message = str(error.value)
    assert "\n" not in message
    return message


def test_the_good_configs_pass(workdir):
    assert list(plan_models(with_weights("tiny.safetensors"))) == ["4step"]
    assert list(plan_models(demo_config())) == ["4step", "2step"]
    assert list(plan_models(demo_config(compression={"mmdit": INT4}))) == ["4step", "2step"]  # iOS18 runs int4


def generated(path: str) -> dict:
    return {"models": {"4step": {"weights": path, "config": TINY_CONFIG}}}


IOS17 = {"conversion_target": "iOS17", "compiler": {"deployment_target": "17.0"}}
CONFIG_CASES = {
    "stage-sizes-wrong-sum": ({"stage_sizes": [1, 2, 3]}, "'stage_sizes' sums to 6 but the transformer has 5 blocks"),
    "stage-sizes-zero": ({"stage_sizes": [0, 3, 2]}, "'stage_sizes' holds 0; each stage size must be a positive"),
    "stage-sizes-negative": ({"stage_sizes": [-1, 4, 2]}, "'stage_sizes' holds -1"),
    "stage-sizes-fraction": ({"stage_sizes": [1.5, 2, 1.5]}, "'stage_sizes' holds 1.5"),
    "stage-sizes-text": ({"stage_sizes": [1, "2", 2]}, "'stage_sizes' holds '2'"),
    "stage-sizes-empty": ({"stage_sizes": []}, "'stage_sizes' is empty"),
    "stage-sizes-of-a-model": (
        {"models": {"4step": {**generated("results/demo/w.safetensors")["models"]["4step"], "stage_sizes": [2.5]}}},
        "config key 'models.4step.stage_sizes' holds 2.5",
    ),
    "conversion-target-unknown": ({"conversion_target": "iOS12"}, "'conversion_target' is 'iOS12'; use one of iOS16"),
    "compiler-target-malformed": ({"compiler": {"deployment_target": "banana"}}, "is 'banana', not a version"),
    "compiler-target-unknown": ({"compiler": {"deployment_target": "99.0"}}, "is '99.0', not an iOS release"),
    "compiler-target-older": (
        {"compiler": {"deployment_target": "17.4"}},
        "'compiler.deployment_target' (17.4) is older than conversion_target iOS18; raise it to at least 18.0",
    ),
    "compression-target-too-old": (
        {**IOS17, "compression": {"mmdit": INT4}},
        (
            "'compression.mmdit' (linear_symmetric, 4-bit) needs conversion_target iOS18 or newer (coremltools 9), "
            "but it is iOS17"
        ),
    ),
    "compression-override-unknown-entry": (
        {"compression": {"overrides": {"VAEDecoder": INT4}}},
        (
            "'compression.overrides.VAEDecoder' names no compressed folder entry; "
            "use MultiModalDiffusionTransformerConditioning, TextEncoder"
        ),
    ),
    "compression-override-stage-beyond-layout": (
        {"compression": {"overrides": {"MultiModalDiffusionTransformerStage4": INT4}}},
        "MultiModalDiffusionTransformerStage0..3",
    ),
    "compression-override-target-too-old": (
        {**IOS17, "compression": {"overrides": {"TextEncoder2": INT4}}},
        "'compression.overrides.TextEncoder2' (linear_symmetric, 4-bit) needs conversion_target iOS18",
    ),
    "compression-group-without-size": (
        {"compression": {"mmdit": {"mode": "palettize", "nbits": 4, "granularity": "per_grouped_channel"}}},
        "'compression.mmdit.group_size' must be a positive integer with per_grouped_channel",
    ),
    "latent-not-divisible": ({"latent_size": [15, 16]}, "'latent_size' holds 15, not a positive multiple of the patch"),
    "latent-beyond-pos-embed": ({"latent_size": [64, 64]}, "'latent_size' holds 64, beyond the positional embedding"),
    "generated-weights-elsewhere": (generated("elsewhere/w.safetensors"), "'models.4step.weights' (elsewhere/w."),
    "generated-weights-dot-dot": (generated("results/demo/../w.safetensors"), "lies outside output_root"),
    "generated-weights-absolute": (generated("/tmp/sd3coreml-no/w.safetensors"), "lies outside output_root"),
    "generated-components-elsewhere": (
        {"components": "results/c"},
        (
            "'components' (results/c) lies outside output_root (results/demo); synthetic inputs are written under "
            "output_root: use results/demo/checkpoints/c"
        ),
    ),
    "synthetic-preset-disagrees-with-weights": (
        {"synthetic": {"preset": "sd3-medium"}},
        (
            "'models.4step.weights' (results/demo/checkpoints/tiny-seed4.safetensors) names the 'tiny' preset but "
            "'synthetic.preset' is 'sd3-medium'; the file name decides what is generated: make the two agree"
        ),
    ),
    "synthetic-preset-disagrees-with-components": (
        {"components": "results/demo/checkpoints/sd3-medium-components-seed0"},
        "'components' (results/demo/checkpoints/sd3-medium-components-seed0) names the 'sd3-medium' preset",
    ),
    "downloads-root-absolute": ({"downloads": {"root": "/tmp/x"}}, "'downloads.root' is '/tmp/x'; download jobs"),
    "downloads-root-dot-dot": ({"downloads": {"root": "a/../../x"}}, "relative path without '..'"),
}


@pytest.mark.parametrize("changes, expected", CONFIG_CASES.values(), ids=CONFIG_CASES)
def test_bad_config_value(workdir, changes, expected):
    message = refusal(demo_config(**changes))
    assert message.startswith("config key '") and expected in message


def test_palettes_without_exact_kmeans_are_refused(workdir, monkeypatch):
    # Without its bundled exact k-means coremltools would silently fall back to a randomised one.
    monkeypatch.setattr("sd3coreml.compress.settings.exact_kmeans_installed", lambda: False)
    message = refusal(demo_config())
    assert message.startswith("config key 'compression.text_encoders': palettization needs coremltools' bundled exact")
    assert list(plan_models(demo_config(compression={"text_encoders": {"mode": "none"}})))


def saved(tensors: dict) -> dict:
    save_file(tensors, "w.safetensors")
    return with_weights("w.safetensors")


def changed(change) -> dict:
    """The tiny weights with `change` applied to their tensors."""
    tensors = load_file("tiny.safetensors")
    change(tensors)
    return saved(tensors)


def written(data: bytes) -> dict:
    Path("w.safetensors").write_bytes(data)
    return with_weights("w.safetensors")


def disagreeing_config() -> dict:
    Path("sd3-tiny-6.json").write_text(Path(TINY_CONFIG).read_text().replace('"num_layers": 5', '"num_layers": 6'))
    return with_weights("tiny.safetensors", config="sd3-tiny-6.json", stage_sizes=[6])


CHECKPOINT_CASES = {
    "missing": (lambda: with_weights("checkpoints/sd3.safetensors"), "config key 'models.4step.weights' (checkpoints"),
    "truncated": (
        lambda: written(Path("tiny.safetensors").read_bytes()[:100_000]),
        "w.safetensors: safetensors file is truncated; re-download it",
    ),
    "header-not-json": (
        lambda: written(struct.pack("<Q", 4) + b"{{{{" + bytes(64)),
        "w.safetensors: corrupt safetensors",
    ),
    "header-beyond-file": (lambda: written(struct.pack("<Q", 2**40) + bytes(64)), "w.safetensors: corrupt safetensors"),
    "shorter-than-a-header": (lambda: written(b"abc"), "w.safetensors: not a safetensors file (truncated header)"),
    "unet": (
        lambda: saved({"down_blocks.0.resnets.0.conv1.weight": torch.zeros(4, 4, 3, 3)}),
        "w.safetensors: not an SD3-family transformer (a UNet",
    ),
    "missing-tensor": (
        lambda: changed(lambda tensors: tensors.pop("transformer_blocks.2.attn.to_q.weight")),
        (
            f"w.safetensors: tensors do not match {TINY_CONFIG} (1 missing, 0 unexpected, e.g. missing "
            "['transformer_blocks.2.attn.to_q.weight'])"
        ),
    ),
    "extra-tensor": (
        lambda: changed(lambda tensors: tensors.update({"transformer_blocks.2.attn.extra.weight": torch.zeros(2)})),
        (
            f"w.safetensors: tensors do not match {TINY_CONFIG} (0 missing, 1 unexpected, e.g. unexpected "
            "['transformer_blocks.2.attn.extra.weight'])"
        ),
    ),
    "config-disagrees": (disagreeing_config, "tiny.safetensors: number of transformer_blocks is (5,) but sd3-tiny-6"),
}


@pytest.mark.parametrize("make_config, expected", CHECKPOINT_CASES.values(), ids=CHECKPOINT_CASES)
def test_bad_checkpoint(workdir, make_config, expected):
    assert refusal(make_config()).startswith(expected)


@pytest.mark.parametrize("suffix", [".bin", ".ckpt", ".pt"])
def test_pickle_checkpoint_is_refused_unread(workdir, suffix):
    # A pickle that runs `touch unpickled` when loaded.
    Path(f"model{suffix}").write_bytes(b"cos\nsystem\n(S'touch unpickled'\ntR.")
    message = refusal(with_weights(f"model{suffix}"))
    assert message.startswith(f"config key 'models.4step.weights' (model{suffix}) is a pickle checkpoint, refused")
    assert not Path("unpickled").exists()
    # Also one a job would make: the name alone decides.
    assert "is a pickle checkpoint" in refusal(demo_config(**generated(f"results/demo/checkpoints/x{suffix}")))


@pytest.mark.parametrize(
    "name, content, expected",
    [
        ("vocab.json", None, "vocab.json: missing"),
        ("vocab.json", '{"a": 0,', "vocab.json: not valid JSON"),
        ("vocab.json", '["<|startoftext|>", "<|endoftext|>"]', "vocab.json: not a JSON object of token -> id"),
        ("merges.txt", None, "merges.txt: missing"),
        ("merges.txt", "#version: 0.2\nab\nc d e\n", "merges.txt: not a BPE merges file"),
    ],
    ids=["vocab-missing", "vocab-not-json", "vocab-not-token-to-id", "merges-missing", "merges-malformed"],
)
def test_bad_tokenizer_files(workdir, name, content, expected):
    path = workdir / "components" / "tokenizer" / name
    if content is None:
        path.unlink()
    else:
        path.write_text(content)
    assert refusal(with_weights("tiny.safetensors")).startswith(f"components/tokenizer/{expected}")


@pytest.mark.parametrize("name", ["vocab.json", "merges.txt"])
def test_a_second_tokenizer_unlike_the_first_is_refused(workdir, name):
    """The app feeds both encoders from one vocab.json and merges.txt."""
    path = workdir / "components" / "tokenizer_2" / name
    text = path.read_text(encoding="utf-8")
    path.write_text(
        text.replace('"a</w>": 320', '"a</w>": 9') if name == "vocab.json" else text.replace("\ni n\n", "\n")
    )
    message = refusal(with_weights("tiny.safetensors"))
    assert message.startswith(f"components/tokenizer_2/{name}: differs from components/tokenizer/{name}")
    # Formatting alone is no difference: the same vocabulary, written otherwise.
    if name == "vocab.json":
        vocab = json.loads(text)
        path.write_text(json.dumps(vocab, indent=1, sort_keys=True))
        assert list(plan_models(with_weights("tiny.safetensors"))) == ["4step"]


def test_an_output_root_that_is_a_file(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    Path("results").write_text("")
    with pytest.raises(
        PipelineError, match=r"^results: a file is in the way of the folder results that results/demo/x "
    ):
        require_creatable(["results/demo/x"])


DISK_BYTES = 256 * 1024


@pytest.fixture
def small_disk(tmp_path):
    """A 256 KiB tmpfs (we run as root); else a plain folder and a 256 KiB file-size limit for the child."""
    disk = tmp_path / "disk"
    disk.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={DISK_BYTES}", "tmpfs", str(disk)], capture_output=True, check=False
    )
    yield disk, None if mounted.returncode == 0 else DISK_BYTES
    if mounted.returncode == 0:
        subprocess.run(["umount", str(disk)], check=True)


def run_out_of_room(command: list[str], limit: int | None) -> str:
    """Run a step on the small disk; its one error line."""

    def file_size_limit():
        if limit:  # Python ignores SIGXFSZ, so a write past the limit fails with EFBIG
            resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    result = subprocess.run(command, capture_output=True, check=False, text=True, preexec_fn=file_size_limit)
    line = only_error_line(result)
    assert ("disk full" if limit is None else "file too large") in line and "rerun" in line
    return line


def test_full_disk_mid_write(small_disk, inputs):
    disk, limit = small_disk
    out_dir = disk / "tokenizer"
    out_dir.mkdir()
    (out_dir / "vocab.json").write_bytes(b'{"built": "before"}')
    tokenizer = str(inputs / "components" / "tokenizer")
    command = [sys.executable, "-m", "sd3coreml", "copy-tokenizer", "--tokenizer", tokenizer, "--out-dir", str(out_dir)]
    line = run_out_of_room(command, limit)
    assert line.startswith(f"error: {out_dir}/vocab.json: ")
    assert (out_dir / "vocab.json").read_bytes() == b'{"built": "before"}'
    assert sorted(path.name for path in out_dir.iterdir()) == ["vocab.json"]  # no .vocab.tmp-PID.json left


def linear_package(path: Path, width: int) -> Path:
    """A one-linear fp16 package of width x width weights, saved as the pipeline saves packages."""
    from sd3coreml.convert.package import save_package

    save_package(linear_model(width), path)
    return path


def compress_command(source: Path, out: Path) -> list[str]:
    command = [sys.executable, "-m", "sd3coreml", "compress-package", "--package", str(source), "--out", str(out)]
    return [*command, "--compression", "int8_linear_symmetric_per_channel"]


def test_full_disk_during_a_package_save(tmpfs, tmp_path):
    """coremltools copies a package's files with shutil.copytree, which hides the errno; the step names it."""
    disk = tmpfs(DISK_BYTES)
    source = linear_package(tmp_path / "blocks0-1.fp16.mlpackage", 512)  # 512 KiB of fp16 weights
    out = disk / "blocks0-1.int8_linear_symmetric_per_channel.mlpackage"
    linear_package(out, 16)  # what an earlier build left there
    before = checksums.tree_sha256(out)
    line = run_out_of_room(compress_command(source, out), limit=None)
    assert line.startswith(f"error: {out}/Data/com.apple.CoreML/weights/weight.bin: ")
    assert checksums.tree_sha256(out) == before
    assert sorted(path.name for path in disk.iterdir()) == [out.name]  # no .NAME.tmp-PID.mlpackage left


def test_full_temporary_folder_under_coremltools_is_one_line(tmpfs, tmp_path):
    """coremltools writes the weights into TMPDIR first; its C++ writer says only "Unknown error"."""
    scratch = tmpfs(64 * 1024)
    source = linear_package(tmp_path / "blocks0-1.fp16.mlpackage", 512)
    out = tmp_path / "blocks0-1.int8_linear_symmetric_per_channel.mlpackage"
    env = {**os.environ, "TMPDIR": str(scratch)}
    result = subprocess.run(compress_command(source, out), capture_output=True, check=False, text=True, env=env)
    line = only_error_line(result)
    assert line.startswith(f"error: {scratch}: coremltools could not write a package's weights") and "TMPDIR" in line
    assert not out.exists() and sorted(path.name for path in tmp_path.iterdir() if "blocks" in path.name) == [
        source.name
    ]
