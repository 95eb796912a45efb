"""GGUF in and out of the conversion engine: `llama-twin convert model.gguf DST --to hf|flax|meta` and
`convert SRC out.gguf --to gguf --type ...`; export then import is bit-exact for f32/f16/bf16 and
q8_0 re-imports to the same dequantized values; GGUF tokenizers give transformers' ids; bad files
fail clearly and leave nothing behind."""

from __future__ import annotations

import json
import os
import shutil

import numpy as np
import pytest

from llama_shared.checkpoints import Checkpoint
from llama_shared.checkpoints.gguf import GGUFCheckpoint
from llama_shared.errors import CheckpointError, ConversionError
from llama_shared.tokenizers import AutoTokenizer
from llama_twin.cli import main
from llama_twin.conversion import convert, detect_format
from tests.gguf_files import write_gguf
from tests.tokenizer_files import byte_level_bpe_json, tokenizer_corpus

transformers = pytest.importorskip("transformers")

GGUF_MODEL = dict(vocab_size=256, hidden_size=256, intermediate_size=512)


def bits(array: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(array).view(f"u{array.dtype.itemsize}")


def assert_same_values(a_dir, b_dir, exact_dtype: bool = True) -> None:
    a, b = Checkpoint(a_dir), Checkpoint(b_dir)
    assert sorted(a.keys()) == sorted(b.keys())
    for key in a.keys():
        x, y = a.get(key), b.get(key)
        if exact_dtype:
            assert x.dtype == y.dtype, key
        assert np.array_equal(bits(x.astype(y.dtype)), bits(y)), key


@pytest.fixture(scope="module")
def hf_with_tokenizer(hf_checkpoint, tmp_path_factory, trained_spm_path):
    """factory(dtype=None, **overrides) -> an HF folder (vocab 1000) carrying the sentencepiece tokenizer."""
    made = {}

    def make(dtype=None, **overrides):
        key = json.dumps([str(dtype), overrides], sort_keys=True)
        if key not in made:
            folder = tmp_path_factory.mktemp("hf-tok")
            shutil.copytree(hf_checkpoint(dtype=dtype, **{**GGUF_MODEL, "vocab_size": 1000, **overrides}), folder,
                            dirs_exist_ok=True)
            shutil.copy(trained_spm_path, folder / "tokenizer.model")
            made[key] = folder
        return made[key]

    return make


@pytest.mark.parametrize("gguf_type, dtype", [("f32", None), ("f16", "float16"), ("bf16", "bfloat16")])
def test_export_then_import_is_bit_exact(gguf_type, dtype, hf_with_tokenizer, tmp_path):
    import torch

    src = hf_with_tokenizer(dtype=getattr(torch, dtype) if dtype else None)
    out = tmp_path / "model.gguf"
    convert(src, out, "gguf", gguf_type=gguf_type, progress=False)
    assert detect_format(out) == "gguf" and sorted(os.listdir(tmp_path)) == ["model.gguf"]
    convert(out, tmp_path / "back", "hf", progress=False)
    # Norms come back float32 (llama.cpp keeps 1-D tensors in float32): the same values.
    assert_same_values(src, tmp_path / "back", exact_dtype=False)
    stored = GGUFCheckpoint(out)
    assert {t.type_name for t in stored.tensors.values()} == {"F32", gguf_type.upper()}


def test_q8_0_export_reimports_to_its_dequantized_values(hf_with_tokenizer, tmp_path):
    import gguf

    src = hf_with_tokenizer()
    convert(src, tmp_path / "q8.gguf", "gguf", gguf_type="q8_0", progress=False)
    convert(tmp_path / "q8.gguf", tmp_path / "back", "hf", progress=False)
    original, back = Checkpoint(src), Checkpoint(tmp_path / "back")
    for key in original.keys():
        value = original.get(key).astype(np.float32)
        if value.ndim == 2:  # what gguf's own quantizer and dequantizer make of it
            value = gguf.dequantize(gguf.quantize(value, gguf.GGMLQuantizationType.Q8_0),
                                    gguf.GGMLQuantizationType.Q8_0)
        assert np.array_equal(back.get(key), value), key
    convert(tmp_path / "back", tmp_path / "again.gguf", "gguf", gguf_type="q8_0", progress=False)
    again, first = GGUFCheckpoint(tmp_path / "again.gguf"), GGUFCheckpoint(tmp_path / "q8.gguf")
    for key in first.keys():   # re-quantizing the dequantized values gives the same blocks
        assert np.array_equal(first.raw(key)[1], again.raw(key)[1]), key


@pytest.mark.parametrize("to", ["hf", "flax", "meta"])
def test_gguf_converts_to_every_format_with_the_same_logits(to, hf_with_tokenizer, tmp_path, capsys):
    src = hf_with_tokenizer()
    convert(src, tmp_path / "model.gguf", "gguf", gguf_type="q4_0", progress=False)
    assert main(["convert", str(tmp_path / "model.gguf"), str(tmp_path / to), "--to", to, "--verify",
                 "--no-progress"]) == 0
    difference = float(capsys.readouterr().out.rsplit(":", 1)[1])
    assert difference < 1e-4


@pytest.mark.parametrize("case", ["rope_linear", "rope_yarn", "rope_llama3"])
def test_rope_scaling_survives_gguf(case, hf_checkpoint, tmp_path):
    """linear and yarn go into llama.cpp's rope.scaling keys, llama3 into a rope_freqs tensor (read
    back as per-frequency longrope factors): the logits past the original length are unchanged."""
    import torch

    from llama_torch import LlamaForCausalLM
    from tests.cases import MODEL_CASES

    src = hf_checkpoint(**{**MODEL_CASES[case], "vocab_size": 256})
    convert(src, tmp_path / "model.gguf", "gguf", gguf_type="f32", progress=False)
    ids = torch.tensor(np.random.default_rng(0).integers(3, 256, size=(1, 300)))
    with torch.no_grad():
        expected = LlamaForCausalLM.from_pretrained(src)(ids).logits.numpy()
        got = LlamaForCausalLM.from_pretrained(tmp_path, gguf_file="model.gguf")(ids).logits.numpy()
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-4)


def test_tokenizer_and_chat_template_travel_through_gguf(hf_with_tokenizer, tmp_path):
    """The sentencepiece tokenizer goes into the GGUF metadata and comes back as the tokenizer
    transformers builds from that file, in the twins' AutoTokenizer and in the converted folder."""
    src = tmp_path / "src"
    shutil.copytree(hf_with_tokenizer(), src)
    template = "{% for m in messages %}<s>[{{ m['role'] }}] {{ m['content'] }}</s>{% endfor %}"
    (src / "tokenizer_config.json").write_text(json.dumps({"chat_template": template, "add_bos_token": True}))
    convert(src, tmp_path / "model.gguf", "gguf", gguf_type="f16", progress=False)
    ours = AutoTokenizer.from_pretrained(tmp_path, gguf_file="model.gguf")
    reference = transformers.AutoTokenizer.from_pretrained(tmp_path, gguf_file="model.gguf")
    texts = tokenizer_corpus()
    assert ours(texts)["input_ids"] == reference(texts)["input_ids"]
    assert ours.chat_template == template
    convert(tmp_path / "model.gguf", tmp_path / "hf", "hf", progress=False)
    converted = AutoTokenizer.from_pretrained(tmp_path / "hf")
    assert converted(texts)["input_ids"] == reference(texts)["input_ids"]
    for text in texts:
        ids = reference(text)["input_ids"]
        assert ours.decode(ids) == reference.decode(ids) == converted.decode(ids)


@pytest.mark.parametrize("pre", ["llama-bpe", "gpt-2"])
def test_byte_level_gguf_tokenizer_equals_transformers(pre, hf_checkpoint, tmp_path):
    """A "gpt2" (byte-level) vocabulary in a GGUF written by the gguf package as llama.cpp writes it."""
    content = json.loads(byte_level_bpe_json())
    vocab = sorted(content["model"]["vocab"].items(), key=lambda item: item[1])
    tokens = [token for token, _ in vocab]
    special = {t["content"] for t in content["added_tokens"]}
    metadata = {"tokenizer.ggml.model": "gpt2", "tokenizer.ggml.pre": pre, "tokenizer.ggml.tokens": tokens,
                "tokenizer.ggml.token_type": [3 if t in special else 1 for t in tokens],
                "tokenizer.ggml.merges": [" ".join(m) if isinstance(m, list) else m
                                          for m in content["model"]["merges"]],
                "tokenizer.ggml.bos_token_id": tokens.index("<|im_start|>"),
                "tokenizer.ggml.eos_token_id": tokens.index("<|im_end|>"), "tokenizer.ggml.add_bos_token": False}
    write_gguf(hf_checkpoint(vocab_size=len(tokens)), tmp_path / "model.gguf", "F16", tokenizer=metadata)
    ours = AutoTokenizer.from_pretrained(tmp_path, gguf_file="model.gguf")
    reference = transformers.AutoTokenizer.from_pretrained(tmp_path, gguf_file="model.gguf")
    texts = tokenizer_corpus()
    assert ours(texts)["input_ids"] == reference(texts)["input_ids"]
    for text in texts:
        ids = reference(text)["input_ids"]
        assert ours.decode(ids) == reference.decode(ids), text
    assert (ours.bos_token_id, ours.eos_token_id, len(ours)) == (reference.bos_token_id, reference.eos_token_id,
                                                                  len(reference))


def test_byte_level_tokenizer_exports_as_gpt2(hf_checkpoint, tmp_path):
    """A SmolLM-style byte-level BPE (ChatML) goes into the GGUF as a gpt2 vocabulary with its merges,
    and reads back as transformers' GGUF loader reads it."""
    from tokenizers import Tokenizer

    content = json.loads(byte_level_bpe_json())
    src = tmp_path / "src"
    shutil.copytree(hf_checkpoint(vocab_size=len(content["model"]["vocab"])), src)
    transformers.PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer.from_str(byte_level_bpe_json()), bos_token="<|im_start|>", eos_token="<|im_end|>",
        unk_token="<|endoftext|>").save_pretrained(src)
    convert(src, tmp_path / "model.gguf", "gguf", gguf_type="q8_0", progress=False)
    metadata = GGUFCheckpoint(tmp_path / "model.gguf").gguf_metadata
    assert (metadata["tokenizer.ggml.model"], metadata["tokenizer.ggml.pre"]) == ("gpt2", "smollm")
    ours = AutoTokenizer.from_pretrained(tmp_path, gguf_file="model.gguf")
    reference = transformers.AutoTokenizer.from_pretrained(tmp_path, gguf_file="model.gguf")
    texts = tokenizer_corpus()
    assert ours(texts)["input_ids"] == reference(texts)["input_ids"]
    assert (ours.bos_token, ours.eos_token) == (reference.bos_token, reference.eos_token) == ("<|im_start|>",
                                                                                             "<|im_end|>")


# ------------------------------------------------------------------------------------------------
# Bad input: a clear error naming the file and field, nothing left behind


def gguf_copy(hf_checkpoint, tmp_path, **overrides):
    path = tmp_path / "model.gguf"
    write_gguf(hf_checkpoint(**{**GGUF_MODEL, **overrides}), path, "Q8_0")
    return path


def assert_clean_failure(src, tmp_path, match: str) -> None:
    before = {p: p.stat().st_mtime_ns for p in tmp_path.rglob("*")}
    with pytest.raises(CheckpointError, match=match):
        convert(src, tmp_path / "out", "hf", progress=False)
    assert not (tmp_path / "out").exists()
    assert {p: p.stat().st_mtime_ns for p in tmp_path.rglob("*")} == before   # nothing left, nothing changed


def test_wrong_magic(hf_checkpoint, tmp_path):
    path = gguf_copy(hf_checkpoint, tmp_path)
    data = bytearray(path.read_bytes())
    data[:4] = b"GGML"
    path.write_bytes(bytes(data))
    assert_clean_failure(path, tmp_path, r"model\.gguf is not a GGUF file: it starts with b'GGML'")


@pytest.mark.parametrize("keep", [0.001, 0.5, 0.999])
def test_truncated_file(keep, hf_checkpoint, tmp_path):
    path = gguf_copy(hf_checkpoint, tmp_path)
    data = path.read_bytes()
    path.write_bytes(data[:int(len(data) * keep)])
    assert_clean_failure(path, tmp_path, r"model\.gguf is truncated")


def rewritten(path, metadata: dict | None = None, drop: tuple = (), types: dict | None = None):
    """A GGUF file rewritten with the gguf package, some metadata values, tensors or tensor types
    changed (a changed type gets zero blocks of that type's size); the original is removed."""
    import gguf

    reader = gguf.GGUFReader(str(path))
    changed = path.with_name("changed.gguf")
    architecture = (metadata or {}).get("general.architecture", "llama")
    writer = gguf.GGUFWriter(str(changed), architecture)
    for name, field in reader.fields.items():
        if name.startswith("GGUF.") or name == "general.architecture":
            continue
        main_type = field.types[0]
        writer.add_key_value(name, (metadata or {}).get(name, field.contents()), main_type,
                             sub_type=field.types[-1] if main_type == gguf.GGUFValueType.ARRAY else None)
    for tensor in reader.tensors:
        if tensor.name in drop:
            continue
        shape = list(reversed(tensor.shape.tolist()))
        kind = (types or {}).get(tensor.name, tensor.tensor_type)
        data = np.asarray(tensor.data)
        if kind != tensor.tensor_type:
            block, size = gguf.GGML_QUANT_SIZES[kind]
            data = np.zeros((shape[0], shape[1] // block * size), np.uint8)
        writer.add_tensor(tensor.name, data, raw_dtype=kind if data.dtype == np.uint8 else None)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    os.remove(path)
    return changed


def test_architecture_other_than_llama(hf_checkpoint, tmp_path):
    path = rewritten(gguf_copy(hf_checkpoint, tmp_path), {"general.architecture": "qwen2"})
    assert_clean_failure(path, tmp_path, r"changed\.gguf: metadata field 'general.architecture' is 'qwen2'")


def test_unsupported_tensor_type(hf_checkpoint, tmp_path):
    import gguf

    path = rewritten(gguf_copy(hf_checkpoint, tmp_path),
                     types={"blk.0.attn_q.weight": gguf.GGMLQuantizationType.IQ4_NL})
    assert_clean_failure(path, tmp_path, r"tensor 'blk.0.attn_q.weight' has GGML type IQ4_NL; supported types")


def test_tensor_count_that_disagrees_with_the_metadata(hf_checkpoint, tmp_path):
    path = rewritten(gguf_copy(hf_checkpoint, tmp_path), {"llama.block_count": 3})
    assert_clean_failure(path, tmp_path, r"changed\.gguf lacks tensor\(s\) \['blk.2.")
    path = rewritten(gguf_copy(hf_checkpoint, tmp_path), drop=("blk.1.ffn_up.weight",))
    assert_clean_failure(path, tmp_path, r"changed\.gguf lacks tensor\(s\) \['blk.1.ffn_up.weight'\]")
    path = rewritten(gguf_copy(hf_checkpoint, tmp_path), {"llama.block_count": 1})
    assert_clean_failure(path, tmp_path, r"holds tensor\(s\) \['blk.1.")


def test_tensor_shape_that_disagrees_with_the_metadata(hf_checkpoint, tmp_path):
    path = rewritten(gguf_copy(hf_checkpoint, tmp_path), {"llama.feed_forward_length": 768})
    assert_clean_failure(path, tmp_path, r"tensor 'blk.0.ffn_down.weight' in .*changed\.gguf has shape \(256, 512\), "
                                         r"but the config expects \(256, 768\)")


def test_gguf_destination_rules(hf_with_tokenizer, tmp_path):
    src = hf_with_tokenizer()
    (tmp_path / "taken.gguf").write_text("mine")
    with pytest.raises(ConversionError, match="exists; pass overwrite=True"):
        convert(src, tmp_path / "taken.gguf", "gguf", progress=False)
    assert (tmp_path / "taken.gguf").read_text() == "mine"
    with pytest.raises(ConversionError, match="not one this writer quantizes"):
        convert(src, tmp_path / "new.gguf", "gguf", gguf_type="q2_k", progress=False)
    assert sorted(os.listdir(tmp_path)) == ["taken.gguf"]
    convert(src, tmp_path / "taken.gguf", "gguf", overwrite=True, progress=False)
    assert GGUFCheckpoint(tmp_path / "taken.gguf").config().hidden_size == 256
