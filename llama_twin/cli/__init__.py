"""The `llama-twin` command: one entry point, one module per subcommand (generate, convert, parity,
mask, train, perplexity, lm-eval), each with add_arguments(parser) and run(args) -> exit status."""

from __future__ import annotations

import argparse
import sys

from llama_twin.cli import convert, generate, harness, mask, parity, perplexity, train

SUBCOMMANDS = {"generate": generate, "convert": convert, "parity": parity, "mask": mask, "train": train,
               "perplexity": perplexity, "lm-eval": harness}


def main(argv: list[str] | None = None) -> int:
    """Parse the command line and run one subcommand."""
    parser = argparse.ArgumentParser(prog="llama-twin", description="Llama in JAX/Flax with a PyTorch twin.")
    commands = parser.add_subparsers(dest="command", required=True)
    for name, module in SUBCOMMANDS.items():
        summary = module.__doc__.strip().splitlines()[0]
        module.add_arguments(commands.add_parser(
            name, help=summary, description=module.__doc__, formatter_class=argparse.RawDescriptionHelpFormatter))
    args, extra = parser.parse_known_args(argv)
    if extra and not getattr(SUBCOMMANDS[args.command], "PASSES_ON_ARGUMENTS", False):
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    args.passed_on = extra
    return SUBCOMMANDS[args.command].run(args)


if __name__ == "__main__":
    sys.exit(main())
