"""The package and the command line import only what the chosen work runs: jax and torch take
seconds each to import, which `llama-twin --help`, `mask` or a one-backend `generate` should not
wait for."""

from __future__ import annotations

import ast
import importlib
import re
import subprocess
import sys

import pytest

FRAMEWORKS = ("jax", "torch")


def frameworks_loaded_by(code: str) -> list[str]:
    """The FRAMEWORKS in sys.modules after a fresh interpreter runs code."""
    check = f"import sys\n{code}\nprint(sorted(m for m in {FRAMEWORKS!r} if m in sys.modules))"
    result = subprocess.run([sys.executable, "-c", check], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    return ast.literal_eval(result.stdout.strip().splitlines()[-1])


def test_the_top_level_help_lists_every_subcommand_and_loads_neither_framework():
    from llama_twin.cli import SUBCOMMANDS

    code = "import contextlib\nfrom llama_twin.cli import main\nwith contextlib.suppress(SystemExit):\n    main(['--help'])"
    assert frameworks_loaded_by(code) == []
    result = subprocess.run([sys.executable, "-m", "llama_twin.cli", "--help"], capture_output=True, text=True,
                            check=True, timeout=300)
    for name, module_name in SUBCOMMANDS.items():
        summary = importlib.import_module(f"llama_twin.cli.{module_name}").__doc__.strip().splitlines()[0]
        assert re.search(rf"^    {re.escape(name)} +{re.escape(summary[:30])}", result.stdout, re.M), result.stdout


def test_the_package_its_demo_model_and_the_mask_command_load_neither_framework():
    assert frameworks_loaded_by("from llama_twin import demo_model_dir; demo_model_dir()") == []
    assert frameworks_loaded_by("from llama_twin.cli import main; "
                                "assert main(['mask', 'Plants create energy', '--no-color']) == 0") == []


@pytest.mark.parametrize("backend, other", [("flax", "torch"), ("torch", "jax")])
def test_generate_loads_only_its_backends_framework(backend, other):
    loaded = frameworks_loaded_by(f"from llama_twin.cli import main; "
                                  f"assert main(['generate', 'Hello', '--backend', '{backend}', "
                                  f"'--max-new-tokens', '2']) == 0")
    assert other not in loaded
    assert {"flax": "jax", "torch": "torch"}[backend] in loaded
