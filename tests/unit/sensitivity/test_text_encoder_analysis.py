"""The text encoders' sensitivity: calibration on the prompts, each encoder's weights palettized
alone with the effect counted at the MMDiT's inputs, and one budget over both encoders (on the
tiny synthetic components; the pipeline's chain of it runs in tests/demo)."""

import math

import numpy as np
import pytest
import torch

from sd3coreml.errors import PipelineError
from sd3coreml.sensitivity.budget import curves_of, recipe_from_budget
from sd3coreml.sensitivity.calibration import capture_text_calibration, read_encoder_calibration
from sd3coreml.sensitivity.text_encoders import analyse_text_encoder, joint_effect
from sd3coreml.synthetic.checkpoints import write_synthetic_components

PROMPTS = ("a photo of a cat", "a red lighthouse at dawn", "ramen")
WIDTHS = [1, 2, 4, 6]
# In the tiny CLIPs only the MLP's weights (256 x 64, 192 x 96) are over the 10,000 values palettes need.
FC1 = "text_model.encoder.layers.0.mlp.fc1.weight"


@pytest.fixture(scope="module")
def calibrated(tmp_path_factory):
    root = tmp_path_factory.mktemp("text")
    write_synthetic_components("tiny", 0, root / "components")
    capture_text_calibration(root / "components", PROMPTS, root / "calibration")
    return root / "components", root / "calibration"


@pytest.fixture(scope="module")
def records(calibrated):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return {entry: analyse_text_encoder(*calibrated, entry, WIDTHS, 10_000, [4, 2], 2, 1)
                for entry in ("TextEncoder", "TextEncoder2")}  # fmt: skip
    finally:
        torch.set_num_threads(threads)


def test_the_calibration_holds_the_apps_ids_and_each_encoders_outputs(calibrated):
    _, calibration = calibrated
    clip_l, clip_g = (read_encoder_calibration(calibration, entry) for entry in ("TextEncoder", "TextEncoder2"))
    assert clip_l["input_ids"].shape == clip_g["input_ids"].shape == (3, 77)
    # The app pads CLIP-L with its end token and CLIP-G with id 0 ("!"): the same prompt, other ids.
    assert clip_l["input_ids"][2, -1] == 49407 and clip_g["input_ids"][2, -1] == 0
    assert clip_l["hidden_embeds"].shape == (3, 77, 64) and clip_g["pooled_outputs"].shape == (3, 96)


def test_each_encoder_is_analysed_under_its_checkpoint_names_and_prediction_follows_measurement(records):
    assert sorted(records["TextEncoder"]["weights"]) == [
        f"text_model.encoder.layers.{layer}.mlp.{fc}.weight" for layer in (0, 1) for fc in ("fc1", "fc2")
    ]
    for record in records.values():
        for weight in record["weights"].values():
            effects = [weight["curve"][str(width)]["effect"] for width in WIDTHS]
            assert effects == sorted(effects, reverse=True) and effects[-1] > 0
            # The 4-bit probe sets the transfer; the 2-bit one checks the prediction.
            assert weight["measured"]["4"] == weight["curve"]["4"]["effect"]
            assert 0.5 < weight["curve"]["2"]["effect"] / weight["measured"]["2"] < 2


def test_the_effect_sums_each_embeddings_noise_over_both_encoders_energy():
    reference = [[torch.ones(1, 2, 3), torch.ones(1, 4)]]
    candidate = [[torch.ones(1, 2, 3) * 1.5, torch.ones(1, 4)]]
    # 6 values off by 0.5 in the tokens (energy 12 with the other encoder's), none in the pooled.
    assert joint_effect((12.0, 8.0))(reference, candidate) == pytest.approx(6 * 0.25 / 12)
    candidate[0][1] = torch.zeros(1, 4)
    assert joint_effect((12.0, 8.0))(reference, candidate) == pytest.approx(1.5 / 12 + 4 / 8)


def test_one_budget_spans_both_encoders_whose_tensors_share_names(records):
    curves = curves_of(list(records.values()))
    assert f"TextEncoder/{FC1}" in curves and f"TextEncoder2/{FC1}" in curves
    recipes, report = recipe_from_budget_of(records, "bits_per_weight=5")
    assert sorted(recipes) == ["TextEncoder", "TextEncoder2"]
    assert all(FC1 in recipe["weights"] for recipe in recipes.values())
    assert report["recipe"]["bits_per_weight"] <= 5 and report["pieces"] == ["TextEncoder", "TextEncoder2"]
    widths = {entry: {w["nbits"] for w in recipe["weights"].values()} for entry, recipe in recipes.items()}
    assert len(set.union(*widths.values())) > 1, "a recipe counts only if it differs from every uniform mode"
    # The same tensor name twice among the transformer's pieces is a mistake, not two encoders.
    for record in records.values():
        record_copy = {**record, "piece": "block0"}
        with pytest.raises(PipelineError, match=f"^weight {FC1.replace('.', '[.]')} is in two analyses"):
            curves_of([record_copy, {**record_copy, "piece": "block1"}])
        break


def recipe_from_budget_of(records, budget):
    import json
    import tempfile
    from pathlib import Path

    with tempfile.TemporaryDirectory() as folder:
        paths = []
        for entry, record in records.items():
            paths.append(Path(folder) / f"{entry}.json")
            paths[-1].write_text(json.dumps(record))
        return recipe_from_budget(paths, budget)


def test_a_weight_holding_inf_is_refused_by_name(calibrated, tmp_path):
    import shutil

    from safetensors.torch import load_file, save_file

    components, calibration = calibrated
    broken = tmp_path / "components"
    shutil.copytree(components, broken)
    path = broken / "text_encoder" / "model.safetensors"
    tensors = load_file(str(path))
    tensors[FC1][3, 5] = math.inf
    save_file(tensors, str(path))
    with pytest.raises(PipelineError, match=f"^tensor {FC1.replace('.', '[.]')} holds inf or NaN as fp16"):
        analyse_text_encoder(broken, calibration, "TextEncoder", WIDTHS, 10_000, [4], 1, 1)
    assert np.isfinite(read_encoder_calibration(calibration, "TextEncoder")["hidden_embeds"]).all()
