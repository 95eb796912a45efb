"""Fixtures of the evaluation tests: a tiny random model folder with a tokenizer that transformers
and llama_shared read the same way (BOS added, non-legacy sentencepiece)."""

from __future__ import annotations

import json

import pytest


@pytest.fixture(scope="session")
def eval_model_dir(tmp_path_factory, model_folder_with_tokenizer):
    folder = model_folder_with_tokenizer(tmp_path_factory.mktemp("eval") / "model")
    config = {"tokenizer_class": "LlamaTokenizer", "add_bos_token": True, "legacy": False,
              "bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>"}
    (folder / "tokenizer_config.json").write_text(json.dumps(config))
    return folder
