"""What a GPU check brings back, on a CPU: the Nsight Compute CSV parser, the kernel-cache
hand-over between machines, and the OUT folder's file set, size limits and packed logs."""
from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import tarfile
import textwrap
from pathlib import Path

import pytest

REPO = next(p for p in Path(__file__).resolve().parents if (p / "tools" / "gpu_check.py").is_file())
sys.path.insert(0, str(REPO / "tools"))
import gpu_cache  # noqa: E402
import ncu_table  # noqa: E402
from gpucheck import outfiles  # noqa: E402

# ---------------------------------------------------------------------- ncu CSV parser
RAW_PAGE = textwrap.dedent('''\
    ==PROF== Connected to process 4242 (/opt/torch/.venv/bin/python3)
    ==PROF== Profiling "_dwconv_bn_act_kernel" - 0: 0%....50%....100% - 9 passes
    {"provider": "fused", "nvtx_range": "b0_fused"}
    "ID","Process ID","Process Name","Host Name","Kernel Name","Context","Stream","Block Size","Grid Size","Device","CC","dram__bytes_read.sum","dram__bytes_write.sum","gpu__time_duration.sum","launch__registers_per_thread","sm__warps_active.avg.pct_of_peak_sustained_active"
    "","","","","","","","","","","","byte","byte","nsecond","register/thread","%"
    "0","4242","python3","127.0.0.1","_dwconv_bn_act_kernel","1","7","(128, 1, 1)","(3136, 1, 32)","0","9.0","3,000,000","1,500,000","2,000","40","61.5"
    "1","4242","python3","127.0.0.1","_pointwise_gated_kernel","1","7","(128, 1, 1)","(98, 2, 32)","0","9.0","1,200,000","n/a","1,000","96","30.0"
    "2","4242","python3","127.0.0.1","_dwconv_bn_act_kernel","1","7","(128, 1, 1)","(784, 1, 32)","0","9.0","1,000,000","500,000","1,000","32","58.5"
    ==PROF== Disconnected from process 4242
    ''')

_K = ('"0","1","python3","h","void at::native::vectorized_elementwise_kernel<4, at::native::FillFunctor<c10::Half>, '
      'std::array<char*, 1ul> >(int, at::native::FillFunctor<c10::Half>, std::array<char*, 1ul>)","1","7","(128, 1, 1)",'
      '"(4, 1, 1)","0","9.0","Command line profiler metrics"')
DETAILS_PAGE = "\n".join([
    '"ID","Process ID","Process Name","Host Name","Kernel Name","Context","Stream","Block Size","Grid Size","Device",'
    '"CC","Section Name","Metric Name","Metric Unit","Metric Value"',
    _K + ',"dram__bytes_read.sum","Kbyte","1.50"',
    _K + ',"dram__bytes_write.sum","Mbyte","2.5"',
    _K + ',"gpu__time_duration.sum","usecond","2.50"',
    _K + ',"launch__registers_per_thread","register/thread","16"',
])


def test_ncu_raw_page_per_launch_and_per_kernel():
    launches = ncu_table.read_launches(RAW_PAGE)
    assert [k["name"] for k in launches] == ["_dwconv_bn_act_kernel", "_pointwise_gated_kernel", "_dwconv_bn_act_kernel"]
    rows = ncu_table.launch_rows(launches, copy_gb_s=3000.0)
    assert rows[0]["time_us"] == pytest.approx(2.0)
    assert rows[0]["dram_gb_s"] == pytest.approx(2250.0)  # 4.5 MB in 2 us
    assert rows[0]["frac_copy_bw"] == pytest.approx(0.75)
    assert rows[1]["dram_write_mb"] is None and rows[1]["dram_gb_s"] == pytest.approx(1200.0)  # n/a write
    assert rows[0]["registers"] == 40 and rows[1]["occupancy_pct"] == pytest.approx(30.0)
    groups = ncu_table.by_kernel(rows, 3000.0)
    assert [g["kernel"] for g in groups] == ["_dwconv_bn_act_kernel", "_pointwise_gated_kernel"]
    dw = groups[0]
    assert dw["launches"] == 2 and dw["time_us"] == pytest.approx(3.0) and dw["dram_gb_s"] == pytest.approx(2000.0)
    assert dw["registers"] == 40  # the most of its launches (40 and 32): the one that limits residency
    assert dw["occupancy_pct"] == pytest.approx(60.5)  # weighted by time: 2 us at 61.5%, 1 us at 58.5%
    untimed = [dict(r, time_us=None) for r in rows if r["kernel"] == "_dwconv_bn_act_kernel"]
    assert ncu_table.by_kernel(untimed, 3000.0)[0]["occupancy_pct"] == pytest.approx(60.0)  # plain mean
    total = ncu_table.summarize(rows, 3000.0)
    assert total["launches"] == 3 and total["dram_mb"] == pytest.approx(7.2)
    assert total["dram_gb_s"] == pytest.approx(1800.0) and total["frac_copy_bw"] == pytest.approx(0.6)
    md = ncu_table.markdown(groups, total, "B0 fused")
    assert "`_dwconv_bn_act_kernel` | 2 | 3.0 | 75.0% |" in md and "0.60 of the copy bandwidth" in md


def test_ncu_details_page_units_and_names(tmp_path):
    (launch,) = ncu_table.read_launches(DETAILS_PAGE)
    m = launch["metrics"]
    assert m[ncu_table.DRAM_READ] == pytest.approx(1500.0) and m[ncu_table.DRAM_WRITE] == pytest.approx(2.5e6)
    assert m[ncu_table.TIME] == pytest.approx(2.5e-6)
    (row,) = ncu_table.launch_rows([launch], None)
    assert row["kernel"] == "at::native::vectorized_elementwise_kernel"
    assert row["dram_gb_s"] == pytest.approx(1000.6) and row["frac_copy_bw"] is None
    path = ncu_table.write_csv([row], tmp_path / "k.csv")
    assert path.read_text().splitlines()[0].startswith("index,id,kernel,time_us")
    assert ncu_table.read_launches("no csv here\n==PROF== nothing profiled\n") == []


# ---------------------------------------------------------------------- kernel cache
def _fake_cache(root: Path, gpu: str = "H100") -> None:
    """The shape of a Triton cache: a kernel folder whose group file lists absolute paths, an
    autotune result, and an inductor part."""
    kdir = root / "triton" / "ABC"
    kdir.mkdir(parents=True)
    children = {}
    for name, data in (("k.cubin", os.urandom(4000)), ("k.ptx", b"ptx " * 2000), ("k.json", b'{"name": "k"}')):
        (kdir / name).write_bytes(data)
        children[name] = str(kdir / name)
    (kdir / "__grp__k.json").write_text(json.dumps({"child_paths": children}))
    tdir = root / "triton" / "DEF"
    tdir.mkdir()
    cfg = lambda m: {"kwargs": {"BLOCK_M": m}, "num_warps": 4, "num_stages": 3, "num_ctas": 1, "maxnreg": None}  # noqa: E731
    (tdir / "_pointwise_gated_kernel.autotune.json").write_text(json.dumps(
        {"key": [24, 96, 56, 56, "torch.float16"], "configs_timings": [[cfg(64), [0.02, 0.019, 0.021]],
                                                                        [cfg(128), [0.01, 0.009, 0.011]]]}))
    (root / "inductor" / "fxgraph").mkdir(parents=True)
    (root / "inductor" / "fxgraph" / "entry").write_bytes(os.urandom(300_000))


def test_cache_pack_restore_points_groups_at_new_home(tmp_path):
    a, b, c = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    _fake_cache(a)
    info = gpu_cache.pack(a, tmp_path / "cache.tar.gz", 10 * 2**20, {"gpu_name": "NVIDIA H100 80GB HBM3"})
    assert info["contents"] == "everything" and info["inventory"]["kernels"] == 1
    assert info["inventory"]["autotune_results"] == 1
    got = gpu_cache.restore(tmp_path / "cache.tar.gz", b, gpu_name="NVIDIA H100 80GB HBM3")
    assert got["made_on"] == "NVIDIA H100 80GB HBM3" and "pointed 1 kernel group files" in got["notes"][0]
    children = json.loads((b / "triton" / "ABC" / "__grp__k.json").read_text())["child_paths"]
    assert all(Path(p).parent == b / "triton" / "ABC" and Path(p).is_file() for p in children.values())
    (pick,) = gpu_cache.autotune_picks(b)
    assert pick["kernel"] == "_pointwise_gated_kernel" and pick["config"]["BLOCK_M"] == 128
    assert pick["best_ms"] == pytest.approx(0.01) and pick["configs_tried"] == 2
    # picks tuned on another GPU model are dropped; compiled kernels stay (keyed by target)
    other = gpu_cache.restore(tmp_path / "cache.tar.gz", c, gpu_name="NVIDIA H200")
    assert other["inventory"]["autotune_results"] == 0 and other["inventory"]["kernels"] == 1


def test_cache_pack_drops_parts_to_fit_the_cap(tmp_path):
    _fake_cache(tmp_path / "a")
    info = gpu_cache.pack(tmp_path / "a", tmp_path / "x.tar.gz", 100_000, {})  # inductor entry alone is 300 kB
    assert info["contents"].startswith("without") and info["bytes"] < 100_000
    with tarfile.open(tmp_path / "x.tar.gz") as tf:
        names = tf.getnames()
    assert gpu_cache.MANIFEST in names and not any(n.startswith("inductor") for n in names)
    tiny = gpu_cache.pack(tmp_path / "a", tmp_path / "y.tar.gz", 1_500, {})
    assert tiny["contents"] in ("autotune picks only", "manifest only") and tiny["notes"]


@pytest.mark.subprocess
def test_real_triton_cache_hits_after_restore_elsewhere(tmp_path):
    """A kernel compiled for sm_90 (no GPU needed) into one cache folder is a cache hit after
    pack + restore into another folder: the hand-over between two bare machines works."""
    script = textwrap.dedent('''
        import json, sys, triton, triton.language as tl
        from triton.compiler import ASTSource
        from triton.backends.compiler import GPUTarget
        hits = []
        triton.knobs.compilation.listener = lambda *, cache_hit, **kw: hits.append(cache_hit)

        @triton.jit
        def scale(x_ptr, y_ptr, n, BLOCK: tl.constexpr):
            offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
            tl.store(y_ptr + offs, tl.load(x_ptr + offs, mask=offs < n) * 2.0, mask=offs < n)

        sig = {"x_ptr": "*fp32", "y_ptr": "*fp32", "n": "i32", "BLOCK": "constexpr"}
        k = triton.compile(ASTSource(scale, sig, {"BLOCK": 128}), target=GPUTarget("cuda", 90, 32))
        assert k.asm.get("cubin")
        print(json.dumps(hits))
    ''')
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}

    (tmp_path / "compile_scale.py").write_text(script)  # @triton.jit needs its source in a file

    def compile_in(cache: Path) -> list:
        r = subprocess.run([sys.executable, str(tmp_path / "compile_scale.py")],
                           env={**env, "TRITON_CACHE_DIR": str(cache / "triton")},
                           capture_output=True, text=True, timeout=240)
        assert r.returncode == 0, r.stderr[-2000:]
        return json.loads(r.stdout.strip().splitlines()[-1])

    assert compile_in(tmp_path / "first") == [False]
    gpu_cache.pack(tmp_path / "first", tmp_path / "c.tar.gz", 10 * 2**20, {})
    gpu_cache.restore(tmp_path / "c.tar.gz", tmp_path / "second")
    os.rename(tmp_path / "first", tmp_path / "gone")  # the old absolute paths no longer exist
    assert compile_in(tmp_path / "second") == [True]


# ---------------------------------------------------------------------- the OUT folder
def test_check_out_catches_extra_missing_and_oversized_files(tmp_path):
    for name in outfiles.stage_files("verify"):
        (tmp_path / name).write_text("{}")
    with tarfile.open(tmp_path / "logs.tar.gz", "w:gz"):
        pass
    with tarfile.open(tmp_path / "gpu-cache.tar.gz", "w:gz"):
        pass
    assert outfiles.check_out(tmp_path, "verify") == []
    (tmp_path / "extra.txt").write_text("x")
    (tmp_path / "env.json").unlink()
    with open(tmp_path / "report.md", "wb") as f:
        f.truncate(outfiles.MAX_BYTES)  # sparse: exactly 16 MiB is already too big
    problems = " | ".join(outfiles.check_out(tmp_path, "verify"))
    assert "unexpected entries: ['extra.txt']" in problems and "missing files: ['env.json']" in problems
    assert "report.md is 16,777,216 B" in problems


def test_pack_dir_keeps_head_and_tail_of_long_logs_and_caps_size(tmp_path):
    logs = tmp_path / "logs"
    logs.mkdir()
    body = b"".join(b"line %07d\n" % i for i in range(500_000))  # 6 MB of log
    (logs / "01-step.log").write_bytes(body)
    (logs / "noise.bin").write_bytes(os.urandom(400_000))
    outfiles.pack_dir(logs, tmp_path / "a.tar.gz")
    with tarfile.open(tmp_path / "a.tar.gz") as tf:
        text = tf.extractfile("01-step.log").read()
    assert text.startswith(b"line 0000000") and text.rstrip().endswith(b"line 0499999") and b"gpu-check cut" in text
    notes = outfiles.pack_dir(logs, tmp_path / "b.tar.gz", cap=200_000)
    with tarfile.open(tmp_path / "b.tar.gz") as tf:
        names = tf.getnames()
    assert "LEFT_OUT.txt" in names and "noise.bin" not in names and notes


def test_check_out_catches_broken_files_a_folder_and_another_stages_report(tmp_path):
    def out_with(name: str, broken) -> list[str]:
        out = tmp_path / f"out-{name}-{len(list(tmp_path.iterdir()))}"
        out.mkdir()
        for f in outfiles.stage_files("verify"):
            if f.endswith(".tar.gz"):
                with tarfile.open(out / f, "w:gz"):
                    pass
            else:
                (out / f).write_text(json.dumps({"stage": "verify"}))
        if callable(broken):
            broken(out / name)
        else:
            (out / name).write_bytes(broken)
        return outfiles.check_out(out, "verify")

    assert out_with("env.json", b'{"stage": "verify"}') == []
    assert out_with("env.json", b'{"cut": ') == ["env.json is not valid JSON"]
    whole = tmp_path / "whole.tar.gz"
    with tarfile.open(whole, "w:gz") as tf:
        tf.add(__file__, arcname="log.txt")
    cut = whole.read_bytes()[: whole.stat().st_size // 2]  # a copy cut short: gzip raises EOFError
    assert [p.split(":")[0] for p in out_with("logs.tar.gz", cut)] == ["logs.tar.gz does not open"]
    assert [p.split(":")[0] for p in out_with("gpu-cache.tar.gz", b"\x1f\x8b half")] == ["gpu-cache.tar.gz does not open"]
    assert out_with("report.json", b'{"stage": "speed"}') == ["report.json is of stage 'speed', not 'verify'"]
    assert out_with("env.json", lambda p: (p.unlink(), p.mkdir())) == ["env.json is not a plain file"]


def test_cache_archive_stays_under_its_cap_and_restore_refuses_paths_out_of_its_folder(tmp_path):
    _fake_cache(tmp_path / "a")
    tiny = gpu_cache.pack(tmp_path / "a", tmp_path / "y.tar.gz", 1_500, {})
    assert tiny["bytes"] < 1_500 and (tmp_path / "y.tar.gz").stat().st_size < 1_500
    evil = tmp_path / "evil.tar.gz"
    with tarfile.open(evil, "w:gz") as tf:
        info = tarfile.TarInfo("../outside.txt")
        info.size = 1
        tf.addfile(info, io.BytesIO(b"x"))
    with pytest.raises(ValueError, match="unsafe member"):
        gpu_cache.restore(evil, tmp_path / "root" / "cache")
    assert not (tmp_path / "root" / "outside.txt").exists()
