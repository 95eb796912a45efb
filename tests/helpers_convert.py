"""Meta checkpoints built from transformers models independently of llama_shared: the q/k rows
permuted back to Meta's interleaved layout as transformers' converter undoes it, tensors split per
fairscale's layers with torch.chunk, one torch.save per model-parallel rank."""

from __future__ import annotations

import hashlib
import json
import os

import torch

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


def folder_digest(folder: str) -> dict[str, str]:
    """{relative path: sha256} of every file under folder (to prove a source was left untouched)."""
    digest = {}
    for root, _, files in os.walk(folder):
        for name in files:
            path = os.path.join(root, name)
            with open(path, "rb") as f:
                digest[os.path.relpath(path, folder)] = hashlib.sha256(f.read()).hexdigest()
    return digest
