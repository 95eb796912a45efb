"""Fixtures shared across the test folders: tiny random transformers checkpoints saved once per
session and reused, the tokenizer files, a model folder that carries a tokenizer, and the
transformers / torch twin / Flax twin trios the generation tests of tests/flax, tests/torch and
tests/twins share. Case tables that parametrize tests live in tests/cases.py (a fixture cannot
parametrize)."""

from __future__ import annotations

import copy
import json
import os
import pickle
import shutil
import subprocess
import sys
from pathlib import Path

os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402
from hypothesis import settings  # noqa: E402

from tests import tokenizer_files  # noqa: E402

# Fuzz tests are reproducible: the same examples on every run and machine, none remembered between runs.
settings.register_profile("reproducible", derandomize=True, database=None, deadline=None)
settings.load_profile("reproducible")

TINY = dict(vocab_size=128, hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, max_position_embeddings=512, pad_token_id=0, bos_token_id=1, eos_token_id=2)


def _tiny_hf_config(**overrides):
    """A transformers LlamaConfig for a tiny model (GQA 4/2 by default); overrides change any field.
    They are copied first: transformers 5 adds rope_theta to the rope_scaling dict it is given."""
    from transformers import LlamaConfig

    return LlamaConfig(**copy.deepcopy({**TINY, **overrides}))


def _randomize(model) -> None:
    """Give every parameter random values, norms and biases included (transformers' init leaves norms
    at 1 and biases at 0, where a wrong transpose or a missing bias would go unseen). The scale makes
    logits of order one, so a 1e-4 tolerance is tight."""
    import torch

    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith("norm.weight"):
                param.copy_(1 + 0.2 * torch.randn_like(param))
            elif name.endswith("bias"):
                param.copy_(0.1 * torch.randn_like(param))
            else:
                param.copy_(0.08 * torch.randn_like(param))


# ------------------------------------------------------------------------------------------------
# Tiny random checkpoints


@pytest.fixture(scope="session")
def tiny_hf_config():
    """factory(**overrides) -> transformers LlamaConfig of the tiny model (TINY with the overrides)."""
    return _tiny_hf_config


@pytest.fixture(scope="session")
def randomize():
    """function(model): random values for every parameter of a transformers model, in place."""
    return _randomize


@pytest.fixture(scope="session")
def hf_checkpoint(tmp_path_factory, request):
    """factory(**config_overrides, model_class="LlamaForCausalLM", dtype=None, config_form="5.x") ->
    folder of a saved random transformers model; the same arguments return the same folder (built
    once). config_form "4.x" writes the config.json that transformers 4.57.6 writes for the same
    settings (rope_theta and rope_scaling at the top level) beside the same weights."""
    import torch
    import transformers

    made: dict[str, str] = {}

    def build(model_class: str = "LlamaForCausalLM", seed: int = 0, dtype=None, config_form: str = "5.x",
              **overrides) -> str:
        key = json.dumps([model_class, seed, str(dtype), config_form, overrides], sort_keys=True, default=str)
        if key in made:
            return made[key]
        if config_form == "4.x":
            folder = tmp_path_factory.mktemp(f"{model_class}-4x")
            shutil.copytree(build(model_class, seed, dtype, **overrides), folder, dirs_exist_ok=True)
            legacy = request.getfixturevalue("transformers_4")
            written = json.loads((folder / "config.json").read_text())
            config = legacy("config_dict", overrides={**TINY, **overrides})
            config["architectures"] = written["architectures"]
            config["torch_dtype"] = written.get("dtype", written.get("torch_dtype"))
            (folder / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True))
        else:
            torch.manual_seed(seed)
            model = getattr(transformers, model_class)(_tiny_hf_config(**overrides)).eval()
            _randomize(model)
            if dtype is not None:
                model = model.to(dtype)
            folder = tmp_path_factory.mktemp(model_class)
            model.save_pretrained(folder)
        made[key] = str(folder)
        return made[key]

    return build


# ------------------------------------------------------------------------------------------------
# transformers 4.57.6 beside transformers 5 (tests/oracle/legacy_worker.py)

LEGACY_TRANSFORMERS = Path(os.environ.get("LLAMA_TWIN_TRANSFORMERS_4",
                                          Path(__file__).resolve().parents[1] / ".oracle" / "transformers-4.57.6"))
LEGACY_INSTALL = ("pip install --upgrade --no-deps --target .oracle/transformers-4.57.6 "
                  "-r tests/oracle/transformers-4.57.6.txt")


class LegacyTransformers:
    """transformers 4.57.6 in a subprocess: call(function name, **kwargs) runs a function of
    tests/oracle/legacy_worker.py there and returns its result (numpy arrays, plain values)."""

    def __init__(self, site: Path):
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")])}
        worker = Path(__file__).parent / "oracle" / "legacy_worker.py"
        self.process = subprocess.Popen([sys.executable, str(worker)], stdin=subprocess.PIPE,
                                        stdout=subprocess.PIPE, env=env)

    def __call__(self, function: str, **kwargs):
        pickle.dump((function, kwargs), self.process.stdin)
        self.process.stdin.flush()
        status, result = pickle.load(self.process.stdout)
        if status != "ok":
            raise RuntimeError(f"transformers 4.57.6 failed in {function}:\n{result}")
        return result

    def close(self) -> None:
        self.process.stdin.close()
        self.process.wait(timeout=60)


class LegacyTokenizer:
    """A transformers 4.57.6 tokenizer (its slow sentencepiece LlamaTokenizer, its LlamaTokenizerFast
    converter) held in the legacy process: attribute reads, writes and method calls are forwarded."""

    def __init__(self, process: LegacyTransformers, kind: str, *args, **kwargs):
        object.__setattr__(self, "_legacy", process)
        object.__setattr__(self, "_handle", process("make_tokenizer", kind=kind, args=list(args), kwargs=kwargs))

    def __getattr__(self, name: str):
        value = self._legacy("tokenizer_call", handle=self._handle, name=name)
        if value != "<method>":
            return value
        return lambda *args, **kwargs: self._legacy("tokenizer_call", handle=self._handle, name=name,
                                                    args=list(args), kwargs=kwargs)

    def __call__(self, *args, **kwargs):
        return self._legacy("tokenizer_call", handle=self._handle, name="__call__", args=list(args), kwargs=kwargs)

    def __len__(self) -> int:
        return self._legacy("tokenizer_call", handle=self._handle, name="__len__", args=[])

    def __setattr__(self, name: str, value) -> None:
        self._legacy("tokenizer_call", handle=self._handle, name=name, value=value, set_value=True)


@pytest.fixture(scope="session")
def legacy_tokenizer(transformers_4):
    """factory(class name, *args, **kwargs) -> that transformers 4.57.6 tokenizer class, in its process."""
    return lambda kind, *args, **kwargs: LegacyTokenizer(transformers_4, kind, *args, **kwargs)


@pytest.fixture(scope="session")
def transformers_4():
    """transformers 4.57.6 (the Flax classes' oracle and the 4.x config form) in a subprocess, started
    once per session: transformers_4("outputs", folder=..., model_class=..., inputs=..., fields=...)."""
    if not (LEGACY_TRANSFORMERS / "transformers").is_dir():
        pytest.fail(f"transformers 4.57.6 is not installed at {LEGACY_TRANSFORMERS}; run `{LEGACY_INSTALL}` "
                    f"(the README's test command does) or point LLAMA_TWIN_TRANSFORMERS_4 at such a folder")
    legacy = LegacyTransformers(LEGACY_TRANSFORMERS)
    assert legacy("version") == "4.57.6"
    yield legacy
    legacy.close()


# ------------------------------------------------------------------------------------------------
# Tokenizers (tests/tokenizer_files.py builds them, once per process)


@pytest.fixture(scope="session")
def trained_spm_path() -> Path:
    """tokenizer.model of a Llama-style BPE sentencepiece model (vocab 1000, byte fallback) trained
    by the tests."""
    return tokenizer_files.trained_spm_path()


@pytest.fixture(scope="session")
def llama3_tiktoken_path() -> Path:
    """Meta's Llama 3 tokenizer.model as shipped inside the llama-models package."""
    return tokenizer_files.llama3_tiktoken_path()


@pytest.fixture(scope="session")
def hf_llama3_fast():
    """factory(special_tokens: tuple) -> transformers' PreTrainedTokenizerFast for Meta's Llama 3 file
    (built once per tuple)."""
    return tokenizer_files.hf_llama3_fast


SPM_VOCAB = 1000   # the size of the test-trained sentencepiece model


@pytest.fixture(scope="session")
def model_folder_with_tokenizer(hf_checkpoint, trained_spm_path):
    """factory(destination) -> destination, a copy of a random transformers checkpoint (vocab 1000)
    plus the test sentencepiece tokenizer, for the pipeline, CLI and streaming tests."""

    def make(destination: Path) -> Path:
        shutil.copytree(hf_checkpoint(vocab_size=SPM_VOCAB), destination)
        shutil.copy(trained_spm_path, destination / "tokenizer.model")
        return destination

    return make


# ------------------------------------------------------------------------------------------------
# Generation: transformers, the torch twin and the Flax twin on the same weights


LLAMA3_ROPE = dict(rope_type="llama3", factor=8.0, low_freq_factor=1.0, high_freq_factor=4.0,
                   original_max_position_embeddings=64)
GENERATION_VARIANTS = {
    "mha-llama3": dict(num_key_value_heads=4, rope_scaling=LLAMA3_ROPE, rope_theta=500000.0),
    "gqa-llama3": dict(num_key_value_heads=2, rope_scaling=LLAMA3_ROPE, rope_theta=500000.0),
}


@pytest.fixture(scope="session")
def left_padded_batch():
    """function(lengths, vocab=128, seed=0) -> (ids, mask): torch rows of the given real lengths,
    left-padded with pad id 0, token ids from 3 up (past bos/eos)."""
    import torch

    def batch(lengths: list[int], vocab: int = 128, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
        generator = torch.Generator().manual_seed(seed)
        width = max(lengths)
        ids = torch.zeros(len(lengths), width, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for row, length in enumerate(lengths):
            ids[row, width - length:] = torch.randint(3, vocab, (length,), generator=generator)
            mask[row, width - length:] = 1
        return ids, mask

    return batch


@pytest.fixture(scope="module")
def one_torch_thread():
    """Tiny matmuls on a shared 2-core box run 20x faster without OpenMP's second thread (use with
    pytestmark = pytest.mark.usefixtures("one_torch_thread"))."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def generation_models(hf_checkpoint):
    """factory(variant) -> (transformers model, torch twin, Flax twin) on the same random weights of a
    GENERATION_VARIANTS config, loaded once per session. Tests that change a model's weights or
    generation_config put them back."""
    import transformers

    from llama_flax import FlaxLlamaForCausalLM
    from llama_torch import LlamaForCausalLM

    loaded = {}

    def load(variant: str):
        if variant not in loaded:
            folder = hf_checkpoint(**GENERATION_VARIANTS[variant])
            hf = transformers.LlamaForCausalLM.from_pretrained(folder).eval()
            loaded[variant] = (hf, LlamaForCausalLM.from_pretrained(folder), FlaxLlamaForCausalLM.from_pretrained(folder))
        return loaded[variant]

    return load


@pytest.fixture(params=sorted(GENERATION_VARIANTS))
def all_variants(request, generation_models):
    """generation_models of each variant in turn."""
    return generation_models(request.param)


@pytest.fixture
def models(generation_models):
    """generation_models of the gqa-llama3 variant."""
    return generation_models("gqa-llama3")


# ------------------------------------------------------------------------------------------------
# Special files in a model folder (core/test_special_files, conversion/test_convert)


@pytest.fixture
def fails_instead_of_hanging():
    """Turn a read that blocks into a test failure after 20 s (SIGALRM interrupts a blocked open or read)."""
    import signal

    def hung(signum, frame):
        raise AssertionError("a reader blocked on a special file")

    previous = signal.signal(signal.SIGALRM, hung)
    signal.alarm(20)
    yield
    signal.alarm(0)
    signal.signal(signal.SIGALRM, previous)


@pytest.fixture(scope="session")
def make_special():
    """function(path, kind): replace path by a FIFO (kind "fifo") or a symlink to /dev/zero ("device")."""
    def make(path, kind: str) -> None:
        if os.path.lexists(path):
            os.remove(path)
        if kind == "fifo":
            os.mkfifo(path)
        else:
            os.symlink("/dev/zero", path)

    return make
