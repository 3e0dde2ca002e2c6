"""`import fastmbconv` must need only torch: no triton, no compiled extension, no timm/torchvision."""
import subprocess
import sys
import textwrap


def test_import_pulls_in_no_optional_dependency():
    code = textwrap.dedent(
        """
        import sys
        # Make the optional libraries unimportable, as on a bare machine.
        for name in ("triton", "timm", "torchvision", "fastmbconv._C"):
            sys.modules[name] = None
        import fastmbconv
        m = fastmbconv.efficientnet_b0().eval()
        import torch
        with torch.no_grad():
            assert m(torch.randn(1, 3, 32, 32)).shape == (1, 1000)
        loaded = [n for n in ("triton", "timm", "torchvision") if sys.modules.get(n) is not None]
        assert not loaded, loaded
        print("ok")
        """
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip().endswith("ok")


def test_import_does_not_import_triton():
    """TRITON_INTERPRET must be settable after `import fastmbconv`, so triton (which torch's
    flop counter imports) is imported only when a fused call needs it."""
    code = (
        "import sys, fastmbconv\n"
        "bad = [m for m in ('triton', 'fastmbconv._C', 'fastmbconv._ext', 'fastmbconv.kernels', 'matplotlib') if m in sys.modules]\n"
        "assert not bad, bad\n"
        "print('ok')\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]


def test_kernels_ship_inside_the_package(tmp_path):
    """From outside the checkout, `fastmbconv.kernels` imports and a top-level `kernels` does not
    (PyPI has an unrelated package of that name)."""
    code = (
        "import importlib.util, fastmbconv.kernels as k\n"
        "assert k.__name__ == 'fastmbconv.kernels'\n"
        "spec = importlib.util.find_spec('kernels')\n"
        "import fastmbconv, os\n"
        "root = os.path.dirname(os.path.dirname(fastmbconv.__file__))\n"
        "assert spec is None or not (spec.origin or '').startswith(root), spec\n"
        "print('ok')\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            timeout=120, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
