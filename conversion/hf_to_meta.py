"""Convert a Hugging Face folder to Meta's original layout (add --num-shards N for N model-parallel files).

python conversion/hf_to_meta.py SRC DST [--dtype bfloat16] [--overwrite] [--verify]; the same as
`llama-twin convert SRC DST --from hf --to meta`, whose --help lists every option.
"""

import sys

from llama_twin.cli import main

if __name__ == "__main__":
    sys.exit(main(["convert", *sys.argv[1:], "--from", "hf", "--to", "meta"]))
