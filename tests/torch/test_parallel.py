"""llama_torch.parallel and llama_torch.sharding: the plan and the rules in this process; tensor
parallelism, FSDP2 and both on a 2x2 mesh over 2 and 4 gloo processes on the CPU in one spawned job
per world size (tests/torch/parallel_checks.py), each against the one-process twin."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys

import pytest

HELPER = os.path.join(os.path.dirname(__file__), "parallel_checks.py")
TINY = dict(vocab_size=128, hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=8,
            num_key_value_heads=4)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def one_process_job():
    """A gloo job of one process (this one), for what a world of one can show."""
    import torch.distributed as dist

    from llama_torch import parallel

    env = dict(RANK="0", WORLD_SIZE="1", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(free_port()))
    saved = {name: os.environ.get(name) for name in env}
    os.environ.update(env)
    parallel.initialize_distributed(timeout_s=30, backend="gloo")
    yield
    dist.destroy_process_group()
    for name, value in saved.items():
        if value is None:
            os.environ.pop(name)
        else:
            os.environ[name] = value


@pytest.mark.parametrize("model_class, base", [("LlamaForCausalLM", "model."), ("LlamaForQuestionAnswering", "transformer."),
                                               ("LlamaForSequenceClassification", "model.")])
def test_plan_splits_attention_and_mlp_and_the_vocabulary(model_class, base):
    import torch
    from torch.distributed.tensor.parallel import ColwiseParallel, RowwiseParallel

    import llama_torch
    from llama_shared.config import LlamaConfig
    from llama_torch.sharding import tensor_parallel_plan

    with torch.device("meta"):
        model = getattr(llama_torch, model_class)(LlamaConfig(**TINY, num_labels=3))
    plan = tensor_parallel_plan(model, 4)
    for i in range(2):
        for name in ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "mlp.gate_proj", "mlp.up_proj"):
            assert type(plan.pop(f"{base}layers.{i}.{name}")) is ColwiseParallel
        for name in ("self_attn.o_proj", "mlp.down_proj"):
            assert type(plan.pop(f"{base}layers.{i}.{name}")) is RowwiseParallel
    assert type(plan.pop(f"{base}embed_tokens")) is RowwiseParallel
    if model_class == "LlamaForCausalLM":
        assert type(plan.pop("lm_head")) is ColwiseParallel
    assert plan == {}, "norms and task heads stay whole"
    assert set(tensor_parallel_plan(model, 3)) == {f"{base}layers.{i}.{n}" for i in range(2) for n in (
        "self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj", "mlp.gate_proj",
        "mlp.up_proj", "mlp.down_proj")}, "a vocabulary of 128 does not split 3 ways: embeddings stay whole"


@pytest.mark.parametrize("size, field", [(3, "num_attention_heads"), (8, "num_key_value_heads"),
                                         (16, "num_attention_heads")])
def test_tensor_sizes_that_split_a_head_are_refused_naming_the_field(size, field):
    from llama_shared.config import LlamaConfig
    from llama_shared.errors import ConfigError
    from llama_torch.sharding import check_tensor_parallel

    config = LlamaConfig(**{**TINY, "num_attention_heads": 8, "num_key_value_heads": 4})
    check_tensor_parallel(config, 4)
    with pytest.raises(ConfigError, match=f"needs {field} divisible by {size}"):
        check_tensor_parallel(config, size)


def test_initialize_distributed_names_what_the_launcher_did_not_set(monkeypatch):
    from llama_torch import parallel

    for name in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("RANK", "0")
    with pytest.raises(ValueError, match="WORLD_SIZE, MASTER_ADDR, MASTER_PORT not set: start the job with torchrun"):
        parallel.initialize_distributed()


def test_a_rank_that_never_comes_is_an_error_after_the_timeout(monkeypatch):
    """WORLD_SIZE 2 but one process started: the rendezvous gives up after the timeout, saying why."""
    import torch.distributed as dist

    from llama_torch import parallel

    if dist.is_initialized():
        pytest.skip("this process is already in a job")
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    monkeypatch.setenv("MASTER_PORT", str(free_port()))
    with pytest.raises(RuntimeError, match="rank 0 of 2: the job's 2 processes did not all join at 127.0.0.1"):
        parallel.initialize_distributed(timeout_s=2, backend="gloo")
    assert not dist.is_initialized()


def test_one_process_mesh_loads_the_plain_model(one_process_job, hf_checkpoint):
    import torch

    from llama_torch import LlamaForCausalLM, parallel

    folder = hf_checkpoint()
    mesh = parallel.make_mesh()
    assert dict(zip(mesh.mesh_dim_names, mesh.shape)) == {"data": 1, "fsdp": 1, "tensor": 1}
    with pytest.raises(ValueError, match="needs 2 processes, the job has 1"):
        parallel.make_mesh(fsdp=2)
    sharded = parallel.from_pretrained_sharded(LlamaForCausalLM, folder, mesh)
    plain = LlamaForCausalLM.from_pretrained(folder)
    assert type(sharded) is LlamaForCausalLM
    for (name, a), b in zip(sharded.state_dict().items(), plain.state_dict().values()):
        assert torch.equal(a, b), name


def test_a_sharded_model_keeps_its_architecture_and_refuses_a_plain_save(one_process_job, hf_checkpoint, tmp_path):
    """FSDP2 makes the model's class FSDPLlamaForCausalLM: it still generates and is saved as
    LlamaForCausalLM; DTensor weights are saved only through save_pretrained_sharded."""
    import json

    import torch

    from llama_shared.checkpoints import Checkpoint
    from llama_torch import LlamaForCausalLM, parallel
    from llama_torch.sharding import apply_fsdp, apply_tensor_parallel

    folder = hf_checkpoint()
    mesh = parallel.make_mesh()
    model = LlamaForCausalLM.from_pretrained(folder)
    apply_tensor_parallel(model, mesh["tensor"])
    apply_fsdp(model, mesh["fsdp"])
    assert type(model).__name__ == "FSDPLlamaForCausalLM" and model.architecture == "LlamaForCausalLM"
    assert model.can_generate()
    assert model.load_checkpoint(Checkpoint(folder), parallel.place_block) == []  # checked as LlamaForCausalLM
    with pytest.raises(ValueError, match="save it with llama_torch.parallel.save_pretrained_sharded"):
        model.save_pretrained(tmp_path / "plain")
    parallel.save_pretrained_sharded(model, tmp_path / "gathered")
    assert json.loads((tmp_path / "gathered" / "config.json").read_text())["architectures"] == ["LlamaForCausalLM"]
    reloaded = LlamaForCausalLM.from_pretrained(tmp_path / "gathered")
    for name, value in LlamaForCausalLM.from_pretrained(folder).state_dict().items():
        assert torch.equal(reloaded.state_dict()[name], value), name


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
        "sampling without a seed agrees across ranks", "new score head (1, 1, 2)", "new score head (1, 2, 1)",
        "gqa (1, 2, 1) train step", "mha (1, 1, 2) train step",
        "gqa (1, 2, 1) save gathered on rank 0", "mha (1, 1, 2) save gathered on rank 0",
        "mqa: kv heads not divisible by 2", "a shard file missing on rank 1", "ranks given different meshes",
        "ranks given different dtypes"])


@pytest.mark.slow
def test_four_processes_equal_one(checkpoints, tmp_path):
    checks = run_checks(4, checkpoints, tmp_path)
    assert_all_ok(checks, 4, [
        "mha (1, 1, 4) logits", "mha (1, 1, 4) greedy generation", "gqa (1, 1, 4) logits",
        "gqa (1, 1, 4) greedy generation", "gqa (1, 2, 2) logits", "gqa (1, 2, 2) greedy generation",
        "new score head (2, 1, 2)", "gqa (1, 4, 1) train step", "gqa (1, 2, 2) train step", "mha (2, 1, 2) train step",
        "gqa (1, 2, 2) save gathered on rank 0", "gqa_2kv: kv heads not divisible by 4",
        "a shard file missing on rank 1", "ranks given different meshes", "ranks given different dtypes"])
