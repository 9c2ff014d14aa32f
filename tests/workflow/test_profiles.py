"""profiles/: each one is a profile Snakemake accepts for this workflow, with the settings it promises."""

import pytest
import yaml
from harness import REPO, new_workdir, snakemake

PROFILES = REPO / "profiles"


@pytest.fixture(scope="module")
def scratch(tmp_path_factory):
    return new_workdir(tmp_path_factory.mktemp("profiles"))


def dry_run(workdir, profile, target="coremlsd3_4step_packages"):
    return snakemake(workdir, "--workflow-profile", str(PROFILES / profile), "-n", target)


def test_slurm_submits_jobs_with_the_default_resources(scratch):
    result = dry_run(scratch, "slurm")
    assert "runtime=120, cpus_per_task=1" in result.stdout
    # No partition named: many clusters have no `cpu` one; the plugin takes the cluster's default.
    assert "slurm_partition" not in result.stdout
    assert yaml.safe_load((PROFILES / "slurm" / "config.yaml").read_text())["executor"] == "slurm"


def test_mac_profile_plans_the_sweep_and_keeps_one_neural_engine(scratch):
    result = dry_run(scratch, "mac", "sweep")
    assert "sweep_summary" in result.stdout
    settings = yaml.safe_load((PROFILES / "mac" / "config.yaml").read_text())
    # The params trigger stays: a changed bar, seed or compiler setting must rerun its jobs.
    assert "neural_engine=1" in settings["resources"] and "rerun-triggers" not in settings


def planned_threads(stdout: str) -> dict[str, set[int]]:
    """Rule name -> the thread counts its planned jobs got, from a dry run (which lists threads above one)."""
    threads, rule = {}, None
    for line in stdout.splitlines():
        if line.startswith(("rule ", "localrule ")):
            rule = line.split()[1].rstrip(":")
        elif line.strip().startswith("threads:") and rule:
            threads.setdefault(rule, set()).add(int(line.split(":")[1]))
    return threads


def test_mac_profile_gives_palettes_per_tensor_two_threads_and_nothing_else(scratch):
    mac = planned_threads(dry_run(scratch, "mac").stdout)
    assert mac == {"palettize_per_tensor": {2}}
    assert planned_threads(snakemake(scratch, "-n", "coremlsd3_4step_packages").stdout) == {}


def test_full_scale_profile_gives_two_threads_to_the_long_path_only(scratch):
    full_scale = planned_threads(dry_run(scratch, "full-scale").stdout)
    assert full_scale == {"palettize_per_tensor": {2}, "verify_text_encoder": {2}, "verify_vae_decoder": {2}}
    settings = yaml.safe_load((PROFILES / "full-scale" / "config.yaml").read_text())
    default = yaml.safe_load((PROFILES / "default" / "config.yaml").read_text())
    assert settings["resources"] == default["resources"]


def test_default_profile_caps_memory_for_a_24_gb_machine():
    # Every other test's Snakemake run reads this profile; here only what it promises.
    settings = yaml.safe_load((PROFILES / "default" / "config.yaml").read_text())
    assert settings["resources"] == ["mem_mb=22000", "app_chain=1"]


def test_a_broken_profile_is_refused(scratch, tmp_path):
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "config.yaml").write_text("executor: no-such-executor\n")
    result = snakemake(scratch, "--workflow-profile", str(broken), "-n", "coremlsd3_4step_packages", check=False)
    assert result.returncode != 0
