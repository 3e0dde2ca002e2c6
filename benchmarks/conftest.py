"""pytest-benchmark set-up for ``pytest benchmarks/``.

* ``bandwidth``: the device's copy bandwidth, measured once per session (device-to-device copy
  on a GPU, host memcpy on the CPU), the denominator of every "fraction of the memory floor".
* ``timing_settings`` (autouse): the study's backend flags, cuDNN benchmark mode and no TF32.
* ``bench_results``: the rows the model benchmarks record; at the end of the session
  :func:`pytest_terminal_summary` prints them with the project's speed targets (each ratio and
  whether it is met) and writes ``summary.json`` and ``summary.md`` to ``$FASTMBCONV_BENCH_OUT``
  (default ``.benchmarks/fastmbconv/``, which git ignores).
* ``host_results``: each op's host time per call (``bench_host.py``), tabulated there too.

Collection of ``bench_*.py`` needs ``python_files`` to include them (set in pyproject.toml, or
``-o python_files="test_*.py bench_*.py"``).
"""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest
import torch

from fastmbconv import study

# bench_*.py import their helpers as ``_providers`` under any --import-mode
sys.path.insert(0, str(Path(__file__).resolve().parent))

_RESULTS = pytest.StashKey[list]()
_KERNELS = pytest.StashKey[list]()
_BANDWIDTH = pytest.StashKey[dict]()
_SETTINGS = pytest.StashKey[dict]()
_HOST = pytest.StashKey[list]()


def pytest_configure(config):
    # pytest 9.2 dropped Node._nodeid, which pytest-benchmark before 5.3.1 reads in every
    # benchmark fixture: without this check each benchmark errors with an AttributeError instead
    import pytest_benchmark
    from torch.torch_version import TorchVersion  # PEP 440 comparison without `packaging`

    if TorchVersion(pytest.__version__) >= "9.2" and TorchVersion(pytest_benchmark.__version__) < "5.3.1":
        raise pytest.UsageError(
            f"pytest-benchmark {pytest_benchmark.__version__} does not work with pytest "
            f"{pytest.__version__}: pip install 'pytest-benchmark>=5.3.1' (or 'pytest<9.2')"
        )
    config.stash[_RESULTS] = []
    config.stash[_KERNELS] = []
    config.stash[_BANDWIDTH] = {}
    config.stash[_HOST] = []


@pytest.fixture(scope="session", autouse=True)
def timing_settings(pytestconfig):
    """The study's backend flags (cudnn.benchmark on, no TF32) for every benchmark, recorded in
    summary.json."""
    with study.timing_settings() as flags:
        pytestconfig.stash[_SETTINGS] = flags
        yield flags


@pytest.fixture(scope="session")
def bandwidth(pytestconfig):
    """Measured copy bandwidth of the device the benchmarks run on, keyed by device type."""
    cache = pytestconfig.stash[_BANDWIDTH]

    def get(device) -> study.Bandwidth:
        kind = torch.device(device).type
        if kind not in cache:
            cache[kind] = study.measure_copy_bandwidth(device)
        return cache[kind]

    return get


@pytest.fixture
def bench_results(pytestconfig):
    return pytestconfig.stash[_RESULTS]


@pytest.fixture
def kernel_results(pytestconfig):
    return pytestconfig.stash[_KERNELS]


@pytest.fixture
def host_results(pytestconfig):
    return pytestconfig.stash[_HOST]


def _out_dir() -> Path:
    return Path(os.environ.get("FASTMBCONV_BENCH_OUT", ".benchmarks/fastmbconv"))


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    rows = config.stash.get(_RESULTS, [])
    kernels = config.stash.get(_KERNELS, [])
    host = config.stash.get(_HOST, [])
    if not rows and not kernels and not host:
        return
    tr = terminalreporter
    tr.section("fastmbconv benchmark summary")
    bws = config.stash.get(_BANDWIDTH, {})
    for kind, bw in bws.items():
        tr.write_line(f"measured {bw.kind} on {bw.device}: {bw.gb_s:.1f} GB/s ({bw.method})")
    lines = []
    if rows:
        lines += ["| case | device | median ms | img/s | TFLOP/s | floor frac eager | floor frac layer-fused | "
                  "floor frac expand-dw fused | floor frac whole-block |",
                  "|---|---|---:|---:|---:|---:|---:|---:|---:|"]
        for r in rows:
            if r.get("median_s") is None:
                lines.append(f"| {r['case']} | {r['device_name']} | (timing disabled) |||||||")
                continue
            f = study.fmt
            lines.append(f"| {r['case']} | {r['device_name']} | {r['median_s'] * 1e3:.3f} | {r['images_per_s']:,.1f} | "
                         f"{f(r['tflops'], '.3f')} | {f(r.get('floor_fraction_eager'), '.3f')} | "
                         f"{f(r.get('floor_fraction_layer_fused'), '.3f')} | "
                         f"{f(r.get('floor_fraction_expand_dw_fused'), '.3f')} | "
                         f"{f(r.get('floor_fraction_whole_block'), '.3f')} |")
    planned = [r for r in rows if "expand_dw_fused_layers" in r]
    if planned:
        lines += ["", "Expand + depthwise as one kernel (expand_dwconv) in:", ""]
        lines += [f"- {r['case']}: {len(r['expand_dw_fused_layers'])} blocks "
                  f"({', '.join(r['expand_dw_fused_layers']) or 'none'}; from {', '.join(r['expand_dw_why'])})"
                  for r in planned]
    targets = study.evaluate_targets(rows, kernels)
    lines += ["", "Targets (each ratio from cases measured side by side in this session):", "",
              study.format_targets(targets)]
    pointwise = [k for k in kernels if k["op"].startswith("pointwise")]
    if pointwise:
        lines += ["", "Pointwise 1x1: the per-shape chooser's pick vs the measured faster implementation:", "",
                  "| shape (model bs dtype role KxN HxW) | chosen | triton us | torch us | faster |", "|---|---|---:|---:|---|"]
        by_shape: dict = {}
        for k in pointwise:
            by_shape.setdefault(k["shape_key"], {})[k["impl"]] = k
        for key, impls in by_shape.items():
            chosen = next(iter(impls.values()))["chosen_impl"]
            tt, to = (impls.get(i, {}).get("median_s") for i in ("triton", "torch"))
            faster = ("triton" if tt < to else "torch") if tt and to else "—"
            lines.append(f"| {key} | {chosen} | {study.fmt(tt and tt * 1e6, '.1f')} | "
                         f"{study.fmt(to and to * 1e6, '.1f')} | {faster}{'' if faster in ('—', chosen) else ' (chooser missed)'} |")
    if host:
        lines += ["", "Host time per call (µs; the op's launch: real on a GPU, stubbed on a CPU):", "",
                  "| op | device | via the custom op | via the launcher |", "|---|---|---:|---:|"]
        by_op: dict = {}
        for h in host:
            by_op.setdefault((h["op"], h["device_name"]), {})[h["way"]] = h.get("us_per_call")
        for (op, device), ways in by_op.items():
            lines.append(f"| {op} | {device} | {study.fmt(ways.get('op'), '.1f')} | "
                         f"{study.fmt(ways.get('direct'), '.1f')} |")
    for line in lines:
        tr.write_line(line)
    out = _out_dir()
    try:
        out.mkdir(parents=True, exist_ok=True)
        payload = {"bandwidth": {k: bw.as_dict() for k, bw in bws.items()}, "results": rows,
                   "targets": targets, "kernels": kernels, "host": host,
                   "settings": config.stash.get(_SETTINGS, None)}
        (out / "summary.json").write_text(json.dumps(payload, indent=2, default=str))
        (out / "summary.md").write_text("# fastmbconv benchmark summary\n\n" + "\n".join(lines) + "\n")
        tr.write_line(f"wrote {out / 'summary.json'} and {out / 'summary.md'}")
    except OSError as exc:  # a read-only checkout must not fail the run
        tr.write_line(f"could not write the summary to {out}: {exc}")
