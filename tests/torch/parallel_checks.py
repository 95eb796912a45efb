"""Checks that need several processes, run as a script that spawns them with llama_torch.parallel.spawn
(gloo on the CPU); tests/torch/test_parallel.py runs it once per world size, so the processes start
once for a whole batch of checks.

    python tests/torch/parallel_checks.py WORLD OUT_FILE CHECKPOINTS_JSON

CHECKPOINTS_JSON maps names to tiny causal-LM checkpoint folders: "mha" (4 heads, 4 kv heads, biases, vocab
130), "gqa" (8 heads, 4 kv heads, tied embeddings), "gqa_2kv" (4 heads, 2 kv heads), "mqa" (1 kv
head), "sharded" (mha in several files) and "sharded_missing" (the same, one file gone; rank 1
loads it), and "save_to", a folder for the saved models. Every rank compares what it computed against the one-process twin it loads itself, and
rank 0 writes one JSON line per check and rank to OUT_FILE. The process group times out after 60 s,
so a check that leaves a rank waiting fails instead of hanging.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable

TOLERANCE = 1e-5
NEW_TOKENS = 8
TIMEOUT_S = 60.0
# (case, mesh) pairs each world size runs: forward and greedy generation, then training steps.
INFERENCE = {2: [("mha", (1, 1, 2)), ("gqa", (1, 1, 2)), ("gqa", (1, 2, 1))],
             4: [("mha", (1, 1, 4)), ("gqa", (1, 1, 4)), ("gqa", (1, 2, 2))]}
TRAINING = {2: [("gqa", (1, 2, 1)), ("mha", (1, 1, 2))],
            4: [("gqa", (1, 4, 1)), ("gqa", (1, 2, 2)), ("mha", (2, 1, 2))]}
NEW_HEAD = {2: [(1, 1, 2), (1, 2, 1)], 4: [(2, 1, 2)]}  # a sequence classifier loaded from a causal LM


def main(argv: list[str]) -> int:
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
    from llama_torch import parallel

    world, out_file = int(argv[0]), argv[1]
    with open(argv[2]) as f:
        folders = json.load(f)
    parallel.spawn(run_checks, world, folders, out_file, timeout_s=TIMEOUT_S, backend="gloo")
    with open(out_file) as f:
        return 0 if all(json.loads(line)["ok"] for line in f) else 1


def batch():
    """4 rows of 12 random tokens, rows 1 and 3 left-padded."""
    import torch

    ids = torch.randint(3, 128, (4, 12), generator=torch.Generator().manual_seed(0))
    mask = torch.ones_like(ids)
    mask[1, :4] = 0
    mask[3, :7] = 0
    return ids.masked_fill(mask == 0, 0), mask


def run_checks(folders: dict[str, str], out_file: str) -> None:
    import torch.distributed as dist

    results: list[dict] = []
    world = dist.get_world_size()
    for case, shape in INFERENCE[world]:
        check_inference(results, folders[case], case, shape)
    check_sampling_agrees(results, folders["gqa"])
    for shape in NEW_HEAD[world]:
        check_new_head(results, folders["gqa"], shape)
    for case, shape in TRAINING[world]:
        check_train_step(results, folders[case], case, shape, os.path.join(folders["save_to"], f"{case}-{shape}"))
    check_errors(results, folders)
    gathered: list = [None] * world
    dist.all_gather_object(gathered, results)
    if dist.get_rank() == 0:
        with open(out_file, "w") as f:
            for rank, lines in enumerate(gathered):
                for line in lines:
                    f.write(json.dumps({"rank": rank, **line}) + "\n")


def report(results: list[dict], name: str, ok: bool, **figures) -> None:
    results.append({"check": name, "ok": bool(ok), **figures})


def max_diff(a, b) -> float:
    return float((a.double() - b.double()).abs().max())


def check_inference(results: list[dict], folder: str, case: str, shape: tuple[int, int, int]) -> None:
    """Logits, every hidden state and greedy ids of the sharded model against one process; each rank
    holds its share of the q projection and of the KV cache's heads."""
    import torch
    from torch.distributed.tensor import DTensor

    from llama_torch import LlamaForCausalLM, parallel

    ids, mask = batch()
    reference = LlamaForCausalLM.from_pretrained(folder)
    with torch.no_grad():
        expected = reference(ids, attention_mask=mask, output_hidden_states=True)
    expected_ids = reference.generate(ids, mask, max_new_tokens=NEW_TOKENS, do_sample=False)

    mesh = parallel.make_mesh(*shape)
    model = parallel.from_pretrained_sharded(LlamaForCausalLM, folder, mesh)
    q_proj = model.model.layers[0].self_attn.q_proj.weight
    local = q_proj.to_local() if isinstance(q_proj, DTensor) else q_proj
    share = local.numel() / q_proj.numel()
    kv_heads = model._held_kv_heads()
    expected_kv = reference.config.num_key_value_heads // shape[2]
    report(results, f"{case} {shape} load", share == 1 / (shape[1] * shape[2]) and kv_heads == expected_kv,
           q_proj_share=share, kv_heads_held=kv_heads)
    with torch.no_grad():
        out = model(ids, attention_mask=mask, output_hidden_states=True)
    logits_diff = max_diff(out.logits, expected.logits)
    hidden_diff = max(max_diff(a, b) for a, b in zip(out.hidden_states, expected.hidden_states))
    report(results, f"{case} {shape} logits", logits_diff <= TOLERANCE and hidden_diff <= TOLERANCE,
           max_abs_diff=logits_diff, hidden_max_abs_diff=hidden_diff)
    tokens = parallel.generate(model, ids, mask, max_new_tokens=NEW_TOKENS, do_sample=False)
    report(results, f"{case} {shape} greedy generation", torch.equal(tokens, expected_ids),
           differing_tokens=int((tokens != expected_ids).sum()))


def check_sampling_agrees(results: list[dict], folder: str) -> None:
    """Sampling without a seed: every rank of a tensor-parallel model draws the same tokens."""
    import torch.distributed as dist

    from llama_torch import LlamaForCausalLM, parallel

    ids, mask = batch()
    mesh = parallel.make_mesh(tensor=dist.get_world_size(), fsdp=1)
    model = parallel.from_pretrained_sharded(LlamaForCausalLM, folder, mesh)
    tokens = parallel.generate(model, ids, mask, max_new_tokens=NEW_TOKENS, do_sample=True, top_k=0)
    everyone: list = [None] * dist.get_world_size()
    dist.all_gather_object(everyone, tokens.tolist())
    report(results, "sampling without a seed agrees across ranks", all(t == everyone[0] for t in everyone))


def check_new_head(results: list[dict], folder: str, shape: tuple[int, int, int]) -> None:
    """A task head the checkpoint lacks is drawn once for all ranks (rank 0's), so every rank computes
    the same scores, and with that head copied into the one-process twin, the same as it."""
    import warnings

    import torch
    import torch.distributed as dist
    from torch.distributed.tensor import DTensor

    from llama_torch import LlamaForSequenceClassification, parallel

    ids, mask = batch()
    torch.manual_seed(1000 + dist.get_rank())  # ranks seeded apart, as training scripts often do
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "score.weight not in the checkpoint: newly initialised"
        reference = LlamaForSequenceClassification.from_pretrained(folder)
        mesh = parallel.make_mesh(*shape)
        model = parallel.from_pretrained_sharded(LlamaForSequenceClassification, folder, mesh)
    score = model.score.weight
    with torch.no_grad():
        reference.score.weight.copy_(score.full_tensor() if isinstance(score, DTensor) else score)
        logits, expected = model(ids, attention_mask=mask).logits, reference(ids, attention_mask=mask).logits
    everyone: list = [None] * dist.get_world_size()
    dist.all_gather_object(everyone, logits.tolist())
    diff = max_diff(logits, expected)
    report(results, f"new score head {shape}", diff <= TOLERANCE and all(x == everyone[0] for x in everyone),
           max_abs_diff=diff)


def check_train_step(results: list[dict], folder: str, case: str, shape: tuple[int, int, int], save_to: str) -> None:
    """One AdamW step: the loss and every updated weight against one process on the whole batch; then
    the model saved (gathered on rank 0) and read back."""
    import torch
    from torch.distributed.tensor import DTensor

    from llama_shared.checkpoints import Checkpoint
    from llama_torch import LlamaForCausalLM, parallel

    ids, mask = batch()
    optimizer_args = dict(lr=1e-2, eps=1e-3)  # eps keeps near-zero gradients' rounding from being magnified
    reference = LlamaForCausalLM.from_pretrained(folder).train()
    optimizer = torch.optim.AdamW(reference.parameters(), **optimizer_args)
    loss = reference(ids, attention_mask=mask, labels=ids.masked_fill(mask == 0, -100)).loss
    loss.backward()
    optimizer.step()
    expected = reference.state_dict()

    mesh = parallel.make_mesh(*shape)
    model = parallel.from_pretrained_sharded(LlamaForCausalLM, folder, mesh)
    with torch.no_grad():  # an evaluation first: FSDP's root must not keep the whole parameters it gathered
        model(ids, attention_mask=mask)
    sharded_loss = parallel.train_step(model, torch.optim.AdamW(model.parameters(), **optimizer_args), mesh,
                                       {"input_ids": ids, "attention_mask": mask})
    param_diff = max(max_diff(v.full_tensor() if isinstance(v, DTensor) else v, expected[k])
                     for k, v in model.state_dict().items())
    loss_diff = abs(sharded_loss - loss.item())
    report(results, f"{case} {shape} train step", loss_diff <= TOLERANCE and param_diff <= TOLERANCE,
           loss_diff=loss_diff, param_max_abs_diff=param_diff)
    parallel.save_pretrained_sharded(model, save_to)
    saved = Checkpoint(save_to)
    tied = reference.config.tie_word_embeddings
    wanted = sorted(k for k in expected if not (tied and k == "lm_head.weight"))
    diff = max(max_diff(torch.from_numpy(saved.read(k)), expected[k]) for k in wanted)
    report(results, f"{case} {shape} save gathered on rank 0", sorted(saved.keys()) == wanted and diff <= TOLERANCE,
           max_abs_diff=diff)


def check_errors(results: list[dict], folders: dict[str, str]) -> None:
    """Bad input raises a clear error on every rank, and the ranks stay in step after it."""
    import torch.distributed as dist

    from llama_shared.errors import CheckpointError, ConfigError
    from llama_torch import LlamaForCausalLM, parallel

    rank, world = dist.get_rank(), dist.get_world_size()
    uneven = "mqa" if world == 2 else "gqa_2kv"
    expect_error(results, f"{uneven}: kv heads not divisible by {world}", ConfigError,
                 "on every rank: tensor parallelism over", lambda: parallel.from_pretrained_sharded(
                     LlamaForCausalLM, folders[uneven], parallel.make_mesh(tensor=world, fsdp=1)))
    folder = folders["sharded_missing"] if rank == 1 else folders["sharded"]
    expect_error(results, "a shard file missing on rank 1", CheckpointError, "rank 1 of", lambda: (
        parallel.from_pretrained_sharded(LlamaForCausalLM, folder, parallel.make_mesh(tensor=world, fsdp=1))))
    expect_error(results, "ranks given different meshes", ValueError, "different settings: mesh",
                 lambda: parallel.make_mesh(fsdp=1 if rank else world, tensor=world if rank else 1))
    expect_error(results, "ranks given different dtypes", ValueError, "different settings: dtype",
                 lambda: parallel.from_pretrained_sharded(LlamaForCausalLM, folders["mha"], parallel.make_mesh(),
                                                          dtype="bfloat16" if rank else "float32"))


def expect_error(results: list[dict], name: str, error_class: type, text: str, fn: Callable[[], object]) -> None:
    try:
        fn()
    except error_class as error:
        report(results, name, text in str(error), message=str(error)[:300])
    else:
        report(results, name, False, message="no error")


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
