"""Runs transformers 4.57.6, the last release with Flax classes, for the tests whose oracle it is.

transformers 4.57.6 needs huggingface_hub < 1.0 and transformers 5 needs >= 1.0, so the two cannot
share one environment. The test command installs 4.57.6 beside the test environment
(`pip install --target .oracle/transformers-4.57.6 --no-deps -r tests/oracle/transformers-4.57.6.txt`);
tests/conftest.py starts this script once per session with that folder first on sys.path and sends
it requests: a pickled (function name, keyword arguments) on stdin, answered by a pickled
("ok", result) or ("error", traceback) on stdout. Results hold only numpy arrays and plain Python
values, so the test process unpickles them without importing this transformers.
"""

from __future__ import annotations

import os
import pickle
import sys
import traceback

os.environ.setdefault("JAX_PLATFORMS", "cpu")


def version() -> str:
    """The transformers version this worker imported (the fixture checks it is 4.57.6)."""
    import transformers

    return transformers.__version__


def outputs(folder: str, model_class: str, inputs: dict, fields: list[str]) -> dict:
    """Float32 outputs of transformers' torch `model_class` loaded from `folder`, for numpy inputs."""
    import torch
    import transformers

    model = getattr(transformers, model_class).from_pretrained(folder).eval()
    with torch.no_grad():
        result = model(**{name: torch.from_numpy(value) for name, value in inputs.items()})
    return {name: getattr(result, name).numpy() for name in fields}


def config_dict(overrides: dict) -> dict:
    """The config.json dict transformers 4.57.6 writes for LlamaConfig(**overrides): the 4.x form."""
    import transformers

    return transformers.LlamaConfig(**overrides).to_dict()


def flax_params(folder: str) -> dict:
    """transformers' FlaxLlamaForCausalLM parameters converted from a torch checkpoint, flattened to
    {path tuple: numpy array}."""
    import numpy as np
    import transformers
    from flax.traverse_util import flatten_dict

    model = transformers.FlaxLlamaForCausalLM.from_pretrained(folder, from_pt=True)
    return {path: np.asarray(array) for path, array in flatten_dict(model.params).items()}


def save_flax(folder: str, destination: str) -> list[str]:
    """Convert a torch checkpoint with FlaxLlamaForCausalLM and save it (flax_model.msgpack)."""
    import transformers

    transformers.FlaxLlamaForCausalLM.from_pretrained(folder, from_pt=True).save_pretrained(destination)
    return sorted(os.listdir(destination))


def save_llama_tokenizer(vocab_file: str, destination: str, kwargs: dict) -> list[str]:
    """Save transformers 4.57.6's LlamaTokenizerFast converted from a sentencepiece model, as a Llama 2
    hub folder was written (tokenizer.json, tokenizer_config.json)."""
    import transformers

    tokenizer = transformers.LlamaTokenizerFast(vocab_file=vocab_file, from_slow=True, **kwargs)
    tokenizer.save_pretrained(destination)
    return sorted(os.listdir(destination))


_TOKENIZERS: dict[int, object] = {}


def make_tokenizer(kind: str, args: list, kwargs: dict) -> int:
    """Build transformers 4.57.6's tokenizer class `kind` here (or call a dotted constructor such as
    "AutoTokenizer.from_pretrained"); returns a handle for tokenizer_call."""
    import transformers

    constructor = transformers
    for name in kind.split("."):
        constructor = getattr(constructor, name)
    _TOKENIZERS[len(_TOKENIZERS)] = constructor(*args, **kwargs)
    return len(_TOKENIZERS) - 1


def tokenizer_call(handle: int, name: str, args: list | None = None, kwargs: dict | None = None,
                   value: object = None, set_value: bool = False):
    """An attribute of a tokenizer made by make_tokenizer: read (args None), set (set_value) or called;
    a mapping result (BatchEncoding) comes back as a plain dict, a method as the marker "<method>"."""
    tokenizer = _TOKENIZERS[handle]
    if set_value:
        setattr(tokenizer, name, value)
        return None
    attribute = getattr(tokenizer, name)
    if args is None:
        return "<method>" if callable(attribute) else attribute
    result = attribute(*args, **(kwargs or {}))
    return dict(result) if hasattr(result, "keys") else result


FUNCTIONS = {f.__name__: f for f in (version, outputs, config_dict, flax_params, save_flax, save_llama_tokenizer,
                                     make_tokenizer, tokenizer_call)}


def main() -> None:
    requests, answers = sys.stdin.buffer, sys.stdout.buffer
    sys.stdout = sys.stderr   # what transformers prints must not corrupt the answers
    while True:
        try:
            name, kwargs = pickle.load(requests)
        except EOFError:
            return
        try:
            answer = ("ok", FUNCTIONS[name](**kwargs))
        except Exception:  # noqa: BLE001 - the test process re-raises it with this traceback
            answer = ("error", traceback.format_exc())
        pickle.dump(answer, answers)
        answers.flush()


if __name__ == "__main__":
    main()
