"""Config checks at parse time: each bad value fails with one line naming the key."""

import pytest
from conftest import new_workdir, snakemake, write_config


@pytest.mark.parametrize(
    "changes, expected",
    [
        ({"stage_sizes": [1, 2, 3]}, "'stage_sizes' sums to 6 but the transformer has 5 blocks"),
        ({"stage_sizes": [0, 3, 2]}, "'stage_sizes' holds 0"),
        ({"stage_sizes": []}, "'stage_sizes' is empty"),
        ({"conversion_target": "iOS12"}, "'conversion_target' is 'iOS12'"),
        ({"compiler": {"deployment_target": "17.0"}}, "'compiler.deployment_target' (17.0) is older"),
        ({"latent_size": [15, 16]}, "not a positive multiple of the patch size"),
        ({"latent_size": [64, 64]}, "beyond the positional embedding of model"),
        ({"batch_size": 2}, "config key 'batch_size': 2 is not one of [1]"),
        ({"compression": {"mmdit": {"mode": "int3"}}}, "config key 'compression.mmdit.mode'"),
    ],
)
def test_bad_config_fails_in_one_line(tmp_path, changes, expected):
    workdir = new_workdir(tmp_path)
    result = snakemake(workdir, "-n", config=write_config(workdir, "bad.yaml", **changes), check=False)
    assert result.returncode == 1
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and expected in errors[0], result.stderr[-2000:]
    assert "Traceback" not in result.stderr
