"""Print the attention-mask grid for a text (several texts: the padded batch)."""

from __future__ import annotations

import argparse
import sys

from llama_twin.demo import demo_model_dir
from llama_twin.mask_visualizer import AttentionMaskVisualizer


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("texts", nargs="+", metavar="TEXT",
                        help="the text; give several to see a padded batch")
    parser.add_argument("--model", help="model folder with config.json and tokenizer files "
                                        "(default: the embedded demo model)")
    parser.add_argument("--padding-side", choices=("left", "right"),
                        help="where a padded batch gets its padding (default: the tokenizer's)")
    parser.add_argument("--png", metavar="FILE", help="also draw the grid(s) into this PNG file")
    parser.add_argument("--color", action=argparse.BooleanOptionalAction, default=None,
                        help="colour the diagonal and padding (default: when printing to a terminal)")


def run(args: argparse.Namespace) -> int:
    visualizer = AttentionMaskVisualizer(demo_model_dir() if args.model is None else args.model)
    text = args.texts[0] if len(args.texts) == 1 else args.texts
    color = sys.stdout.isatty() if args.color is None else args.color
    print(visualizer.render(text, args.padding_side, color=color))
    if args.png:
        visualizer.save_png(args.png, text, args.padding_side)
        print(f"wrote {args.png}")
    return 0
