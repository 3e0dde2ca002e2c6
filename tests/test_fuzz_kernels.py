"""tests/fuzz_kernels.py, the random-case runner: each op's cases launch that op and pass, a
wrong result is reported with what reproduces it, a case is the same when run again alone, and
under the interpreter the ops take a GPU launch's block sizes."""
import pytest

from fastmbconv.kernels import dwconv_bn_act as dw
from fastmbconv.kernels._launch import count_launches
from fastmbconv.kernels._utils import interpreting

from . import fuzz_kernels
from .kernels import test_dwconv_bn_act as dw_tests

pytestmark = pytest.mark.interpreter


@pytest.mark.parametrize("op", sorted(fuzz_kernels.CASES))
def test_each_ops_cases_launch_it_and_pass(op):
    with count_launches() as launches:
        assert fuzz_kernels.main(["--ops", op, "--cases", "3", "--seed", "5"]) == 0
    assert launches[op] >= 3, dict(launches)


def test_a_wrong_result_is_reported_with_its_seed_and_case(monkeypatch, capsys):
    real = dw_tests.dwconv_bn_act_ref

    def off_by_a_tenth(*args, **kwargs):  # past every dtype's tolerance
        out = real(*args, **kwargs)
        return (out[0] + 0.1, out[1]) if isinstance(out, tuple) else out + 0.1

    monkeypatch.setattr(dw_tests, "dwconv_bn_act_ref", off_by_a_tenth)
    assert fuzz_kernels.main(["--ops", "dwconv_bn_act", "--cases", "2", "--seed", "7"]) == 1
    printed = capsys.readouterr().out
    again = "python -m tests.fuzz_kernels --ops dwconv_bn_act --seed 7 --case 1"
    assert "FAIL dwconv_bn_act case 0 of seed 7" in printed and again in printed and "2 cases, 2 failed" in printed
    assert fuzz_kernels.main(again.split()[3:]) == 1  # the printed command runs that case again
    assert "1 cases, 1 failed" in capsys.readouterr().out


def test_a_case_is_the_same_when_run_again_alone():
    ops = sorted(fuzz_kernels.CASES)
    first = [fuzz_kernels.case(ops, 3, i)[:2] for i in range(6)]
    again = [fuzz_kernels.case(ops, 3, i)[:2] for i in range(6)]
    assert first == again and len({op for op, _ in first}) > 1


def test_under_the_interpreter_the_ops_take_a_gpu_launchs_blocks():
    whole_map = dw.blocks_for(33, 18, 24)
    with fuzz_kernels.gpu_blocks():
        tile_h, tile_w, block_c = dw.blocks_for(33, 18, 24)
    assert dw.blocks_for(33, 18, 24) == whole_map  # restored
    if interpreting():  # one tile per map under the interpreter; a GPU's tiles are far smaller
        assert whole_map[0] * whole_map[1] >= 33 * 18 and tile_h * tile_w <= 128 and block_c <= 32
    else:
        assert (tile_h, tile_w, block_c) == whole_map
