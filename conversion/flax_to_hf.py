"""Convert the flax format (Orbax params/ or flax_model.msgpack) to a Hugging Face folder.

python conversion/flax_to_hf.py SRC DST [--dtype bfloat16] [--overwrite] [--verify]; the same as
`llama-twin convert SRC DST --from flax --to hf`, whose --help lists every option.
"""

import sys

from llama_twin.cli import main

if __name__ == "__main__":
    sys.exit(main(["convert", *sys.argv[1:], "--from", "flax", "--to", "hf"]))
