"""The `llama-twin` command: one entry point, one module per subcommand, backends imported lazily."""

from __future__ import annotations

import argparse
import importlib
import sys

# subcommand -> module with add_arguments(parser) and run(args) -> int
SUBCOMMANDS = {
    "generate": "llama_shared.cli_generate",
    "convert": "llama_shared.cli_convert",
    "parity": "llama_shared.cli_parity",
    "mask": "llama_shared.cli_mask",
    "train": "llama_shared.cli_train",
    "bench": "llama_shared.cli_bench",
}


def main(argv: list[str] | None = None) -> int:
    """Parse the command line and run one subcommand."""
    parser = argparse.ArgumentParser(prog="llama-twin", description="Llama in JAX/Flax with a PyTorch twin.")
    commands = parser.add_subparsers(dest="command", required=True)
    modules = {}
    for name, module_name in SUBCOMMANDS.items():
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as e:
            if e.name != module_name:
                raise
            continue
        modules[name] = module
        module.add_arguments(commands.add_parser(name, help=module.__doc__.strip().splitlines()[0]))
    args = parser.parse_args(argv)
    return modules[args.command].run(args)


if __name__ == "__main__":
    sys.exit(main())
