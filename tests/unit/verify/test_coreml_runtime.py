"""Core ML's calls: the macOS each package needs, and a child process that can die or hang harmlessly."""

import pytest
from harness import TESTS

from sd3coreml.sweep.device_profile import device_columns
from sd3coreml.verify.coreml_runtime import unavailable_reason
from sd3coreml.verify.isolated import describe, run_isolated


@pytest.fixture
def children(monkeypatch):
    monkeypatch.setenv("PYTHONPATH", str(TESTS))


@pytest.mark.parametrize(
    "platform, macos, spec_version, reason",
    [
        ("linux", None, 9, "needs macOS"),
        ("darwin", 14, 9, "needs macOS 15"),  # iOS18 packages: coremltools' own guard misses this
        ("darwin", 15, 9, None),
        ("darwin", 14, 8, None),  # iOS17 packages load on macOS 14
        ("darwin", 13, 8, "needs macOS 14"),
        ("darwin", 13, 7, None),
    ],
)
def test_the_macos_a_package_needs(platform, macos, spec_version, reason):
    assert unavailable_reason(spec_version, platform, macos) == reason


def test_a_child_returns_its_value(children):
    assert run_isolated("isolated_children:add", {"a": 2, "b": 3}, timeout_s=60).value == 5


def test_a_child_that_kills_itself_is_a_record_with_its_last_words(children):
    result = run_isolated("isolated_children:kill_itself", {}, timeout_s=60)
    assert not result.ok and result.failure["failure"] == "signal" and result.failure["signal"] == "SIGKILL"
    assert any("ANECCompile() FAILED" in line for line in result.failure["stderr"])
    assert describe(result.failure).startswith("signal SIGKILL after ")


def test_a_child_past_its_timeout_is_a_record(children):
    result = run_isolated("isolated_children:sleep_for", {"seconds": 30}, timeout_s=1)
    assert result.failure["failure"] == "timeout" and result.failure["seconds"] == 1
    assert describe(result.failure) == "no answer within 1 s"


def test_a_child_that_raises_is_a_record(children):
    result = run_isolated("isolated_children:fail", {}, timeout_s=60)
    assert result.failure["failure"] == "exit" and result.failure["exit_code"] == 1
    assert "RuntimeError: Core ML said no" in result.failure["stderr"][-1]


def test_the_sweep_columns_say_what_kept_core_ml_from_measuring():
    failed = {"package": "p", "failed": "signal SIGKILL after 2.0 s", "failure": "signal"}
    assert device_columns(failed)["predict_s"] == "failed: signal SIGKILL after 2.0 s"
    assert device_columns({"package": "p", "unavailable": "needs macOS 15"})["first_load_s"] == "needs macOS 15"
