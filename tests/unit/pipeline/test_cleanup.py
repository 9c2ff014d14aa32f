"""cleanup: what no configured target references goes, inputs and referenced artifacts stay."""

from pathlib import Path

import pytest

from sd3coreml.errors import PipelineError
from sd3coreml.pipeline.cleanup import clean, unreferenced


def touch(path: Path, size: int = 4096) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"x" * size)
    return path


@pytest.fixture
def tree(tmp_path):
    root = tmp_path / "results"
    stage = root / "mmdit/m/iOS18/latent16x16"
    for name in ("blocks0-2.fp16.mlpackage", "blocks0-4.fp16.mlpackage"):
        touch(stage / name / "Data/weight.bin")
    touch(root / "fidelity/mmdit/m/iOS18/latent16x16/blocks0-4.fp16.json")
    touch(root / "checkpoints/tiny.safetensors")
    touch(root / "compiled/ios18.2/old.mlmodelc/model.mil")
    touch(root / "coremlsd3_m_packages/SHA256SUMS")
    touch(root / "coremlsd3_m_packages/Stage1.mlpackage/Data/weight.bin")
    touch(root / "logs/mmdit/m/iOS18/latent16x16/blocks0-4.log")
    keep = {stage / "blocks0-2.fp16.mlpackage", root / "coremlsd3_m_packages/SHA256SUMS"}
    return root, keep


def test_only_unreferenced_artifacts_are_found(tree):
    root, keep = tree
    found = {path.relative_to(root).as_posix() for path in unreferenced(root, keep)}
    # A family nothing references goes whole; a folder comes with its SHA256SUMS.
    assert found == {
        "mmdit/m/iOS18/latent16x16/blocks0-4.fp16.mlpackage",
        "fidelity",
        "compiled",
    }


def test_clean_removes_them_and_counts_the_bytes(tree, capsys):
    root, keep = tree
    summary = clean(root, keep, dry_run=False)
    assert summary == f"cleanup: 3 unreferenced artifacts, freed {3 * 4096 / 2**20:.1f} MiB ({root})"
    assert not (root / "mmdit/m/iOS18/latent16x16/blocks0-4.fp16.mlpackage").exists()
    for kept in ("checkpoints/tiny.safetensors", "logs/mmdit/m/iOS18/latent16x16/blocks0-4.log",
                 "coremlsd3_m_packages/Stage1.mlpackage/Data/weight.bin",
                 "mmdit/m/iOS18/latent16x16/blocks0-2.fp16.mlpackage/Data/weight.bin"):  # fmt: skip
        assert (root / kept).is_file()
    assert not [path for path in root.rglob(".*old-*")]
    assert "removed " in capsys.readouterr().out


def test_preview_removes_nothing(tree):
    root, keep = tree
    before = sorted(root.rglob("*"))
    assert "would free" in clean(root, keep, dry_run=True)
    assert sorted(root.rglob("*")) == before


def test_a_missing_root_is_one_line(tmp_path):
    with pytest.raises(PipelineError, match="no such output root"):
        clean(tmp_path / "nope", set(), dry_run=False)
