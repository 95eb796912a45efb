"""python -m llama_twin.cli: the llama-twin command."""

import sys

from llama_twin.cli import main

sys.exit(main())
