"""The README's Python section runs as written."""

import re
from pathlib import Path

import numpy as np

README = Path(__file__).resolve().parents[1] / "README.md"


def _python_blocks() -> list[str]:
    text = README.read_text()
    section = text[text.index("## Python\n"): text.index("## Commands\n")]
    return re.findall(r"```python\n(.*?)```", section, flags=re.S)


def test_readme_python_section_runs(capsys):
    blocks = _python_blocks()
    assert len(blocks) >= 2
    for code in blocks:
        namespace: dict = {}
        with np.errstate(all="ignore"):  # the README's reader has numpy's default settings
            exec(compile(code, str(README), "exec"), namespace)
    out = capsys.readouterr().out
    assert "positive definite" in out and "solver.cfl = 2.0" in out
    assert "finished" in out
