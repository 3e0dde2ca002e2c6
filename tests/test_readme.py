"""Every ```python block of README.md runs as written, in order, in one namespace (in a temporary
working directory). A block right after an HTML comment ``<!-- readme-test: skip (REASON) -->``
needs what the tests do not have (network, timm, torchvision) and is skipped with REASON."""
import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"
BLOCK = re.compile(r"(?:<!--\s*readme-test:\s*skip\s*\((?P<reason>[^)]*)\)\s*-->\s*\n)?```python\n(?P<code>.*?)```",
                   re.S)


def blocks():
    text = README.read_text()
    return [(text[:m.start()].count("\n") + 1, m.group("reason"), m.group("code")) for m in BLOCK.finditer(text)]


def test_readme_has_runnable_and_marked_blocks():
    found = blocks()
    assert len(found) >= 3 and any(reason is None for _, reason, _ in found)
    for line, reason, code in found:
        if reason is None:
            assert "timm" not in re.findall(r"^\s*import (\w+)", code, re.M), f"README line {line} imports timm unmarked"


@pytest.fixture(scope="module")
def namespace():
    return {"__name__": "readme"}


@pytest.mark.slow
@pytest.mark.parametrize("line, reason, code", blocks(), ids=[f"line{b[0]}" for b in blocks()])
def test_readme_block_runs(line, reason, code, namespace, tmp_path, monkeypatch):
    if reason is not None:
        pytest.skip(f"README block at line {line}: {reason}")
    monkeypatch.chdir(tmp_path)
    exec(compile(code, f"README.md:{line}", "exec"), namespace)
