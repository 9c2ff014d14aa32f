"""PSNR as Apple's converter measures it, precision classes, and the report's verdict."""

import json
import math

import numpy as np
import pytest

from sd3coreml.pipeline.artifacts import setting_of_package
from sd3coreml.errors import PipelineError
from sd3coreml.verify.measure import psnr
from sd3coreml.verify.report import CoreMLPolicy, report_rows, write_report

BARS = {"fp16": 60, "int8": 35, "int4": 25, "palettized": 25}


def test_psnr_peak_is_max_abs_reference():
    reference = np.array([0.0, -4.0, 2.0, 1.0])
    candidate = reference + np.array([0.0, 0.0, 0.0, 0.04])  # mse = 4e-4
    assert psnr(reference, candidate) == pytest.approx(20 * math.log10(4.0 / 0.02))


def test_psnr_of_equal_arrays_is_infinite_and_of_a_zero_reference_hopeless():
    assert psnr(np.ones(3), np.ones(3)) == math.inf
    assert psnr(np.zeros(3), np.ones(3)) == -math.inf


def test_psnr_refuses_a_shape_mismatch():
    with pytest.raises(ValueError, match="shape"):
        psnr(np.zeros((2, 3)), np.zeros((3, 2)))


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("blocks0-4.fp16.mlpackage", "fp16"),
        ("blocks0-4.int8_linear_symmetric_per_channel.mlpackage", "int8"),
        ("TextEncoder2.palettize6_per_tensor.mlpackage", "palettized"),
        ("VAEDecoder.fp16.mlpackage", "fp16"),
    ],
)
def test_precision_class(name, expected):
    assert setting_of_package(f"results/x/{name}").precision == expected


def measurement(tmp_path, name, packages):
    path = tmp_path / f"{name}.json"
    path.write_text(json.dumps({"reference": "r", "seed": 0, "packages": packages}))
    return path


def package(name, precision, psnr_db):
    return {"package": name, "precision": precision, "executor": {"out": {"psnr_db": psnr_db}}}


def in_coreml(name, precision, coreml, units="CPU_AND_NE"):
    """A package's record in a Core ML measurement (measure.measure_package with runner `coreml`)."""
    return {"package": name, "precision": precision, "coreml": coreml,
            "compute_units": None if isinstance(coreml, str) else units}  # fmt: skip


def test_report_passes_and_writes_a_table(tmp_path):
    measurements = {
        "MultiModalDiffusionTransformerStage1": measurement(
            tmp_path, "a", [package("a.fp16.mlpackage", "fp16", 71.0), package("a.int8.mlpackage", "int8", 40.2)]
        ),
        "TextEncoder": measurement(tmp_path, "b", [package("b.fp16.mlpackage", "fp16", "inf")]),
    }
    write_report(measurements, BARS, tmp_path / "fidelity.json", tmp_path / "fidelity.md")
    report = json.loads((tmp_path / "fidelity.json").read_text())
    assert report["passed"] and len(report["outputs"]) == 3
    table = (tmp_path / "fidelity.md").read_text()
    assert "| MultiModalDiffusionTransformerStage1 | int8 | out | 40.2 | 35 | - | 30 | ok |" in table
    # No Core ML measurement planned (off macOS): nothing ran, and the table says why, naming no units.
    assert table.endswith("Core ML prediction: needs macOS.\n") and "CPU_AND_NE" not in table
    assert {row["coreml_compute_units"] for row in report["outputs"]} == {None}


def test_report_fails_naming_package_output_and_figure(tmp_path):
    measurements = {
        "MultiModalDiffusionTransformerStage2": measurement(
            tmp_path, "a", [package("mmdit/blocks1-3.int8_x.mlpackage", "int8", 21.37)]
        )
    }
    with pytest.raises(PipelineError) as failure:
        write_report(measurements, BARS, tmp_path / "fidelity.json", tmp_path / "fidelity.md")
    message = str(failure.value)
    assert "mmdit/blocks1-3.int8_x.mlpackage" in message and "'out'" in message and "21.4 dB" in message
    assert "35 dB" in message and "\n" not in message


def on_mac(tmp_path, coreml, units="CPU_AND_NE") -> tuple[dict, dict]:
    """An int8 package measured on a Mac: the executor at 44 dB, Core ML as recorded; (executor's, Core ML's)."""
    entry = "MultiModalDiffusionTransformerStage1"
    executor = {entry: measurement(tmp_path, "a", [package("a.int8.mlpackage", "int8", 44.0)])}
    return executor, {entry: measurement(tmp_path, "a.coreml", [in_coreml("a.int8.mlpackage", "int8", coreml, units)])}


def judged(tmp_path, coreml, policy) -> dict:
    executor, measured = on_mac(tmp_path, coreml)
    return report_rows(executor, BARS, policy, measured)[0]


@pytest.mark.parametrize(
    "coreml, enforce, passed, decided_by",
    [
        ({"out": {"psnr_db": 31.5}}, False, True, "MIL executor; Core ML not enforced"),
        ({"out": {"psnr_db": 31.5}}, True, False, "Core ML"),
        ({"out": {"psnr_db": 41.0}}, True, True, "MIL executor and Core ML"),
        (
            {"failed": "signal SIGKILL after 2.1 s", "failure": "signal"},
            False,
            True,
            "MIL executor; Core ML not enforced",
        ),
        ({"failed": "signal SIGKILL after 2.1 s", "failure": "signal"}, True, False, "Core ML"),
        ("needs macOS 15", True, True, "MIL executor"),
    ],
)
def test_core_ml_figures_count_under_their_own_bar_only_when_enforced(tmp_path, coreml, enforce, passed, decided_by):
    row = judged(tmp_path, coreml, CoreMLPolicy(min_psnr_db=40.0, enforce=enforce))
    assert (row["passed"], row["decided_by"]) == (passed, decided_by)


def test_an_enforced_core_ml_figure_fails_the_report_naming_its_runner(tmp_path):
    executor, coreml = on_mac(tmp_path, {"out": {"psnr_db": 31.5}})
    with pytest.raises(PipelineError, match=r"has PSNR 31\.5 dB in Core ML, under the Core ML bar of 40 dB"):
        write_report(executor, BARS, tmp_path / "f.json", tmp_path / "f.md", CoreMLPolicy(40.0, enforce=True), coreml)
    assert "| 44.0 | 35 | 31.5 | 40 | **FAIL** | Core ML |" in (tmp_path / "f.md").read_text()


@pytest.mark.parametrize(
    "coreml, units, summary",
    [
        ({"out": {"psnr_db": 41.0}}, "CPU_ONLY", "Core ML prediction (CPU_ONLY): measured."),
        ({"out": {"psnr_db": 41.0}}, "CPU_AND_NE", "Core ML prediction (CPU_AND_NE): measured."),
        ({"failed": "signal SIGKILL after 2.1 s", "failure": "signal"}, "ALL", "Core ML prediction (ALL): failed."),
        ("needs macOS 15", "CPU_AND_NE", "Core ML prediction: needs macOS 15."),
    ],
)
def test_the_table_prints_the_compute_units_core_ml_ran_under(tmp_path, coreml, units, summary):
    """Finding: the table said CPU_AND_NE whatever ran. It says the units each Core ML measurement
    recorded, and none where Core ML did not run."""
    executor, measured = on_mac(tmp_path, coreml, units)
    write_report(executor, BARS, tmp_path / "f.json", tmp_path / "f.md", CoreMLPolicy(30.0), measured)
    assert (tmp_path / "f.md").read_text().endswith(f"\n{summary}\n")
    row = json.loads((tmp_path / "f.json").read_text())["outputs"][0]
    assert row["coreml_compute_units"] == (None if isinstance(coreml, str) else units)


def test_units_differing_between_measurements_are_each_named(tmp_path):
    executor, ne = on_mac(tmp_path, {"out": {"psnr_db": 41.0}}, "CPU_AND_NE")
    entry = "TextEncoder"
    executor[entry] = measurement(tmp_path, "b", [package("b.fp16.mlpackage", "fp16", 80.0)])
    cpu_only = in_coreml("b.fp16.mlpackage", "fp16", {"out": {"psnr_db": 90.0}}, "CPU_ONLY")
    cpu = {entry: measurement(tmp_path, "b.coreml", [cpu_only])}
    write_report(executor, BARS, tmp_path / "f.json", tmp_path / "f.md", CoreMLPolicy(30.0), {**ne, **cpu})
    assert (tmp_path / "f.md").read_text().endswith(
        "\nCore ML prediction (CPU_AND_NE): measured. Core ML prediction (CPU_ONLY): measured.\n"
    )


def test_a_package_measured_on_a_mac_records_the_units_it_ran_under(monkeypatch):
    from sd3coreml.verify import coreml_runtime, measure

    class Check:
        inputs, reference = {}, {"out": np.ones(3)}

    monkeypatch.setattr(coreml_runtime, "isolated_predict", lambda package, inputs, units: {"out": np.ones(3)})
    record = measure.measure_package("x/a.fp16.mlpackage", Check, "coreml", "CPU_ONLY")
    assert record["compute_units"] == "CPU_ONLY" and record["coreml"]["out"]["psnr_db"] == "inf"
    monkeypatch.setattr(coreml_runtime, "isolated_predict", lambda package, inputs, units: "needs macOS 15")
    record = measure.measure_package("x/a.fp16.mlpackage", Check, "coreml", "CPU_ONLY")
    assert record["compute_units"] is None and record["coreml"] == "needs macOS 15"


def test_report_needs_a_bar_for_each_precision(tmp_path):
    measurements = {"X": measurement(tmp_path, "a", [package("a.int4.mlpackage", "int4", 30.0)])}
    with pytest.raises(PipelineError, match="fidelity.min_psnr_db"):
        write_report(measurements, {"fp16": 60}, tmp_path / "fidelity.json", tmp_path / "fidelity.md")
