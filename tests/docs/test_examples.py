"""Every example in README.md and docs/ runs: each document's python and bash blocks in order, in a
fresh working folder, python blocks in one interpreter session per document. Blocks fenced
```python no-run or ```bash no-run (installs, multi-host launches) are skipped, and so are blocks
fenced ```python requires=MODULE[,MODULE] where one of those optional modules is not installed
(grain, lm_eval): they run wherever the test extra is installed, as in CI."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DOCUMENTS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
FENCE = re.compile(r"^```([^\n`]*)\n(.*?)^```\s*$", re.M | re.S)
RUNNABLE = {"python", "bash"}

# Runs in a child process: executes the blocks in order; python blocks share one namespace.
DRIVER = r"""
import json, subprocess, sys
namespace = {"__name__": "__main__"}
for number, (language, code) in enumerate(json.load(open(sys.argv[1])), 1):
    print(f"--- block {number} ({language})", flush=True)
    if language == "python":
        exec(compile(code, f"block {number}", "exec"), namespace)
    else:
        subprocess.run(["bash", "-euo", "pipefail", "-c", code], check=True)
"""


def examples(document: Path) -> list[tuple[str, str]]:
    """(language, code) of the runnable fenced blocks, in order."""
    blocks = []
    for info, code in FENCE.findall(document.read_text()):
        words = info.split()
        if words and words[0] in RUNNABLE and "no-run" not in words[1:] and installed(words[1:]):
            blocks.append((words[0], code))
    return blocks


def installed(fence_words: list[str]) -> bool:
    """True unless a requires=MODULE,... word names a module that is not installed."""
    for word in fence_words:
        if word.startswith("requires="):
            if any(importlib.util.find_spec(name) is None for name in word.removeprefix("requires=").split(",")):
                return False
    return True


def test_the_block_reader_skips_no_run_and_other_languages(tmp_path):
    document = tmp_path / "doc.md"
    document.write_text("text\n```python\nx = 1\n```\n```bash no-run\npip install x\n```\n"
                        "```json\n{}\n```\n```bash\necho hi\n```\n")
    assert examples(document) == [("python", "x = 1\n"), ("bash", "echo hi\n")]


def test_blocks_that_require_a_missing_module_are_skipped(tmp_path):
    document = tmp_path / "doc.md"
    document.write_text("```python requires=json\na = 1\n```\n```python requires=json,no_such_module_xyz\nb = 2\n```\n")
    assert examples(document) == [("python", "a = 1\n")]


@pytest.mark.slow
@pytest.mark.parametrize("document", DOCUMENTS, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_every_example_runs(document, tmp_path):
    blocks = examples(document)
    if not blocks:
        pytest.skip(f"{document.name} has no runnable example")
    script = tmp_path / "blocks.json"
    script.write_text(json.dumps(blocks))
    work = tmp_path / "work"
    work.mkdir()
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "JAX_PLATFORMS": "cpu", "MPLBACKEND": "Agg",
           "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
           "PATH": os.pathsep.join([str(Path(sys.executable).parent), os.environ["PATH"]])}
    result = subprocess.run([sys.executable, "-c", DRIVER, str(script)], cwd=work, env=env,
                            capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, f"{document.name}:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
