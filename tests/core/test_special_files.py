"""A model folder's files may be FIFOs or devices (issue 18): reading one would block forever or never
end. Each reader refuses them at once with an error naming the file."""

from __future__ import annotations

import os
import shutil

import pytest

from llama_shared.checkpoints import Checkpoint
from llama_shared.config import LlamaConfig
from llama_shared.errors import CheckpointError, ConfigError, GenerationError, TokenizerError
from llama_shared.generation import GenerationConfig
from llama_shared.tokenizers import AutoTokenizer

pytestmark = [pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="FIFOs are POSIX"),
              pytest.mark.usefixtures("fails_instead_of_hanging")]


@pytest.fixture
def folder(hf_checkpoint, tmp_path):
    copy = tmp_path / "model"
    shutil.copytree(hf_checkpoint(), copy)
    return copy


@pytest.mark.parametrize("kind, message", [("fifo", "is a FIFO"), ("device", "is a device")])
@pytest.mark.parametrize("name, read, error", [
    ("config.json", lambda f: LlamaConfig.from_pretrained(f), ConfigError),
    ("generation_config.json", lambda f: GenerationConfig.for_model(f, LlamaConfig.from_pretrained(f)),
     GenerationError),
    ("model.safetensors", lambda f: Checkpoint(f), CheckpointError),
    ("model.safetensors.index.json", lambda f: (os.remove(f / "model.safetensors"), Checkpoint(f)),
     CheckpointError),  # an index is read only where there is no model.safetensors, as in transformers
    ("tokenizer.model", lambda f: AutoTokenizer.from_pretrained(f), TokenizerError),
    ("tokenizer_config.json", lambda f: AutoTokenizer.from_pretrained(f), TokenizerError),
])
def test_a_special_file_is_refused_at_once(folder, trained_spm_path, make_special, kind, message, name, read,
                                           error):
    shutil.copy(trained_spm_path, folder / "tokenizer.model")
    (folder / "tokenizer_config.json").write_text("{}")
    make_special(folder / name, kind)
    with pytest.raises(error, match=f"{name} {message}, not a regular file"):
        read(folder)
