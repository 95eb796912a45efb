"""Checkpoint conversion (issue 5): bit-exact round trips hf -> flax -> hf and hf -> meta -> hf, Meta
checkpoints built independently from transformers models reproduce its logits and greedy tokens,
and bad input fails clearly with the source untouched and no partial destination."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from dataclasses import replace

import numpy as np
import pytest
import torch

from llama_shared.checkpoints import Checkpoint, save_tensors
from llama_twin.cli import main
from llama_shared.config import LlamaConfig
from llama_twin.conversion import convert, detect_format
from llama_twin.conversion.formats.meta import ffn_hidden_size, meta_ffn_params
from llama_shared.errors import CheckpointError, ConversionError, LlamaTwinError

LLAMA31_ROPE = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                "original_max_position_embeddings": 8192}
# The tiny model in Meta's terms: 2/3 of 4*64 = 170, times 0.5 = 85, rounded up to 32 = 96.
TINY_PARAMS = {"dim": 64, "n_layers": 2, "n_heads": 4, "n_kv_heads": 2, "vocab_size": -1, "multiple_of": 32,
               "ffn_dim_multiplier": 0.5, "norm_eps": 1e-6}
MODEL_CONFIG_FIELDS = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
                         "num_attention_heads", "num_key_value_heads", "head_dim", "rms_norm_eps", "rope_theta",
                         "rope_scaling", "tie_word_embeddings")


def assert_same_tensors(a_dir: str, b_dir: str) -> None:
    a, b = Checkpoint(a_dir), Checkpoint(b_dir)
    assert sorted(a.keys()) == sorted(b.keys())
    for key in a.keys():
        x, y = a.get(key), b.get(key)
        assert x.dtype == y.dtype and x.shape == y.shape, key
        assert np.array_equal(x.view(np.uint8), y.view(np.uint8)), f"{key} differs"


def assert_same_model_config(a_dir: str, b_dir: str) -> None:
    a, b = LlamaConfig.from_pretrained(a_dir), LlamaConfig.from_pretrained(b_dir)
    for name in MODEL_CONFIG_FIELDS:
        assert getattr(a, name) == getattr(b, name), name


# ------------------------------------------------------------------------------------------------
# Round trips


@pytest.mark.parametrize("case", [dict(num_key_value_heads=4), dict(), dict(tie_word_embeddings=True)],
                         ids=["mha", "gqa", "tied"])
def test_hf_flax_hf_is_bit_exact(hf_checkpoint, tmp_path, case):
    src = hf_checkpoint(**case)
    convert(src, tmp_path / "flax", "flax", progress=False)
    assert detect_format(tmp_path / "flax") == "flax"
    convert(tmp_path / "flax", tmp_path / "back", "hf", progress=False)
    assert_same_tensors(src, tmp_path / "back")
    assert_same_model_config(src, tmp_path / "back")


def test_flax_checkpoint_is_one_orbax_tree_of_transformers_flax_params(hf_checkpoint, tmp_path, monkeypatch,
                                                                       transformers_4):
    """Written in many partial saves (tiny groups), params/ still restores with plain Orbax as one tree
    equal to transformers' own Flax parameters (4.57.6, the last with Flax), and converts back
    bit-exactly."""
    import orbax.checkpoint as ocp

    from llama_twin.conversion.formats import flax as convert_flax
    from llama_shared.naming import flatten_tree

    monkeypatch.setattr(convert_flax, "GROUP_BYTES", 40_000)
    src = hf_checkpoint(config_form="4.x")
    convert(src, tmp_path / "flax", "flax", progress=False)
    restored = flatten_tree(ocp.v1.load(tmp_path / "flax" / "params"))
    expected = transformers_4("flax_params", folder=src)
    assert sorted(restored) == sorted(expected)
    for path, array in expected.items():
        assert np.array_equal(np.asarray(restored[path]), np.asarray(array)), "/".join(path)
    convert(tmp_path / "flax", tmp_path / "back", "hf", progress=False)
    assert_same_tensors(src, tmp_path / "back")


@pytest.mark.parametrize("case, num_shards", [
    (dict(num_key_value_heads=4), 1), (dict(num_key_value_heads=4), 4), (dict(), 1), (dict(), 2),
    (dict(tie_word_embeddings=True), 2),
    (dict(vocab_size=128256, rope_theta=500000.0, rope_scaling=LLAMA31_ROPE, max_position_embeddings=131072), 2),
    (dict(vocab_size=128256, rope_theta=500000.0, rope_scaling={**LLAMA31_ROPE, "factor": 32.0},
          max_position_embeddings=131072, tie_word_embeddings=True), 1),
], ids=["mha-1", "mha-4", "gqa-1", "gqa-2", "tied-2", "llama3.1-2", "llama3.2-tied-1"])
def test_hf_meta_hf_is_bit_exact(hf_checkpoint, tmp_path, case, num_shards):
    src = hf_checkpoint(**case)
    convert(src, tmp_path / "meta", "meta", num_shards=num_shards, progress=False)
    names = sorted(os.listdir(tmp_path / "meta"))
    assert names == sorted(["params.json"] + [f"consolidated.{r:02d}.pth" for r in range(num_shards)])
    convert(tmp_path / "meta", tmp_path / "back", "hf", progress=False)
    assert_same_tensors(src, tmp_path / "back")
    assert_same_model_config(src, tmp_path / "back")


@pytest.mark.parametrize("layout", ["records", "column-major", "larger-storage"])
def test_meta_reader_reads_whole_records_directly_and_others_through_the_map(hf_checkpoint, tmp_path, layout):
    """Files whose tensors are whole records of their own (torch.save of plain tensors) are read
    with pread; a file holding a column-major tensor or a view of a larger storage is copied out of
    torch.load's memory map. All give the same tensors."""
    from llama_twin.conversion.formats.meta import MetaCheckpoint

    src = hf_checkpoint(num_key_value_heads=4)
    convert(src, tmp_path / "meta", "meta", num_shards=2, progress=False)
    path = tmp_path / "meta" / "consolidated.01.pth"
    state = torch.load(path, weights_only=True)
    if layout == "column-major":
        state["layers.0.attention.wq.weight"] = state["layers.0.attention.wq.weight"].t().contiguous().t()
    if layout == "larger-storage":
        norm = state["norm.weight"]
        state["norm.weight"] = torch.cat([norm, norm])[:norm.numel()]
    torch.save(state, path)
    read_directly = [offsets is not None for offsets in MetaCheckpoint(tmp_path / "meta")._offsets]
    assert read_directly == ([True, True] if layout == "records" else [True, False])
    convert(tmp_path / "meta", tmp_path / "back", "hf", progress=False)
    assert_same_tensors(src, tmp_path / "back")


def test_meta_writer_falls_back_to_fake_tensors_when_address_space_is_refused(hf_checkpoint, tmp_path,
                                                                               monkeypatch):
    """Under strict overcommit the first torch.empty of a large tensor fails; the writer then lays the
    file out with FakeTensorMode tensors, and the round trip stays bit-exact."""
    from torch._subclasses.fake_tensor import FakeTensor

    src = hf_checkpoint(num_key_value_heads=4)
    real_empty, made = torch.empty, []

    def refusing_empty(*args, **kwargs):
        tensor = real_empty(*args, **kwargs)
        if not isinstance(tensor, FakeTensor):
            raise RuntimeError("DefaultCPUAllocator: can't allocate memory")
        made.append(tensor)
        return tensor

    monkeypatch.setattr(torch, "empty", refusing_empty)
    convert(src, tmp_path / "meta", "meta", num_shards=2, progress=False)
    monkeypatch.undo()
    assert made, "the fallback made no fake tensors"
    convert(tmp_path / "meta", tmp_path / "back", "hf", progress=False)
    assert_same_tensors(src, tmp_path / "back")


def test_bfloat16_and_sharded_output(hf_checkpoint, tmp_path):
    src = hf_checkpoint()
    convert(src, tmp_path / "bf16", "hf", dtype="bfloat16", shard_size=40_000, progress=False)
    out = Checkpoint(tmp_path / "bf16")
    assert os.path.exists(tmp_path / "bf16" / "model.safetensors.index.json")
    assert len({f for f in os.listdir(tmp_path / "bf16") if f.endswith(".safetensors")}) > 1
    assert LlamaConfig.from_pretrained(tmp_path / "bf16").torch_dtype == "bfloat16"
    original = Checkpoint(src)
    for key in original.keys():
        expected = torch.from_numpy(np.array(original.get(key))).to(torch.bfloat16)
        assert torch.equal(torch.from_numpy(out.read(key).view(np.int16)).view(torch.bfloat16), expected), key


# ------------------------------------------------------------------------------------------------
# Meta checkpoints built from transformers models independently of llama_shared: the q/k rows
# permuted back to Meta's interleaved layout as transformers' converter undoes it, tensors split per
# fairscale's layers with torch.chunk, one torch.save per model-parallel rank.

# fairscale: ColumnParallelLinear splits rows (dim 0), RowParallelLinear columns (dim 1);
# ParallelEmbedding (Llama 1/2) splits the width, VocabParallelEmbedding (Llama 3) the vocabulary.
HF_TO_META = {
    "self_attn.q_proj": ("attention.wq", 0), "self_attn.k_proj": ("attention.wk", 0),
    "self_attn.v_proj": ("attention.wv", 0), "self_attn.o_proj": ("attention.wo", 1),
    "mlp.gate_proj": ("feed_forward.w1", 0), "mlp.up_proj": ("feed_forward.w3", 0),
    "mlp.down_proj": ("feed_forward.w2", 1),
    "input_layernorm": ("attention_norm", None), "post_attention_layernorm": ("ffn_norm", None),
}


def meta_from_hf_rows(w: torch.Tensor, n_heads: int) -> torch.Tensor:
    """Inverse of transformers' permute(w, n_heads): w.view(n, D/2, 2, H).transpose(1, 2)."""
    rows, width = w.shape
    return w.view(n_heads, 2, rows // n_heads // 2, width).transpose(1, 2).reshape(rows, width)


def write_meta_checkpoint(model, folder: str, num_shards: int, params: dict, llama3_embeddings: bool,
                          tied_output: bool = False, rope_freqs: bool = True) -> None:
    """Save a transformers LlamaForCausalLM as Meta's consolidated.NN.pth files + params.json."""
    config = model.config
    hf = model.state_dict()
    meta: dict[str, tuple[torch.Tensor, int | None]] = {
        "tok_embeddings.weight": (hf["model.embed_tokens.weight"], 0 if llama3_embeddings else 1),
        "norm.weight": (hf["model.norm.weight"], None),
        "output.weight": (hf["model.embed_tokens.weight"] if tied_output else hf["lm_head.weight"], 0),
    }
    for i in range(config.num_hidden_layers):
        for hf_name, (meta_name, dim) in HF_TO_META.items():
            w = hf[f"model.layers.{i}.{hf_name}.weight"]
            if hf_name == "self_attn.q_proj":
                w = meta_from_hf_rows(w, config.num_attention_heads)
            elif hf_name == "self_attn.k_proj":
                w = meta_from_hf_rows(w, config.num_key_value_heads)
            meta[f"layers.{i}.{meta_name}.weight"] = (w, dim)
    os.makedirs(folder, exist_ok=True)
    head_dim = config.hidden_size // config.num_attention_heads
    for rank in range(num_shards):
        shard = {name: (w if dim is None else torch.chunk(w, num_shards, dim=dim)[rank]).clone()
                 for name, (w, dim) in meta.items()}
        if rope_freqs:
            shard["rope.freqs"] = torch.rand(head_dim // 2)
        torch.save(shard, os.path.join(folder, f"consolidated.{rank:02d}.pth"))
    with open(os.path.join(folder, "params.json"), "w") as f:
        json.dump(params, f)


@pytest.fixture
def tiny_model(tiny_hf_config, randomize):
    """factory(seed=0, **overrides) -> a random tiny transformers LlamaForCausalLM (rms_norm_eps 1e-6)."""
    import transformers

    def make(seed: int = 0, **overrides):
        torch.manual_seed(seed)
        model = transformers.LlamaForCausalLM(tiny_hf_config(rms_norm_eps=1e-6, **overrides)).eval()
        randomize(model)
        return model

    return make


META_CASES = {
    "llama2-gqa-2files": dict(overrides={}, params={}, shards=2, llama3=False),
    "llama3.1-gqa-4files": dict(overrides=dict(vocab_size=128256, num_key_value_heads=4, rope_theta=500000.0,
                                               rope_scaling=LLAMA31_ROPE, max_position_embeddings=131072),
                                params=dict(n_kv_heads=4, vocab_size=128256, rope_theta=500000.0,
                                            use_scaled_rope=True), shards=4, llama3=True),
}


@pytest.mark.parametrize("name", META_CASES)
def test_meta_from_transformers_reproduces_its_logits_and_greedy_tokens(tmp_path, name, tiny_model):
    import transformers

    case = META_CASES[name]
    model = tiny_model(**case["overrides"])
    write_meta_checkpoint(model, str(tmp_path / "meta"), case["shards"], {**TINY_PARAMS, **case["params"]},
                          llama3_embeddings=case["llama3"])
    convert(tmp_path / "meta", tmp_path / "hf", "hf", progress=False)
    converted = transformers.LlamaForCausalLM.from_pretrained(tmp_path / "hf").eval()
    assert "lm_head.weight" in Checkpoint(tmp_path / "hf").keys()
    ids = torch.from_numpy(np.random.default_rng(1).integers(3, model.config.vocab_size, (1, 300)))
    with torch.no_grad():
        expected, got = model(ids).logits, converted(ids).logits
    assert torch.equal(got, expected)
    prompt = ids[:, :12]
    greedy = dict(max_new_tokens=32, do_sample=False, eos_token_id=None, pad_token_id=0)
    assert torch.equal(converted.generate(prompt, **greedy), model.generate(prompt, **greedy))


def test_hf_to_meta_writes_meta_layout(tmp_path, tiny_model):
    """Our Meta files hold exactly what the independent builder writes (permutation and splits)."""
    model = tiny_model()
    model.save_pretrained(tmp_path / "hf")
    write_meta_checkpoint(model, str(tmp_path / "expected"), 2, TINY_PARAMS, llama3_embeddings=False,
                          rope_freqs=False)
    convert(tmp_path / "hf", tmp_path / "meta", "meta", num_shards=2, progress=False)
    for rank in range(2):
        name = f"consolidated.{rank:02d}.pth"
        ours = torch.load(tmp_path / "meta" / name, weights_only=True)
        theirs = torch.load(tmp_path / "expected" / name, weights_only=True)
        assert ours.keys() == theirs.keys()
        for key in theirs:
            assert torch.equal(ours[key], theirs[key]), key
    params = json.loads((tmp_path / "meta" / "params.json").read_text())
    assert ffn_hidden_size(params["dim"], params["multiple_of"], params.get("ffn_dim_multiplier")) == 96
    assert (params["dim"], params["n_layers"], params["n_heads"], params["n_kv_heads"]) == (64, 2, 4, 2)


def test_llama32_tied_copy_becomes_tied_embeddings(tmp_path, tiny_model):
    """Meta's 3.2 files carry output.weight as a copy of the embeddings: the hf side ties them, with
    llama3 RoPE factor 32, and carries tokenizer.model; a generation_config is written."""
    model = tiny_model(tie_word_embeddings=True)
    write_meta_checkpoint(model, str(tmp_path / "meta"), 1,
                          {**TINY_PARAMS, "use_scaled_rope": True, "rope_theta": 500000.0},
                          llama3_embeddings=True, tied_output=True)
    (tmp_path / "meta" / "tokenizer.model").write_bytes(b"tokenizer bytes")
    convert(tmp_path / "meta", tmp_path / "hf", "hf", progress=False)
    config = LlamaConfig.from_pretrained(tmp_path / "hf")
    assert config.tie_word_embeddings
    assert config.rope_scaling == {**LLAMA31_ROPE, "factor": 32.0}
    assert "lm_head.weight" not in Checkpoint(tmp_path / "hf").keys()
    assert (tmp_path / "hf" / "tokenizer.model").read_bytes() == b"tokenizer bytes"
    generation = json.loads((tmp_path / "hf" / "generation_config.json").read_text())
    assert (generation["temperature"], generation["top_p"], generation["do_sample"]) == (0.6, 0.9, True)


@pytest.mark.parametrize("dim, multiple_of, multiplier, expected", [
    (4096, 256, None, 11008),     # Llama-2-7B
    (5120, 256, None, 13824),     # Llama-2-13B
    (8192, 4096, 1.3, 28672),     # Llama-3-70B
    (4096, 1024, 1.3, 14336),     # Llama-3-8B
    (2048, 256, 1.5, 8192),       # Llama-3.2-1B
])
def test_intermediate_size_from_params(dim, multiple_of, multiplier, expected):
    assert ffn_hidden_size(dim, multiple_of, multiplier) == expected
    assert ffn_hidden_size(dim, *meta_ffn_params(dim, expected)) == expected


# ------------------------------------------------------------------------------------------------
# Bad input: a clear error, the source untouched, no partial destination


@pytest.fixture
def meta_dir(tmp_path, tiny_model):
    folder = tmp_path / "src"
    write_meta_checkpoint(tiny_model(), str(folder), 2, TINY_PARAMS, llama3_embeddings=False)
    return folder


def folder_digest(folder: str) -> dict[str, str]:
    """{relative path: sha256} of every file under folder (to prove a source was left untouched)."""
    digest = {}
    for root, _, files in os.walk(folder):
        for name in files:
            path = os.path.join(root, name)
            if not os.path.isfile(path):  # a FIFO or device: never read
                digest[os.path.relpath(path, folder)] = "special"
                continue
            with open(path, "rb") as f:
                digest[os.path.relpath(path, folder)] = hashlib.sha256(f.read()).hexdigest()
    return digest


def assert_fails_cleanly(src, dst, to, match, **kwargs) -> None:
    before = folder_digest(str(src))
    dst_before = folder_digest(str(dst)) if os.path.exists(dst) else None
    siblings = set(os.listdir(os.path.dirname(os.path.realpath(dst))))
    with pytest.raises(LlamaTwinError, match=match):
        convert(src, dst, to, progress=False, **kwargs)
    assert folder_digest(str(src)) == before
    assert (folder_digest(str(dst)) if os.path.exists(dst) else None) == dst_before
    assert set(os.listdir(os.path.dirname(os.path.realpath(dst)))) <= siblings


def test_missing_params_json(meta_dir, tmp_path):
    os.remove(meta_dir / "params.json")
    assert_fails_cleanly(meta_dir, tmp_path / "out", "hf", "has no params.json")


@pytest.mark.parametrize("change, message", [
    ({"n_heads": "4"}, "field 'n_heads' must be a positive integer, got '4'"),
    ({"multiple_of": 0}, "field 'multiple_of' must be a positive integer, got 0"),
    ({"ffn_dim_multiplier": "0.5"}, "field 'ffn_dim_multiplier' must be a finite positive number"),
    ({"norm_eps": "1e-6"}, "field 'norm_eps' must be a finite positive number"),
    ({"rope_theta": "x"}, "field 'rope_theta' must be a finite positive number"),
    ({"vocab_size": "128"}, "field 'vocab_size' must be an integer"),
    ({"use_scaled_rope": True, "rope_scaling_factor": float("nan")}, "'rope_scaling_factor' must be a finite"),
    ({"n_kv_heads": 3}, "describes no valid model: .*num_key_value_heads"),
])
def test_odd_params_json_fields_name_the_file_and_field(meta_dir, tmp_path, change, message):
    """Issue 18: these were raw TypeError, ValueError and ZeroDivisionError tracebacks."""
    (meta_dir / "params.json").write_text(json.dumps({**TINY_PARAMS, **change}))
    assert_fails_cleanly(meta_dir, tmp_path / "out", "hf", f"params.json.*{message}")


def test_params_json_that_is_not_an_object(meta_dir, tmp_path):
    (meta_dir / "params.json").write_text("[1, 2]")
    assert_fails_cleanly(meta_dir, tmp_path / "out", "hf", "params.json must hold a JSON object, found list")


def test_file_count_that_does_not_match(meta_dir, tmp_path):
    os.remove(meta_dir / "consolidated.01.pth")
    assert_fails_cleanly(meta_dir, tmp_path / "out", "hf", "has 1 consolidated.NN.pth files.*: 2 model-parallel files")


def test_file_numbering_gap(meta_dir, tmp_path):
    os.rename(meta_dir / "consolidated.01.pth", meta_dir / "consolidated.02.pth")
    assert_fails_cleanly(meta_dir, tmp_path / "out", "hf", "numbered consecutively")


def test_shapes_inconsistent_with_params(meta_dir, tmp_path):
    (meta_dir / "params.json").write_text(json.dumps({**TINY_PARAMS, "multiple_of": 64}))
    assert_fails_cleanly(meta_dir, tmp_path / "out", "hf", r"feed_forward\.w1\.weight.*params.json implies \(128, 64\)")


def test_truncated_pth(meta_dir, tmp_path):
    path = meta_dir / "consolidated.01.pth"
    path.write_bytes(path.read_bytes()[:-2000])
    assert_fails_cleanly(meta_dir, tmp_path / "out", "hf", "consolidated.01.pth is not a readable PyTorch checkpoint")


def test_truncated_safetensors_shard_mid_conversion(hf_checkpoint, tmp_path):
    sharded = tmp_path / "sharded"
    convert(hf_checkpoint(), sharded, "hf", shard_size=40_000, progress=False)
    last = sorted(f for f in os.listdir(sharded) if f.endswith(".safetensors"))[-1]
    (sharded / last).write_bytes((sharded / last).read_bytes()[:-100])
    for to in ("hf", "meta", "flax"):
        assert_fails_cleanly(sharded, tmp_path / f"out-{to}", to, f"{last} is truncated")


@pytest.mark.parametrize("to", ["hf", "meta", "flax"])
def test_read_error_mid_conversion(hf_checkpoint, tmp_path, monkeypatch, to):
    """A read that fails two thirds of the way through (a disk error) leaves no DST and no staging
    folder; the flax writer meets it with an earlier group's save still in flight."""
    import llama_twin.conversion.formats.flax
    from llama_shared.checkpoints import SafetensorsFile
    from orbax.checkpoint.experimental import v1 as ocp

    src = hf_checkpoint()
    count = len(Checkpoint(src).keys())
    real_read, real_save_async, reads, saves = SafetensorsFile.read_once, ocp.partial.save_async, [], []

    def failing_read(self, key):
        reads.append(key)
        if len(reads) > 2 * count // 3:
            raise CheckpointError(f"{self.path}: input/output error reading {key!r}")
        return real_read(self, key)

    def counted_save_async(*args, **kwargs):
        saves.append(1)
        return real_save_async(*args, **kwargs)

    monkeypatch.setattr(SafetensorsFile, "read_once", failing_read)
    monkeypatch.setattr(ocp.partial, "save_async", counted_save_async)
    monkeypatch.setattr(llama_twin.conversion.formats.flax, "GROUP_BYTES", 20_000)
    assert_fails_cleanly(src, tmp_path / "out", to, "input/output error")
    assert to != "flax" or len(saves) > 1


def test_read_ahead_keeps_order_and_reraises_in_the_consumer(hf_checkpoint):
    import threading

    from llama_twin.conversion.formats.hf import hf_source
    from llama_twin.conversion.source import prefetched

    source = hf_source(hf_checkpoint())
    assert [k for k, _ in prefetched(source).tensors()] == list(source.specs)

    def failing():
        yield from list(source.tensors())[:2]
        raise CheckpointError("disk gone")

    threads = threading.active_count()
    seen = []
    with pytest.raises(CheckpointError, match="disk gone"):
        for key, _ in prefetched(replace(source, tensors=failing)).tensors():
            seen.append(key)
    assert seen == list(source.specs)[:2]
    early = prefetched(source).tensors()
    next(early)
    early.close()
    assert threading.active_count() == threads


def test_destination_inside_source(hf_checkpoint, tmp_path):
    src = tmp_path / "src"
    shutil.copytree(hf_checkpoint(), src)
    assert_fails_cleanly(src, src / "converted", "meta", "is inside the source")
    assert_fails_cleanly(src, src, "hf", "is inside the source")


def test_non_empty_destination_needs_overwrite(hf_checkpoint, tmp_path):
    dst = tmp_path / "dst"
    dst.mkdir()
    (dst / "notes.txt").write_text("mine")
    with pytest.raises(ConversionError, match="not empty"):
        convert(hf_checkpoint(), dst, "meta", progress=False)
    assert (dst / "notes.txt").read_text() == "mine"
    convert(hf_checkpoint(), dst, "meta", overwrite=True, progress=False)
    assert sorted(os.listdir(dst)) == ["consolidated.00.pth", "params.json"]
    assert sorted(os.listdir(tmp_path)) == ["dst"]


def damaged_copy(folder, tmp_path, edit) -> str:
    """A copy of an hf checkpoint whose tensors edit(state) changed."""
    copy = tmp_path / "damaged"
    shutil.copytree(folder, copy)
    checkpoint = Checkpoint(copy)
    state = {key: np.array(checkpoint.get(key)) for key in checkpoint.keys()}
    edit(state)
    os.remove(copy / "model.safetensors")
    save_tensors(copy, state)
    return str(copy)


SOURCE_DAMAGE = {
    "missing tensor": (lambda s: s.pop("model.layers.1.self_attn.k_proj.weight"),
                       r"'model\.layers\.1\.self_attn\.k_proj\.weight' is missing"),
    "wrong shape": (lambda s: s.update({"model.norm.weight": s["model.norm.weight"][:-1]}),
                    r"'model\.norm\.weight' .* shape \(63,\), but the config expects \(64,\)"),
    "extra layer": (lambda s: s.update({"model.layers.2.input_layernorm.weight": s["model.norm.weight"]}),
                    r"'model\.layers\.2\.input_layernorm\.weight' .* is not part of the LlamaForCausalLM"),
    "integer weights": (lambda s: s.update({"lm_head.weight": s["lm_head.weight"].astype(np.int8)}),
                        r"'lm_head\.weight' .* is int8, but the model needs floating weights"),
}


@pytest.mark.parametrize("to", ["hf", "meta", "flax"])
@pytest.mark.parametrize("damage", sorted(SOURCE_DAMAGE))
def test_source_that_does_not_fit_its_config_fails_before_writing(hf_checkpoint, tmp_path, damage, to):
    edit, message = SOURCE_DAMAGE[damage]
    src = damaged_copy(hf_checkpoint(), tmp_path, edit)
    assert_fails_cleanly(src, tmp_path / "out", to, message)


def test_cli_refuses_a_broken_source_with_status_1(hf_checkpoint, tmp_path, capsys):
    src = damaged_copy(hf_checkpoint(), tmp_path, SOURCE_DAMAGE["missing tensor"][0])
    assert main(["convert", src, str(tmp_path / "out"), "--to", "hf", "--no-progress"]) == 1
    assert "is missing" in capsys.readouterr().err
    assert not os.path.exists(tmp_path / "out")


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="FIFOs are POSIX")
@pytest.mark.parametrize("kind", ["fifo", "device"])
@pytest.mark.parametrize("name", ["params.json", "consolidated.01.pth"])
def test_special_file_in_a_meta_folder_is_refused(meta_dir, tmp_path, make_special, fails_instead_of_hanging, kind,
                                                  name):
    make_special(meta_dir / name, kind)
    assert_fails_cleanly(meta_dir, tmp_path / "out", "hf", f"{name} is a (FIFO|device), not a regular file")


def test_meta_cannot_express_attention_bias(hf_checkpoint, tmp_path):
    assert_fails_cleanly(hf_checkpoint(attention_bias=True), tmp_path / "out", "meta", "attention_bias")


def test_kv_heads_not_divisible_by_model_parallel_files(hf_checkpoint, tmp_path):
    assert_fails_cleanly(hf_checkpoint(), tmp_path / "out", "meta", "num_key_value_heads 2", num_shards=4)


# ------------------------------------------------------------------------------------------------
# Other sources and the command line


def test_transformers_flax_msgpack_converts_to_hf(hf_checkpoint, tmp_path, transformers_4):
    src = hf_checkpoint(num_key_value_heads=4, config_form="4.x")
    assert "flax_model.msgpack" in transformers_4("save_flax", folder=src, destination=str(tmp_path / "msgpack"))
    convert(tmp_path / "msgpack", tmp_path / "hf", "hf", progress=False)
    assert_same_tensors(src, tmp_path / "hf")


def test_cli_convert_and_verify(hf_checkpoint, tmp_path, capsys):
    src = hf_checkpoint()
    assert main(["convert", src, str(tmp_path / "meta"), "--to", "meta", "--num-shards", "2", "--verify",
                 "--no-progress"]) == 0
    assert "hf vs meta: 0\n" in capsys.readouterr().out
    assert main(["convert", str(tmp_path / "meta"), str(tmp_path / "flax"), "--to", "flax", "--verify",
                 "--no-progress"]) == 0
    difference = float(capsys.readouterr().out.rsplit(":", 1)[1])
    assert difference < 1e-4
    assert main(["convert", src, str(tmp_path / "meta"), "--to", "hf", "--no-progress"]) == 1
    assert "is not empty" in capsys.readouterr().err
