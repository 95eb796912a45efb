"""Convert Meta's original checkpoint (params.json + consolidated.NN.pth) to a Hugging Face folder.

python conversion/meta_to_hf.py SRC DST [--dtype bfloat16] [--overwrite] [--verify]; the same as
`llama-twin convert SRC DST --from meta --to hf`, whose --help lists every option.
"""

import sys

from llama_twin.cli import main

if __name__ == "__main__":
    sys.exit(main(["convert", *sys.argv[1:], "--from", "meta", "--to", "hf"]))
