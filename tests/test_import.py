"""`import fastmbconv` must need only torch: no triton, no compiled extension, no timm/torchvision."""
import subprocess
import sys
import textwrap

import pytest


@pytest.mark.subprocess
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


@pytest.mark.subprocess
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


@pytest.mark.subprocess
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


@pytest.mark.subprocess
def test_kernel_names_mean_the_same_thing_in_any_import_order():
    """An op's name on ``fastmbconv.kernels`` is its module before and after the module is
    imported; every other exported name is a function, the same one on every look."""
    code = textwrap.dedent(
        """
        import types
        import fastmbconv.kernels as k
        first = {name: getattr(k, name) for name in k.__all__}
        import fastmbconv.fused  # imports every op module
        for name in k.__all__:
            now = getattr(k, name)
            assert now is first[name], (name, first[name], now)
            assert isinstance(now, types.ModuleType) == (name in k.SUBMODULES), (name, now)
        assert callable(k.dwconv_bn_act.dwconv_bn_act) and callable(k.squeeze_excite_gate)
        print("ok")
        """
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]


def _package_import_graph() -> dict[str, set[str]]:
    """Module -> the package modules it imports (at the top or inside functions), read from the
    source with ast; ``kernels/`` is ``fastmbconv.kernels``."""
    import ast
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    files = {}
    for base, package in ((root / "fastmbconv", "fastmbconv"), (root / "kernels", "fastmbconv.kernels")):
        for path in base.rglob("*.py"):
            parts = list(path.relative_to(base).with_suffix("").parts)
            is_init = parts[-1] == "__init__"
            name = ".".join([package, *parts[:-1]] if is_init else [package, *parts])
            files[name] = (path, is_init)
    extension = {"fastmbconv._C"}  # compiled: imports nothing of the package
    graph = {name: set() for name in extension}
    for name, (path, is_init) in files.items():
        here = name if is_init else name.rpartition(".")[0]
        edges = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                base = here
                for _ in range(max(0, node.level - 1)):
                    base = base.rpartition(".")[0]
                target = (f"{base}.{node.module}" if node.module else base) if node.level else node.module
                # `from pkg import sub` imports the submodule; `from pkg import name`, pkg itself
                candidates = [f"{target}.{a.name}" if f"{target}.{a.name}" in files.keys() | extension else target
                              for a in node.names]
            elif isinstance(node, ast.Import):
                candidates = [a.name for a in node.names]
            else:
                continue
            edges |= {c for c in candidates if (c in files or c in extension) and c != name}
        graph[name] = edges
    return graph


def test_no_import_cycles():
    """No module of the package imports, directly or through others, a module that imports it
    (lazy imports inside functions count: they hide a cycle, they don't remove it)."""
    graph = _package_import_graph()
    state, cycles = {}, []

    def visit(node, stack):
        state[node] = "open"
        for nxt in sorted(graph[node]):
            if state.get(nxt) == "open":
                cycles.append(stack[stack.index(nxt):] + [nxt])
            elif nxt not in state:
                visit(nxt, stack + [nxt])
        state[node] = "done"

    for node in sorted(graph):
        if node not in state:
            visit(node, [node])
    assert not cycles, "import cycles: " + "; ".join(" -> ".join(c) for c in cycles)
    assert len(graph) > 40 and graph["fastmbconv.builders"]  # the walk read the tree
