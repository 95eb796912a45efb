"""llama_torch.parallel and llama_torch.sharding: the plan and the rules in this process; tensor
parallelism, FSDP2 and both on a 2x2 mesh over 2 and 4 gloo processes on the CPU in one spawned job
per world size (tests/torch/parallel_checks.py), each against the one-process twin."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest

HELPER = os.path.join(os.path.dirname(__file__), "parallel_checks.py")


@pytest.fixture(scope="module")
def checkpoints(hf_checkpoint, tmp_path_factory):
    """The folders parallel_checks.py reads (see its docstring)."""
    from llama_torch import LlamaForCausalLM

    folders = {"mha": hf_checkpoint(num_key_value_heads=4, attention_bias=True, mlp_bias=True, vocab_size=130),
               "gqa": hf_checkpoint(num_attention_heads=8, num_key_value_heads=4, tie_word_embeddings=True),
               "gqa_2kv": hf_checkpoint(), "mqa": hf_checkpoint(num_key_value_heads=1)}
    root = tmp_path_factory.mktemp("parallel")
    LlamaForCausalLM.from_pretrained(folders["mha"]).save_pretrained(root / "sharded", max_shard_size=40_000)
    shutil.copytree(root / "sharded", root / "sharded_missing")
    shards = sorted(p for p in os.listdir(root / "sharded") if p.startswith("model-"))
    assert len(shards) > 2
    os.remove(root / "sharded_missing" / shards[1])
    return {**folders, "sharded": str(root / "sharded"), "sharded_missing": str(root / "sharded_missing")}


def run_checks(world: int, checkpoints: dict[str, str], tmp_path) -> list[dict]:
    spec = tmp_path / "checkpoints.json"
    spec.write_text(json.dumps({**checkpoints, "save_to": str(tmp_path / "saved")}))
    out = tmp_path / "results.jsonl"
    process = subprocess.run([sys.executable, HELPER, str(world), str(out), str(spec)], capture_output=True,
                             text=True, timeout=600)
    assert out.exists(), process.stdout[-3000:] + process.stderr[-5000:]
    return [json.loads(line) for line in out.read_text().splitlines()]


def assert_all_ok(checks: list[dict], world: int, expected_names: list[str]) -> None:
    for rank in range(world):
        names = {c["check"] for c in checks if c["rank"] == rank}
        assert set(expected_names) <= names, sorted(set(expected_names) - names)
    failed = [c for c in checks if not c["ok"]]
    assert not failed, failed


@pytest.mark.slow
def test_two_processes_equal_one(checkpoints, tmp_path):
    checks = run_checks(2, checkpoints, tmp_path)
    assert_all_ok(checks, 2, [
        "mha (1, 1, 2) logits", "mha (1, 1, 2) greedy generation", "gqa (1, 1, 2) logits",
        "gqa (1, 1, 2) greedy generation", "gqa (1, 2, 1) logits", "gqa (1, 2, 1) greedy generation",
        "sampling without a seed agrees across ranks", "gqa (1, 2, 1) train step", "mha (1, 1, 2) train step",
        "gqa (1, 2, 1) save gathered on rank 0", "mha (1, 1, 2) save gathered on rank 0",
        "mqa: kv heads not divisible by 2", "a shard file missing on rank 1", "ranks given different meshes",
        "ranks given different dtypes"])


@pytest.mark.slow
def test_four_processes_equal_one(checkpoints, tmp_path):
    checks = run_checks(4, checkpoints, tmp_path)
    assert_all_ok(checks, 4, [
        "mha (1, 1, 4) logits", "mha (1, 1, 4) greedy generation", "gqa (1, 1, 4) logits",
        "gqa (1, 1, 4) greedy generation", "gqa (1, 2, 2) logits", "gqa (1, 2, 2) greedy generation",
        "gqa (1, 4, 1) train step", "gqa (1, 2, 2) train step", "mha (2, 1, 2) train step",
        "gqa (1, 2, 2) save gathered on rank 0", "gqa_2kv: kv heads not divisible by 4",
        "a shard file missing on rank 1", "ranks given different meshes", "ranks given different dtypes"])
