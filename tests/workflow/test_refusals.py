"""Bad input through Snakemake itself: one `error:` line, before any job runs, and what was built stays.

The refusals themselves are tested in-process (tests/unit/pipeline/test_bad_input.py,
tests/unit/pipeline/test_config.py); these show the Snakefile's wiring brings them to the user.
"""

import re
import shutil
from pathlib import Path

import pytest
from harness import (
    DEMO_FOLDERS,
    JOB_HOOKS,
    copy_of_build,
    new_workdir,
    only_error_line,
    planned_jobs,
    snakemake,
    write_config,
)

JOB_LINE = re.compile(r"^(local)?rule \w+:", re.MULTILINE)


def assert_no_job_ran(result, workdir: Path):
    assert not JOB_LINE.search(result.stdout + result.stderr)
    assert not (workdir / "results" / "demo" / "logs").exists()
    assert not (workdir / "results" / "demo" / "checkpoints").exists()


@pytest.mark.parametrize(
    "changes, expected",
    [
        ({"stage_sizes": [1, 2, 3]}, "'stage_sizes' sums to 6 but the transformer has 5 blocks"),
        ({"batch_size": 2}, "config key 'batch_size': 2 is not one of [1]"),
    ],
)
def test_bad_config_fails_in_one_line(tmp_path, changes, expected):
    workdir = new_workdir(tmp_path)
    result = snakemake(workdir, "-n", config=write_config(workdir, "bad.yaml", **changes), check=False)
    assert expected in only_error_line(result)


def test_parse_time_refusal_leaves_built_artifacts_untouched(tmp_path):
    """Through Snakemake, a real run (not dry): one line, nothing run, what was built stays."""
    workdir = new_workdir(tmp_path)
    built = workdir / "results" / "demo" / "coremlsd3_4step_packages" / "SHA256SUMS"
    built.parent.mkdir(parents=True)
    built.write_bytes(b"built before\n")
    result = snakemake(workdir, "-c1", config=write_config(workdir, "bad.yaml", stage_sizes=[1.5, 2, 1.5]), check=False)
    assert "config key 'stage_sizes' holds 1.5" in only_error_line(result)
    assert built.read_bytes() == b"built before\n"
    assert_no_job_ran(result, workdir)


def test_a_file_where_an_output_folder_must_be(tmp_path):
    """Root runs these tests, so permissions cannot make a folder uncreatable; a file in its place does."""
    workdir = new_workdir(tmp_path)
    in_the_way = workdir / "results" / "demo" / "mmdit"
    in_the_way.parent.mkdir(parents=True)
    in_the_way.write_bytes(b"not a folder\n")
    result = snakemake(workdir, "-c1", "coremlsd3_4step_packages", check=False)
    line = only_error_line(result)
    assert line.startswith("error: results/demo/mmdit: a file is in the way of the folder results/demo/mmdit that ")
    assert line.endswith("needs; move or delete it")
    assert in_the_way.read_bytes() == b"not a folder\n"
    assert_no_job_ran(result, workdir)


def test_a_job_planned_with_more_memory_than_the_machine_has(tmp_path):
    """A 7 GB machine (psutil faked by the job hook) under the default profile's mem_mb=22000."""
    workdir = new_workdir(tmp_path)
    env = {"PYTHONPATH": str(JOB_HOOKS), "SD3COREML_TEST_PHYSICAL_MEMORY_MB": "7000"}
    result = snakemake(workdir, "-c1", "coremlsd3_4step_packages", env=env, check=False)
    assert only_error_line(result) == (
        "error: rule verify_vae_decoder (results/demo/fidelity/vae/iOS18/latent16x16/VAEDecoder.fp16.json) is "
        "planned with mem_mb=8000, more than this machine's 7000 MB of memory, where it would swap or be killed: "
        "run with --resources mem_mb=5000 app_chain=1 to hold every job to what this machine has (a job that truly "
        "needs more still swaps), or build on a machine with more memory"
    )
    assert_no_job_ran(result, workdir)


def file_times(root: Path) -> dict[str, tuple[int, int]]:
    return {str(path.relative_to(root)): (path.stat().st_mtime_ns, path.stat().st_size) for path in root.rglob("*")}


def test_a_bad_components_folder_leaves_the_build_as_it_was(demo_build, tmp_path):
    """Under the demo's synthetic config a job failing on the folder would first have removed the built
    tokenizer files, and the good config would then rebuild them: refused at parse time, nothing is lost."""
    workdir = copy_of_build(demo_build, tmp_path / "work")
    generated = workdir / "results" / "demo" / "checkpoints" / "tiny-components-seed0"
    (workdir / "a_file").write_text("not a folder\n")
    shutil.copytree(generated, workdir / "bad_vocab", copy_function=shutil.copy2)
    (workdir / "bad_vocab" / "tokenizer" / "vocab.json").write_text('{"a": 0,')
    shutil.copytree(generated, workdir / "no_merges", copy_function=shutil.copy2)
    (workdir / "no_merges" / "tokenizer" / "merges.txt").unlink()
    tokenizer_files = sorted((workdir / "results" / "demo" / "tokenizer").glob("*"))
    assert [path.name for path in tokenizer_files] == ["merges.txt", "vocab.json"]
    built = file_times(workdir / "results")

    for components, expected in [
        ("a_file", "a_file: a file, not a folder; 'components' must be an SD3 diffusers-layout folder"),
        ("bad_vocab", "bad_vocab/tokenizer/vocab.json: not valid JSON; restore CLIP's tokenizer/vocab.json"),
        ("no_merges", "no_merges/tokenizer/merges.txt: missing; the components folder needs tokenizer/merges.txt"),
    ]:
        config = write_config(workdir, f"{components}.yaml", components=components)
        result = snakemake(workdir, "-c1", *DEMO_FOLDERS, config=config, check=False)
        assert only_error_line(result).startswith(f"error: {expected}")
        assert not JOB_LINE.search(result.stdout + result.stderr)
        assert all(path.is_file() for path in tokenizer_files)
        assert file_times(workdir / "results") == built

    assert planned_jobs(snakemake(workdir, "-n", *DEMO_FOLDERS)) == {}
