"""Convert a Hugging Face folder to the flax format (config.json + an Orbax checkpoint of the Flax parameter tree).

python conversion/hf_to_flax.py SRC DST [--dtype bfloat16] [--overwrite] [--verify]; the same as
`llama-twin convert SRC DST --from hf --to flax`, whose --help lists every option.
"""

import sys

from llama_twin.cli import main

if __name__ == "__main__":
    sys.exit(main(["convert", *sys.argv[1:], "--from", "hf", "--to", "flax"]))
