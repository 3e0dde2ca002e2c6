"""The command lines: ``python -m fastmbconv`` (argparse, model names and configs) and the
study's argument errors, its exit status when nothing is measured, and its plot titles."""
import subprocess
import sys

import pytest

from fastmbconv import __main__ as cli
from fastmbconv import study
from fastmbconv.study import plots


@pytest.mark.subprocess
def test_help_is_argparse():
    out = subprocess.run([sys.executable, "-m", "fastmbconv", "--help"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and out.stdout.startswith("usage: python -m fastmbconv")
    assert "--list" in out.stdout and "| model |" not in out.stdout
    bad = subprocess.run([sys.executable, "-m", "fastmbconv", "--bogus"], capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and "unrecognized arguments: --bogus" in bad.stderr


def test_lists_and_configs(capsys):
    assert cli.main(["--list", "tf_*"]) == 0
    assert capsys.readouterr().out.split() == [f"tf_efficientnet_b{i}" for i in range(8)]
    cli.main(["--pretrained", "efficientnet_b0*"])
    assert capsys.readouterr().out.split() == ["efficientnet_b0.ra4_e3600_r224_in1k", "efficientnet_b0.ra_in1k"]
    cli.main(["--cfg", "tf_efficientnet_b3"])
    assert "crop_pct: 0.904" in capsys.readouterr().out
    with pytest.raises(SystemExit, match="did you mean efficientnet_b7"):
        cli.main(["--cfg", "efficientnet_b8"])


@pytest.mark.parametrize("args, message", [
    (["--models", "b9"], "unknown model 'b9'"),
    (["--models", "tf_efficientnet_b0"], "unknown model"),
    (["--providers", "nope"], "unknown provider 'nope'"),
    (["--dtypes", "fp8"], "--dtypes: unknown"),
    (["--batches", "1,x"], "--batches must be a comma list of integers"),
    (["--batches", "0"], "--batches must be positive"),
    (["--resolution", "0"], "--resolution must be positive"),
    (["--device", "tpu"], "--device"),
])
def test_study_bad_arguments_are_argparse_errors(args, message, capsys):
    with pytest.raises(SystemExit) as exit_:
        study.main(args + ["--no-plots", "--no-progress"])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("usage: python -m fastmbconv.study") and message in err


def test_study_that_measures_nothing_exits_non_zero(tmp_path):
    with pytest.raises(SystemExit) as exit_:  # the fused provider needs a GPU: every case is skipped
        study.main(["--device", "cpu", "--quick", "--models", "b0", "--providers", "fused", "--out", str(tmp_path),
                    "--no-plots", "--no-progress"])
    assert exit_.value.code not in (0, None) and "nothing was measured" in str(exit_.value.code)
    assert (tmp_path / "results.md").is_file()


def test_plot_titles_say_resolution_and_device(tmp_path, monkeypatch):
    pytest.importorskip("matplotlib")
    from matplotlib.figure import Figure

    titles = []

    def record(fig, *args, **kwargs):
        titles.append(" | ".join([fig._suptitle.get_text() if fig._suptitle else ""]
                                 + [ax.get_title() for ax in fig.axes]))

    monkeypatch.setattr(Figure, "savefig", record)
    row = dict(model="efficientnet_b0", resolution=48, batch=1, dtype="fp32", provider="eager", median_s=1e-3,
               gflops_per_image=0.04, images_per_s=1e3)
    result = {"meta": {"device": "Test CPU 9000"}, "rows": [row, {**row, "model": "efficientnet_b2"}],
              "breakdown": [{"provider": "eager", "model": "efficientnet_b0", "resolution": 48, "batch": 4,
                             "dtype": "fp32", "rows": [dict(category="1x1", ms=1.0, share=1.0, flop_per_byte=3.0)]}]}
    plots.write_plots(result, tmp_path)
    assert len(titles) == 3
    assert all("Test CPU 9000" in t and "48x48 px" in t for t in titles), titles
    assert plots.resolution_label([{"resolution": 224}, {"resolution": 600}]) == \
        "each model at its resolution (224-600 px)"


@pytest.mark.subprocess
@pytest.mark.parametrize("gpu", [False, True])
def test_makefile_torch_build_per_machine(gpu, tmp_path):
    """`make install` asks pip for the CPU wheel from PyTorch's CPU index where `nvidia-smi -L`
    fails, and for PyPI's (CUDA) wheel where it succeeds; shown with `make -n` (nothing runs)."""
    import os
    import shutil
    from pathlib import Path

    if shutil.which("make") is None:
        pytest.skip("make is not installed")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    fake = bin_dir / "nvidia-smi"
    fake.write_text(f"#!/bin/sh\nexit {0 if gpu else 1}\n")
    fake.chmod(0o755)
    # Under `make test` the outer make's MAKEFLAGS/MAKELEVEL would leak in (directory banners,
    # command-line overrides); this asks what a fresh `make install` would run.
    inherited = {"MAKEFLAGS", "MFLAGS", "MAKELEVEL", "MAKEOVERRIDES", "TORCH_SPEC", "HAS_GPU", "PYTHON"}
    env = {k: v for k, v in os.environ.items() if k not in inherited}
    env["PATH"] = f"{bin_dir}{os.pathsep}{os.environ['PATH']}"
    root = Path(__file__).resolve().parents[1]
    out = subprocess.run(["make", "--no-print-directory", "-n", "install"], cwd=root, env=env,
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    first = out.stdout.splitlines()[0]
    if gpu:
        assert first.endswith("pip install torch==2.13.0"), first
    else:
        assert first.endswith("pip install torch==2.13.0+cpu --extra-index-url https://download.pytorch.org/whl/cpu")
