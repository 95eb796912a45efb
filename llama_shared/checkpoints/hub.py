"""Locating a model: a local folder as given, or a hub repo id resolved through huggingface_hub's cache."""

from __future__ import annotations

import os
from collections.abc import Iterable

from llama_shared.errors import CheckpointError

# What a model folder needs from the hub: config, tokenizer, generation-config and safetensors
# files. Pickled weights are never fetched, so they can never be loaded.
MODEL_FILES = ("*.json", "*.safetensors", "tokenizer.model", "*.txt", "*.jinja")


def resolve_model_dir(path_or_repo_id: str | os.PathLike, required: Iterable[str] = ("config.json",),
                      allow_patterns: Iterable[str] = MODEL_FILES, revision: str | None = None) -> str:
    """A local folder (checked to hold the required files), or a hub repo id's snapshot folder.

    Works offline (HF_HUB_OFFLINE=1) when the files are cached: the hub is asked first, then the
    cache alone; if both fail the error gives the hub's reason.
    """
    path = os.fspath(path_or_repo_id)
    if os.path.isdir(path):
        for name in required:
            if not os.path.exists(os.path.join(path, name)):
                raise CheckpointError(f"{path} has no {name}")
        return path
    if os.path.exists(path) or path.startswith((".", "/")) or path.count("/") > 1:
        raise CheckpointError(f"{path} is not a directory (a model folder) or a hub repo id like "
                              f"'meta-llama/Llama-3.2-1B'")
    from huggingface_hub import snapshot_download

    patterns = list(allow_patterns)
    try:
        return snapshot_download(path, revision=revision, allow_patterns=patterns)
    except Exception as online_error:  # noqa: BLE001 - fall back to the cache, then report both
        try:
            return snapshot_download(path, revision=revision, allow_patterns=patterns, local_files_only=True)
        except Exception:  # noqa: BLE001
            raise CheckpointError(f"could not find {path!r} locally or on the hub: {online_error}") from None
