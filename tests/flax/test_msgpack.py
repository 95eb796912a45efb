"""transformers' flax_model.msgpack loads into the Flax twin, checked against the config like a
safetensors checkpoint (issue 18: integer weights were cast silently)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from llama_flax import FlaxLlamaForCausalLM
from llama_shared.errors import CheckpointError
from llama_shared.naming import flatten_tree, unflatten_tree


@pytest.fixture(scope="module")
def msgpack_folder(hf_checkpoint, tmp_path_factory, transformers_4):
    """The checkpoint as transformers 4.57.6's FlaxLlamaForCausalLM saves it (the last with Flax)."""
    folder = tmp_path_factory.mktemp("msgpack")
    transformers_4("save_flax", folder=str(hf_checkpoint()), destination=str(folder))
    return folder


def test_msgpack_gives_transformers_logits(msgpack_folder, hf_checkpoint):
    import transformers

    ids = np.array([[1, 5, 9, 14, 77]])
    expected = transformers.LlamaForCausalLM.from_pretrained(hf_checkpoint())(torch.from_numpy(ids)).logits
    logits = np.asarray(FlaxLlamaForCausalLM.from_pretrained(msgpack_folder)(ids).logits)
    np.testing.assert_allclose(logits, expected.detach().numpy(), rtol=0, atol=1e-4)


def test_integer_weights_in_msgpack_are_refused(msgpack_folder, tmp_path):
    from flax import serialization

    flat = flatten_tree(serialization.msgpack_restore((msgpack_folder / "flax_model.msgpack").read_bytes()))
    flat[("model", "norm", "weight")] = flat[("model", "norm", "weight")].astype(np.int32)
    for name in ("config.json", "generation_config.json"):
        (tmp_path / name).write_bytes((msgpack_folder / name).read_bytes())
    (tmp_path / "flax_model.msgpack").write_bytes(serialization.msgpack_serialize(unflatten_tree(flat)))
    with pytest.raises(CheckpointError, match=r"'model\.norm\.weight' in .*flax_model\.msgpack is int32"):
        FlaxLlamaForCausalLM.from_pretrained(tmp_path)
