"""Run EleutherAI's lm-evaluation-harness with llama-twin's models registered (lm-eval's own
arguments follow, e.g. --model llama-twin-flax --model_args pretrained=DIR --tasks TASKS).

The models are "llama-twin-flax" and "llama-twin-torch" (llama_twin.evaluation.harness); lm-eval
must be installed (pip install "llama-twin[eval]").
"""

from __future__ import annotations

import argparse

PASSES_ON_ARGUMENTS = True  # every argument after "lm-eval" is lm_eval's


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.usage = "llama-twin lm-eval [lm_eval's arguments]"


def run(args: argparse.Namespace) -> int:
    try:
        from llama_twin.evaluation import harness
    except ImportError as error:
        raise SystemExit(f"llama-twin lm-eval needs lm-eval installed ({error}); pip install 'llama-twin[eval]'")
    harness.main(args.passed_on)
    return 0
