"""`python -m llama_twin.cli ...`, the same as `llama-twin ...`: what torchrun starts (`torchrun
--nproc-per-node 8 -m llama_twin.cli generate ...`), since torchrun runs a module or a script."""

import sys

from llama_twin.cli import main

if __name__ == "__main__":
    sys.exit(main())
