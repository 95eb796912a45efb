"""The `llama-twin` command: one entry point, one module per subcommand (generate, convert, parity,
mask, train, perplexity, lm-eval), each with add_arguments(parser) and run(args) -> exit status.

Only the chosen subcommand's module is imported (the top-level --help reads each one's summary from
its source): each imports jax and/or torch, seconds apiece, which a command that needs neither
should not wait for.

An error is printed as one line naming the file, field or tensor at fault and the command exits 1
(130 when interrupted); `--debug` (before or after the subcommand) shows the traceback instead.
"""

from __future__ import annotations

import argparse
import ast
import importlib
import importlib.util
import sys
from pathlib import Path
from types import ModuleType

from llama_shared.errors import LlamaTwinError

# Subcommand -> its module in this package.
SUBCOMMANDS = {"generate": "generate", "convert": "convert", "parity": "parity", "mask": "mask", "train": "train",
               "perplexity": "perplexity", "lm-eval": "harness"}
DEBUG_HELP = "show the full traceback of an error instead of one line"


def main(argv: list[str] | None = None) -> int:
    """Parse the command line and run one subcommand."""
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = argparse.ArgumentParser(prog="llama-twin", description="Llama in JAX/Flax with a PyTorch twin.")
    parser.add_argument("--debug", action="store_true", help=DEBUG_HELP)
    commands = parser.add_subparsers(dest="command", required=True)
    chosen = _chosen_command(argv)
    modules: dict[str, ModuleType] = {}
    for name, module_name in SUBCOMMANDS.items():
        if name != chosen:
            commands.add_parser(name, help=_summary(module_name))  # listed by --help; never parsed
            continue
        module = modules[name] = importlib.import_module(f"{__name__}.{module_name}")
        subparser = commands.add_parser(name, help=_summary(module_name), description=module.__doc__,
                                        formatter_class=argparse.RawDescriptionHelpFormatter)
        module.add_arguments(subparser)
        subparser.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help=DEBUG_HELP)
    args, extra = parser.parse_known_args(argv)
    if extra and not getattr(modules[args.command], "PASSES_ON_ARGUMENTS", False):
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    args.passed_on = extra
    try:
        return modules[args.command].run(args)
    except (LlamaTwinError, OSError) as e:
        if args.debug:
            raise
        return _fail(args.command, f"error: {e}")
    except KeyboardInterrupt:
        if args.debug:
            raise
        _fail(args.command, "interrupted")
        return 130
    except Exception as e:  # noqa: BLE001 - a bug: one line here, the traceback with --debug
        if args.debug:
            raise
        return _fail(args.command, f"internal error {type(e).__name__}: {e} (run with --debug for the traceback "
                                   f"and please report it)")


def _chosen_command(argv: list[str]) -> str | None:
    """The subcommand argv names (its first word that is not an option: the only top-level option,
    --debug, takes no value), or None when it names none."""
    word = next((arg for arg in argv if not arg.startswith("-")), None)
    return word if word in SUBCOMMANDS else None


def _summary(module_name: str) -> str:
    """The first line of a subcommand module's docstring, read from its source without importing it."""
    source = Path(importlib.util.find_spec(f"{__name__}.{module_name}").origin).read_text()
    return ast.get_docstring(ast.parse(source)).strip().splitlines()[0]


def _fail(command: str, message: str) -> int:
    print(f"llama-twin {command}: {' '.join(message.splitlines())}", file=sys.stderr, flush=True)
    return 1
