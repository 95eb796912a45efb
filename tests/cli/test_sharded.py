"""`llama-twin parity` and `generate` with the twins sharded: the torch twin over 2 gloo processes
(spawned with --nproc, or started by torchrun), the Flax twin over 8 simulated CPU devices; each
against the unsharded run. Subprocesses, since XLA_FLAGS must be set before jax starts; a torch
process waits at most 60 s for the others, so a broken run fails instead of hanging."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys

import pytest

from llama_twin.cli import main as cli_main

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
ROW = re.compile(r"^(embeddings|layer \d+(?: \+ norm)?|logits)\s+([\d.e+-]+)\s?\s+([\d.e+-]+)\s+([\d.e+-]+)\s+(\d+)%$")
pytestmark = pytest.mark.slow


def run_cli(*args: str, launcher: tuple[str, ...] = (), devices: int = 1) -> subprocess.CompletedProcess:
    """python [launcher] -m llama_twin.cli ARGS in the repository root, jax on `devices` CPU devices."""
    env = {k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS", "RANK", "WORLD_SIZE")}
    env.update(JAX_PLATFORMS="cpu", XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}")
    return subprocess.run([sys.executable, *launcher, "-m", "llama_twin.cli", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=600)


def table_rows(text: str) -> dict[str, tuple[float, float, float, int]]:
    return {m.group(1): (float(m.group(2)), float(m.group(3)), float(m.group(4)), int(m.group(5)))
            for m in map(ROW.match, text.splitlines()) if m}


def test_parity_of_sharded_twins_matches_the_unsharded_report(hf_checkpoint):
    from llama_twin.cli.parity import prompt_ids
    from llama_twin.parity import parity_report

    checkpoint = hf_checkpoint(num_hidden_layers=4)
    result = run_cli("parity", checkpoint, "--backends", "flax", "torch", "--nproc", "2", "--timeout", "60", devices=8)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "torch: sharded over 2 processes, mesh 1,1,-1" in result.stdout
    assert "flax: sharded over 8 devices, mesh (data, fsdp, tensor) = (1, 1, 8)" in result.stdout
    assert "flax vs torch: agree within tolerance 0.0001 at every layer" in result.stdout

    ids, _ = prompt_ids(checkpoint, "", 128)
    unsharded = parity_report(checkpoint, ids, backends=["flax", "torch"]).table()
    sharded_rows, plain_rows = table_rows(result.stdout), table_rows(unsharded)
    assert list(sharded_rows) == list(plain_rows) == ["embeddings", "layer 0", "layer 1", "layer 2",
                                                      "layer 3 + norm", "logits"]
    for name, (max_abs, mean_abs, kl, top1) in sharded_rows.items():
        plain_max, plain_mean, plain_kl, plain_top1 = plain_rows[name]
        assert max_abs <= 1e-5 and abs(max_abs - plain_max) <= 1e-5, name
        assert kl <= 1e-10 and top1 == plain_top1 == 100, name


def test_generate_under_torchrun_prints_what_one_process_does(model_folder_with_tokenizer, tmp_path, capsys):
    folder = str(model_folder_with_tokenizer(tmp_path / "model"))
    args = ["generate", "-m", folder, "--backend", "torch", "--greedy", "--max-new-tokens", "8", "--timeout", "60",
            "The quick brown fox"]
    assert cli_main(args) == 0
    expected = capsys.readouterr().out
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    result = run_cli(*args, launcher=("-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-port", str(port)))
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout == expected  # rank 0 alone prints
    assert result.stderr.count("tokens, ") == 1


def test_a_tensor_size_that_splits_a_head_fails_on_every_rank(hf_checkpoint):
    result = run_cli("generate", "-m", hf_checkpoint(num_key_value_heads=1), "--backend", "torch", "--nproc", "2",
                     "--timeout", "60", "hello")
    assert result.returncode == 1
    for rank in (0, 1):
        assert f"llama-twin generate (rank {rank} of 2): opening the checkpoint, on every rank: tensor parallelism " \
               f"over 2 ranks needs num_key_value_heads divisible by 2" in result.stderr, result.stderr[-3000:]
