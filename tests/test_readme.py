"""Every Python example in the README runs, and the commands it names exist."""

from __future__ import annotations

import re
import runpy
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"


def python_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)


def test_readme_has_an_example() -> None:
    assert python_blocks(), "the README should show the probe in a training loop"


@pytest.mark.parametrize("index", range(len(python_blocks())))
def test_readme_example_runs(index: int, tmp_path: Path, monkeypatch, capsys) -> None:
    monkeypatch.chdir(tmp_path)
    script = tmp_path / "example.py"
    script.write_text(python_blocks()[index])
    runpy.run_path(str(script), run_name="__main__")
    out = capsys.readouterr().out
    assert "healthy" in out or "vanishing" in out or "exploding" in out
    assert (tmp_path / "backprobe-runs" / "runs.db").exists()


def test_readme_commands_are_in_the_makefile() -> None:
    text = README.read_text()
    makefile = (README.parent / "Makefile").read_text()
    for target in ("demo", "test"):
        assert f"make {target}" in text
        assert re.search(rf"^{target}:", makefile, flags=re.M)
    assert "make test" in (README.parent / ".ci" / "run").read_text()
