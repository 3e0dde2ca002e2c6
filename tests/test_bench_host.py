"""The host-time benchmark (``benchmarks/bench_host.py``) reaches the session's summary: one row
per op and way in summary.json, and a table of both ways per op in summary.md."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
OPS = ("pointwise_gated", "dwconv_bn_act", "squeeze_excite_gate", "affine_act_pool")


@pytest.mark.subprocess
def test_host_time_rows_reach_the_summary(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST_XDIST_")}
    r = subprocess.run([sys.executable, "-m", "pytest", "benchmarks", "-q", "-p", "no:cacheprovider", "-k",
                        "test_host_time_per_call"], cwd=REPO, capture_output=True, text=True, timeout=300,
                       env={**env, "FASTMBCONV_BENCH_OUT": str(tmp_path)})
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    host = json.loads((tmp_path / "summary.json").read_text())["host"]
    assert sorted((h["op"], h["way"]) for h in host) == sorted((op, way) for op in OPS for way in ("op", "direct"))
    assert all(h["us_per_call"] > 0 for h in host)
    md = (tmp_path / "summary.md").read_text()
    for op in OPS:
        ways = {h["way"]: h["us_per_call"] for h in host if h["op"] == op}
        assert f"| {op} | {host[0]['device_name']} | {ways['op']:.1f} | {ways['direct']:.1f} |" in md, md
