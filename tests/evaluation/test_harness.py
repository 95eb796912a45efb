"""lm-evaluation-harness models of both twins: their loglikelihoods (with and without context,
rolling over several windows) equal lm_eval's own Hugging Face model (HFLM) on the transformers copy
of the same weights (1e-4), their greedy generations equal HFLM's, and an lm_eval run on a small
local task prints its table (offline: the task's data are files written here)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

pytest.importorskip("lm_eval")
pytest.importorskip("accelerate")

from lm_eval.api.instance import Instance  # noqa: E402
from lm_eval.api.registry import get_model  # noqa: E402
from lm_eval.models.huggingface import HFLM  # noqa: E402

from llama_twin.evaluation import harness  # noqa: E402

TOLERANCE = 1e-4
PAIRS = [("The quick brown fox", " jumps over the lazy dog"), ("", "hello world"),
         ("Once upon a time ", "there was a king"), ("Question: what is two and two?\nAnswer:", " four")]
LONG_TEXT = "In the beginning God created the heaven and the earth. " * 12


@pytest.fixture(scope="module")
def hflm(eval_model_dir):
    model = HFLM(pretrained=str(eval_model_dir), batch_size=2, device="cpu", dtype="float32", max_length=64)
    return model


@pytest.fixture(scope="module", params=["llama-twin-torch", "llama-twin-flax"])
def twin_lm(request, eval_model_dir):
    return get_model(request.param)(pretrained=str(eval_model_dir), batch_size=3, max_length=64)


def requests(kind, args_list):
    return [Instance(kind, {}, args, index) for index, args in enumerate(args_list)]


def test_both_names_are_registered():
    assert get_model("llama-twin-flax") is harness.FlaxLlamaTwinLM
    assert get_model("llama-twin-torch") is harness.TorchLlamaTwinLM


def test_loglikelihoods_equal_lm_evals_hf_model(hflm, twin_lm):
    assert [twin_lm.tok_encode(c + x) for c, x in PAIRS] == [hflm.tok_encode(c + x) for c, x in PAIRS]
    expected = hflm.loglikelihood(requests("loglikelihood", PAIRS))
    got = twin_lm.loglikelihood(requests("loglikelihood", PAIRS))
    for (score, greedy), (expected_score, expected_greedy) in zip(got, expected):
        assert abs(score - expected_score) <= TOLERANCE * max(1.0, abs(expected_score))
        assert greedy == expected_greedy


def test_rolling_loglikelihood_over_several_windows_equals_lm_evals_hf_model(hflm, twin_lm):
    assert len(twin_lm.tok_encode(LONG_TEXT)) > 2 * 64
    expected = hflm.loglikelihood_rolling(requests("loglikelihood_rolling", [(LONG_TEXT,), ("short text",)]))
    got = twin_lm.loglikelihood_rolling(requests("loglikelihood_rolling", [(LONG_TEXT,), ("short text",)]))
    for score, expected_score in zip(got, expected):
        assert abs(score - expected_score) <= TOLERANCE * max(1.0, abs(expected_score))


def test_greedy_generation_equals_lm_evals_hf_model(hflm, twin_lm):
    asks = requests("generate_until", [("Once upon a time", {"until": ["\n"], "max_gen_toks": 6, "do_sample": False}),
                                       ("The quick", {"until": ["e"], "max_gen_toks": 6})])
    assert twin_lm.generate_until(asks) == hflm.generate_until(asks)


TASKS = {
    "tiny_choice": dict(output_type="multiple_choice", doc_to_text="{{question}}", doc_to_choice="{{choices}}",
                        doc_to_target="{{answer}}", metric_list=[{"metric": "acc"}]),
    "tiny_text": dict(output_type="loglikelihood_rolling", doc_to_text="", doc_to_target="{{text}}",
                      metric_list=[{"metric": "word_perplexity"}]),
    "tiny_generate": dict(output_type="generate_until", doc_to_text="{{question}}", doc_to_target="{{answer}}",
                          generation_kwargs={"until": ["\n"], "max_gen_toks": 4, "do_sample": False},
                          metric_list=[{"metric": "exact_match"}]),
}
DOCS = [{"question": "Two and two make", "choices": [" four", " five"], "answer": 0, "text": LONG_TEXT[:120]},
        {"question": "The sky is", "choices": [" green", " blue"], "answer": 1,
         "text": "And God said, let there be light."}]


def write_tasks(folder):
    """The three tasks as lm_eval YAML files reading one local JSONL file."""
    data = folder / "docs.jsonl"
    data.write_text("".join(json.dumps(doc) + "\n" for doc in DOCS))
    for name, spec in TASKS.items():
        task = {"task": name, "dataset_path": "json", "dataset_kwargs": {"data_files": {"test": str(data)}},
                "test_split": "test", **spec}
        (folder / f"{name}.yaml").write_text(json.dumps(task))   # JSON is YAML
    return folder


@pytest.mark.parametrize("backend", ["torch", "flax"])
def test_an_lm_eval_run_on_a_local_task_prints_its_table(eval_model_dir, tmp_path, backend):
    tasks = write_tasks(tmp_path)
    env = {**os.environ, "HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1", "JAX_PLATFORMS": "cpu",
           "HF_DATASETS_CACHE": str(tmp_path / "cache")}
    command = [sys.executable, "-m", "llama_twin.evaluation.harness", "--model", f"llama-twin-{backend}",
               "--model_args", f"pretrained={eval_model_dir},max_length=64", "--tasks", ",".join(TASKS),
               "--include_path", str(tasks), "--batch_size", "2"]
    result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=600,
                            cwd=os.path.dirname(os.path.dirname(os.path.dirname(__file__))))
    assert result.returncode == 0, result.stderr[-3000:]
    table = result.stdout
    assert "|    Tasks    |" in table or "Tasks" in table.splitlines()[-len(TASKS) - 4], table
    for name, metric in (("tiny_choice", "acc"), ("tiny_text", "word_perplexity"), ("tiny_generate", "exact_match")):
        assert any(name in line and metric in line for line in table.splitlines()), table
