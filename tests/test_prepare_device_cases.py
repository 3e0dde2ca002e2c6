"""tests.prepare_device_cases, the child-process runner of the compiled ops' device checks (whose
CUDA cases run in test_prepare_cuda.py): on any machine, the CPU kernel's own check and one of
torch's raise their errors through it, and a case that crashes its child is reported by name
(with its C frames where gdb is installed) while the cases after it still run."""
import shutil

import pytest

from . import prepare_device_cases as device_cases

pytestmark = pytest.mark.subprocess


def test_the_controls_raise_their_errors_in_a_child():
    """The CPU kernel's own check and one of torch's: the errors beside the CUDA cases."""
    outcomes = device_cases.run(["cpu-control", "torch-control-cpu"], 2)
    assert list(outcomes) == ["cpu-control", "torch-control-cpu"], outcomes
    assert all(outcome.startswith("raised: ") for outcome in outcomes.values()), outcomes
    assert device_cases.failures(outcomes) == []


def test_the_cuda_binding_raises_its_error_without_a_gpu():
    """The CUDA kernel's binding, reached with CPU tensors through its dispatch key: its table is
    built and its device check raises, in a CUDA build on any machine, GPU or not."""
    from fastmbconv import _ext

    if not _ext.has_cuda_kernels():
        pytest.skip("fastmbconv._C was built without CUDA kernels")
    outcomes = device_cases.run(["cuda-binding-control"], 1)
    assert device_cases.failures(outcomes) == [], outcomes


def test_a_crash_names_its_case_and_the_next_case_still_runs():
    outcomes = device_cases.run(["segfault", "cpu-control"], 0)
    assert outcomes["segfault"].startswith("died (exit status -11"), outcomes
    assert outcomes["cpu-control"].startswith("raised: "), outcomes


def test_a_death_reports_the_fault_and_its_python_frames():
    outcome = device_cases.run(["segfault"], 0, trace=False)["segfault"]
    assert "Fatal Python error: Segmentation fault" in outcome and "in _segfault" in outcome, outcome
    assert "Extension modules" not in outcome, outcome


def test_a_hung_case_times_out_and_the_next_case_still_runs():
    outcomes = device_cases.run(["hang", "cpu-control"], 0, timeout=12, trace=False)
    assert outcomes["hang"].startswith("timed out (after 12 s)"), outcomes
    assert outcomes["cpu-control"].startswith("raised: "), outcomes


def test_a_child_that_crashes_after_its_last_case_fails_that_case():
    outcomes = device_cases.run(["cpu-control", "exit-segfault"], 0, trace=False)
    assert outcomes["cpu-control"].startswith("raised: ") and "; then" not in outcomes["cpu-control"], outcomes
    assert outcomes["exit-segfault"].startswith("returned; then the child exited with -11"), outcomes


def test_an_error_of_another_type_is_reported_with_its_type(monkeypatch):
    def broken():
        raise TypeError("an argument the op does not take")

    monkeypatch.setattr(device_cases, "launch_a_triton_kernel", broken)
    assert device_cases.call("triton-kernel", 0) == "TypeError: an argument the op does not take"


def test_only_the_first_case_that_dies_is_run_again_under_gdb():
    if shutil.which("gdb") is None:
        pytest.skip("gdb is not installed")
    outcomes = device_cases.run(["segfault", "segfault-again", "cpu-control"], 0)
    assert "gdb backtrace:" in outcomes["segfault"], outcomes
    assert outcomes["segfault-again"].startswith("died (exit status -11") and "gdb" not in outcomes["segfault-again"]
    assert outcomes["cpu-control"].startswith("raised: "), outcomes


def test_the_cases_after_the_last_death_allowed_are_not_run():
    outcomes = device_cases.run(["segfault", "segfault-again", "cpu-control"], 0, trace=False, max_deaths=2)
    assert "gdb" not in outcomes["segfault"] and outcomes["segfault-again"].startswith("died"), outcomes
    assert outcomes["cpu-control"] == "not run: 2 children died already", outcomes


@pytest.mark.interpreter
def test_the_first_cases_run_in_every_child():
    """With a Triton kernel first in every child: the child after the crash runs it too (here
    under the interpreter), before the case that follows the crash."""
    outcomes = device_cases.run(["segfault", "cpu-control"], 0, first=("triton-kernel",), trace=False)
    assert outcomes["triton-kernel"] == "returned", outcomes
    assert outcomes["segfault"].startswith("died (exit status -11"), outcomes
    assert outcomes["cpu-control"].startswith("raised: ") and "filter must be 0" in outcomes["cpu-control"], outcomes
    assert list(outcomes) == ["triton-kernel", "segfault", "cpu-control"], outcomes


def test_a_first_case_that_dies_leaves_the_rest_not_run():
    outcomes = device_cases.run(["cpu-control", "torch-control-cpu"], 0, first=("segfault",), trace=False)
    assert outcomes["segfault"].startswith("died (exit status -11"), outcomes
    assert outcomes["cpu-control"] == outcomes["torch-control-cpu"] == "not run: segfault, run first, died"


def test_a_case_that_returns_or_raises_another_error_is_a_failure():
    assert device_cases.failures({"triton-kernel": "returned"}) == []
    assert device_cases.failures({"triton-kernel": "returned; then the child exited with -11: ..."}) != []
    assert device_cases.failures({"cpu-control": "raised: filter must be 0 (bilinear); then the child exited with 1"}) != []
    assert device_cases.failures({"triton-kernel": "raised: boom"}) == ["triton-kernel: raised: boom"]
    assert device_cases.failures({"cpu-control": "returned"}) == ["cpu-control: returned"]
    assert device_cases.failures({"v2-meta-on-gpu": "raised: images is an empty list"}) == [
        "v2-meta-on-gpu: raised: images is an empty list"]


def test_the_cuda_cases_are_every_case_with_a_gpu_tensor():
    assert device_cases.CUDA_CASES == ["torch-control-cuda", "v2-meta-on-gpu", "v2-cpu-images-gpu-meta", "v2-gpu-then-cpu-image",
                                       "v2-cpu-then-gpu-image", "v1-meta-on-gpu"]
