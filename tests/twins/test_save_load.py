"""save_pretrained -> from_pretrained round trips within and across the twins and transformers, dtypes,
and the clear errors bad checkpoints raise."""

from __future__ import annotations

import hashlib
import json
import os
import shutil

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest
import torch
import transformers

from llama_flax import FlaxLlamaForCausalLM, FlaxLlamaForSequenceClassification
from llama_shared.checkpoints import Checkpoint, SafetensorsFile, save_tensors
from llama_shared.config import LlamaConfig
from llama_shared.errors import CheckpointError, ConfigError
from llama_shared.naming import flatten_tree, hf_key
from llama_torch import LlamaForCausalLM, LlamaForSequenceClassification


def hf_state(folder: str) -> dict[str, np.ndarray]:
    checkpoint = Checkpoint(folder)
    return {key: np.array(checkpoint.get(key)) for key in checkpoint.keys()}


def assert_same_state(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> None:
    assert sorted(a) == sorted(b)
    for key in a:
        assert a[key].dtype == b[key].dtype, key
        np.testing.assert_array_equal(a[key], b[key], err_msg=key)


@pytest.mark.parametrize("tied", [False, True])
def test_round_trips_are_bit_exact_across_backends_and_transformers(tied, hf_checkpoint, tmp_path):
    source = hf_checkpoint(tie_word_embeddings=tied)
    original = hf_state(source)
    assert ("lm_head.weight" in original) != tied

    torch_dir, flax_dir, again_dir = tmp_path / "torch", tmp_path / "flax", tmp_path / "again"
    LlamaForCausalLM.from_pretrained(source).save_pretrained(torch_dir)          # hf -> torch -> disk
    FlaxLlamaForCausalLM.from_pretrained(torch_dir).save_pretrained(flax_dir)    # torch's save -> flax
    LlamaForCausalLM.from_pretrained(flax_dir).save_pretrained(again_dir)        # flax's save -> torch
    for folder in (torch_dir, flax_dir, again_dir):
        assert_same_state(hf_state(folder), original)
        reloaded = transformers.LlamaForCausalLM.from_pretrained(folder)
        for key, value in reloaded.state_dict().items():
            expected = original["model.embed_tokens.weight"] if key == "lm_head.weight" and tied else original[key]
            np.testing.assert_array_equal(value.numpy(), expected, err_msg=key)


def test_tied_models_share_one_matrix(hf_checkpoint):
    folder = hf_checkpoint(tie_word_embeddings=True)
    model = LlamaForCausalLM.from_pretrained(folder)
    assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()
    assert "lm_head" not in FlaxLlamaForCausalLM.from_pretrained(folder).params


def test_sharded_save_writes_an_index_and_loads(hf_checkpoint, tmp_path):
    model = LlamaForCausalLM.from_pretrained(hf_checkpoint())
    model.save_pretrained(tmp_path, max_shard_size=40_000)
    index = json.loads((tmp_path / "model.safetensors.index.json").read_text())
    shards = sorted(set(index["weight_map"].values()))
    assert len(shards) > 2 and all(os.path.exists(tmp_path / name) for name in shards)
    assert not (tmp_path / "model.safetensors").exists()
    assert_same_state(hf_state(tmp_path), hf_state(hf_checkpoint()))
    flax = FlaxLlamaForCausalLM.from_pretrained(tmp_path)
    flax.save_pretrained(tmp_path)  # back to one file: the stale shards and index go
    weights = sorted(name for name in os.listdir(tmp_path) if "safetensors" in name)
    assert weights == ["model.safetensors"]


@pytest.mark.parametrize("file_dtype", [torch.bfloat16, torch.float16])
def test_half_precision_files_load_into_float32_and_back(file_dtype, hf_checkpoint, tmp_path):
    folder = hf_checkpoint(dtype=file_dtype)
    original = hf_state(folder)
    np_dtype = ml_dtypes.bfloat16 if file_dtype == torch.bfloat16 else np.float16
    assert original["model.norm.weight"].dtype == np_dtype
    model = LlamaForCausalLM.from_pretrained(folder)
    flax = FlaxLlamaForCausalLM.from_pretrained(folder)
    assert model.dtype == torch.float32 and flax.params["model"]["norm"]["weight"].dtype == jnp.float32
    for path, value in flatten_tree(flax.params).items():
        key, transposed = hf_key(path)
        np.testing.assert_array_equal(np.asarray(value), (original[key].T if transposed else original[key])
                                      .astype(np.float32))
    half = LlamaForCausalLM.from_pretrained(folder, dtype=file_dtype)
    half.save_pretrained(tmp_path / "torch")
    FlaxLlamaForCausalLM.from_pretrained(folder, dtype="auto").save_pretrained(tmp_path / "flax")
    for out in ("torch", "flax"):
        assert_same_state(hf_state(tmp_path / out), original)
        assert json.loads((tmp_path / out / "config.json").read_text())["torch_dtype"] == str(file_dtype)[6:]


def test_missing_head_is_initialised_with_a_warning(hf_checkpoint):
    """A causal-LM checkpoint loads into a classifier: the base is copied, the score layer is new."""
    folder = hf_checkpoint()
    with pytest.warns(UserWarning, match="score.weight"):
        model = LlamaForSequenceClassification.from_pretrained(folder)
    with pytest.warns(UserWarning, match="score.weight"):
        flax = FlaxLlamaForSequenceClassification.from_pretrained(folder)
    np.testing.assert_array_equal(model.model.norm.weight.detach().numpy(), hf_state(folder)["model.norm.weight"])
    assert float(jnp.std(flax.params["score"]["kernel"])) > 0


# ------------------------------------------------------------------------------------------------
# Bad input


@pytest.fixture
def damaged(hf_checkpoint, tmp_path):
    """A copy of a good checkpoint to damage."""
    folder = tmp_path / "model"
    shutil.copytree(hf_checkpoint(), folder)
    return folder


LOADERS = [LlamaForCausalLM.from_pretrained, FlaxLlamaForCausalLM.from_pretrained]


@pytest.mark.parametrize("load", LOADERS)
def test_truncated_safetensors_names_the_file(load, damaged):
    path = damaged / "model.safetensors"
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(CheckpointError, match=r"model\.safetensors is truncated"):
        load(damaged)


@pytest.mark.parametrize("load", LOADERS)
def test_missing_shard_names_the_index_and_shard(load, damaged):
    LlamaForCausalLM.from_pretrained(damaged).save_pretrained(damaged, max_shard_size=40_000)
    index = json.loads((damaged / "model.safetensors.index.json").read_text())
    second = sorted(set(index["weight_map"].values()))[1]
    os.remove(damaged / second)
    with pytest.raises(CheckpointError, match=f"{second}.*missing"):
        load(damaged)


@pytest.mark.parametrize("load", LOADERS)
def test_index_pointing_outside_the_folder_is_rejected(load, damaged):
    os.rename(damaged / "model.safetensors", damaged.parent / "elsewhere.safetensors")
    names = SafetensorsFile(damaged.parent / "elsewhere.safetensors").keys()
    (damaged / "model.safetensors.index.json").write_text(
        json.dumps({"weight_map": {name: "../elsewhere.safetensors" for name in names}}))
    with pytest.raises(CheckpointError, match="outside the checkpoint folder"):
        load(damaged)


@pytest.mark.parametrize("load", LOADERS)
def test_shape_that_disagrees_with_the_config_names_the_tensor(load, damaged):
    state = hf_state(damaged)
    state["model.layers.1.mlp.up_proj.weight"] = state["model.layers.1.mlp.up_proj.weight"][:-1]
    save_tensors(damaged, state)
    with pytest.raises(CheckpointError, match=r"model\.layers\.1\.mlp\.up_proj\.weight.*\(95, 64\).*\(96, 64\)"):
        load(damaged)


@pytest.mark.parametrize("load", LOADERS)
def test_missing_tensor_and_untied_lm_head_are_errors(load, damaged):
    state = hf_state(damaged)
    del state["lm_head.weight"]
    save_tensors(damaged, state)
    with pytest.raises(CheckpointError, match="lm_head.weight.*missing"):
        load(damaged)


@pytest.mark.parametrize("load", LOADERS)
def test_bad_config_in_a_folder_names_file_and_field(load, damaged):
    config = json.loads((damaged / "config.json").read_text())
    config["num_key_value_heads"] = 3
    (damaged / "config.json").write_text(json.dumps(config))
    with pytest.raises(ConfigError, match=r"config\.json.*num_key_value_heads"):
        load(damaged)


def test_token_ids_outside_the_vocabulary_are_rejected(hf_checkpoint):
    folder = hf_checkpoint()
    with pytest.raises(ValueError, match="token id 128"):
        LlamaForCausalLM.from_pretrained(folder)(torch.tensor([[5, 128]]))
    with pytest.raises(ValueError, match="token id -1"):
        FlaxLlamaForCausalLM.from_pretrained(folder)(np.array([[5, -1]]))


def test_not_a_model_folder(tmp_path):
    with pytest.raises(CheckpointError, match="no config.json"):
        LlamaConfig.from_pretrained(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({"hidden_size": 64, "num_attention_heads": 4}))
    with pytest.raises(CheckpointError, match="no model.safetensors"):
        FlaxLlamaForCausalLM.from_pretrained(tmp_path)
    assert jax.devices()  # the Flax backend stayed usable


def hub_cache(folder, cache, repo_id: str, commit: str = "0123456789abcdef" * 2 + "01234567") -> str:
    """Put a model folder into a huggingface_hub cache as the library lays it out: the files as blobs
    named by their hash, the snapshot of the commit as relative symlinks into ../../blobs/, refs/main
    naming the commit. Returns the snapshot folder."""
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    blobs, snapshot = repo / "blobs", repo / "snapshots" / commit
    blobs.mkdir(parents=True)
    snapshot.mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    for name in sorted(os.listdir(folder)):
        data = (folder / name).read_bytes()
        blob = blobs / hashlib.sha256(data).hexdigest()
        blob.write_bytes(data)
        (snapshot / name).symlink_to(os.path.relpath(blob, snapshot))
    return str(snapshot)


def test_sharded_model_in_the_hub_cache_loads_by_repo_id_offline(tiny_hf_config, randomize, tmp_path, monkeypatch):
    """A sharded transformers save in huggingface_hub's cache (snapshot files are symlinks into
    ../../blobs/, as for every sharded Llama on the hub) loads by repo id with HF_HUB_OFFLINE=1 in
    both twins, with transformers' logits."""
    import huggingface_hub.constants as hub

    torch.manual_seed(0)
    reference = transformers.LlamaForCausalLM(tiny_hf_config()).eval()
    randomize(reference)
    reference.save_pretrained(tmp_path / "saved", max_shard_size="40KB")
    assert len([n for n in os.listdir(tmp_path / "saved") if n.endswith(".safetensors")]) > 2
    snapshot = hub_cache(tmp_path / "saved", tmp_path / "cache", "acme/tiny-llama-sharded")
    assert all(os.path.islink(os.path.join(snapshot, n)) for n in os.listdir(snapshot))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(hub, "HF_HUB_CACHE", str(tmp_path / "cache"))  # read by huggingface_hub at import
    monkeypatch.setattr(hub, "HF_HUB_OFFLINE", True)

    ids = np.array([[1, 17, 42, 99, 5, 63, 120, 7]])
    with torch.no_grad():
        expected = reference(torch.from_numpy(ids)).logits.numpy()
    torch_twin = LlamaForCausalLM.from_pretrained("acme/tiny-llama-sharded")
    flax_twin = FlaxLlamaForCausalLM.from_pretrained("acme/tiny-llama-sharded")
    with torch.no_grad():
        np.testing.assert_allclose(torch_twin(torch.from_numpy(ids)).logits.numpy(), expected, rtol=0, atol=1e-4)
    np.testing.assert_allclose(np.asarray(flax_twin(ids).logits), expected, rtol=0, atol=1e-4)
    with pytest.raises(CheckpointError, match="acme/absent"):
        LlamaForCausalLM.from_pretrained("acme/absent")


def test_a_folder_with_both_layouts_loads_what_transformers_loads(hf_checkpoint, tmp_path):
    """model.safetensors beside a stale index and shards of other weights: transformers reads the single
    file, and so do both twins and conversion."""
    folder = tmp_path / "both"
    shutil.copytree(hf_checkpoint(), folder)
    LlamaForCausalLM.from_pretrained(hf_checkpoint(seed=1)).save_pretrained(tmp_path / "other", max_shard_size=40_000)
    for name in os.listdir(tmp_path / "other"):
        if name.startswith("model-") or name == "model.safetensors.index.json":
            shutil.copy(tmp_path / "other" / name, folder / name)
    ids = np.array([[1, 17, 42, 99, 5]])
    with torch.no_grad():
        expected = transformers.LlamaForCausalLM.from_pretrained(folder)(torch.from_numpy(ids)).logits.numpy()
        np.testing.assert_allclose(LlamaForCausalLM.from_pretrained(folder)(torch.from_numpy(ids)).logits.numpy(),
                                   expected, rtol=0, atol=1e-4)
    np.testing.assert_allclose(np.asarray(FlaxLlamaForCausalLM.from_pretrained(folder)(ids).logits), expected,
                               rtol=0, atol=1e-4)
    assert_same_state(hf_state(folder), hf_state(hf_checkpoint()))
