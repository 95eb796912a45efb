"""EleutherAI lm-evaluation-harness models for both twins: "llama-twin-flax" and "llama-twin-torch".

lm_eval finds a model by name in its registry, which holds its own models and whatever a running
process registered with lm_eval.api.registry.register_model; it reads no plugin entry points. So
importing this module registers both names, and `python -m llama_twin.evaluation.harness ...` (or
`llama-twin lm-eval ...`) is lm_eval's own command line with them registered:

    python -m llama_twin.evaluation.harness --model llama-twin-flax --model_args pretrained=DIR --tasks TASKS

Scoring follows lm_eval's Hugging Face model (HFLM) token for token: TemplateLM's context and
continuation encoding, the context cut to max_length from the left, rolling windows of max_length
for loglikelihood_rolling, greedy generation cut at the stop strings and at EOS.
"""

from __future__ import annotations

import sys
from typing import Any

import numpy as np
from lm_eval import utils
from lm_eval.api.model import TemplateLM
from lm_eval.api.registry import register_model
from lm_eval.models.utils import handle_stop_sequences, normalize_gen_kwargs
from tqdm import tqdm

from llama_shared.tokenizers import AutoTokenizer
from llama_twin.backends import get_backend
from llama_twin.evaluation.scoring import score_targets


class LlamaTwinLM(TemplateLM):
    """One twin's causal LM and its folder's tokenizer as an lm_eval model.

    model_args: pretrained (a model folder or hub id; required), dtype ("float32", "bfloat16",
    "auto"), max_length (default: max_position_embeddings), max_gen_toks (256), add_bos_token
    (the tokenizer's own setting when unset), tokenizer (a folder, default pretrained).
    batch_size is lm_eval's --batch_size (a number; "auto" is not supported); --device places the
    torch twin (lm_eval's default "cuda" falls back to the CPU where CUDA is missing); the Flax twin
    runs on jax's default device.
    """

    backend_name = ""

    def __init__(self, pretrained: str, dtype: str | None = None, batch_size: int | str = 1,
                 max_length: int | None = None, max_gen_toks: int = 256, add_bos_token: bool | None = None,
                 tokenizer: str | None = None, device: str | None = None, max_batch_size: int | None = None,
                 **ignored: Any):
        super().__init__()
        if str(batch_size).startswith("auto"):
            raise ValueError("batch_size 'auto' is not supported by llama-twin's lm_eval models: give a number")
        self.backend = get_backend(self.backend_name)
        if self.backend_name == "torch":
            self.model = self.backend.causal_lm.from_pretrained(pretrained, dtype=dtype, device=_torch_device(device))
        else:
            self.model = self.backend.causal_lm.from_pretrained(pretrained, dtype=dtype)
        self.tokenizer = AutoTokenizer.from_pretrained(tokenizer or pretrained)
        self.batch_size = int(batch_size)
        self._max_length = int(max_length) if max_length else self.model.config.max_position_embeddings
        self.max_gen_toks = int(max_gen_toks)
        self.add_bos_token = add_bos_token

    @property
    def eot_token_id(self) -> int:
        return self.tokenizer.eos_token_id

    @property
    def prefix_token_id(self) -> int:
        """What an empty context is replaced by: BOS, else EOS (as HFLM)."""
        bos = self.tokenizer.bos_token_id
        return bos if bos is not None else self.tokenizer.eos_token_id

    @property
    def max_length(self) -> int:
        return self._max_length

    def tok_encode(self, string: str, add_special_tokens: bool | None = None, **kwargs: Any) -> list[int]:
        """HFLM's encoding: add_special_tokens as asked, else add_bos_token, else the tokenizer's
        default; never a second BOS when the string starts with it."""
        if add_special_tokens is None:
            add_special_tokens = self.add_bos_token
        if add_special_tokens is None:
            bos = self.tokenizer.decode([self.prefix_token_id])
            add_special_tokens = not (bos and string.startswith(bos))
        return list(self.tokenizer.encode(string, add_special_tokens=add_special_tokens))

    def tok_decode(self, tokens: list[int], skip_special_tokens: bool = True) -> str:
        return self.tokenizer.decode(tokens, skip_special_tokens=skip_special_tokens)

    def _loglikelihood_tokens(self, requests: list, disable_tqdm: bool = False,
                              **kwargs: Any) -> list[tuple[float, bool]]:
        """(sum of log p of the continuation's tokens, whether each was the argmax) per request, the
        input cut to max_length tokens from the left; longest requests batched first."""
        rows = []
        for _, context, continuation in requests:
            tokens = (list(context) + list(continuation))[-(self.max_length + 1):]
            rows.append((tokens[:-1], tokens[1:], len(continuation)))
        order = sorted(range(len(rows)), key=lambda i: -len(rows[i][0]))
        results: list[tuple[float, bool]] = [(0.0, False)] * len(rows)
        for start in tqdm(range(0, len(order), self.batch_size), disable=disable_tqdm, desc="loglikelihood"):
            batch = order[start:start + self.batch_size]
            scores = score_targets(self.backend, self.model, [rows[i][:2] for i in batch], self.pad_token_id)
            for i, (log_probs, greedy) in zip(batch, scores):
                length = rows[i][2]
                results[i] = (float(np.sum(log_probs[-length:])), bool(np.all(greedy[-length:])))
                self.cache_hook.add_partial("loglikelihood", requests[i][0], results[i])
        return results

    @property
    def pad_token_id(self) -> int:
        pad = self.tokenizer.pad_token_id
        return pad if pad is not None else self.eot_token_id

    def loglikelihood_rolling(self, requests: list, disable_tqdm: bool = False) -> list[float]:
        """Log-likelihood of whole texts in disjoint windows of max_length tokens (each window sees
        the tokens before it within max_length), as HFLM."""
        results = []
        for (string,) in tqdm([request.args for request in requests], disable=disable_tqdm, desc="rolling"):
            windows = map(utils.make_disjoint_window,
                          utils.get_rolling_token_windows(token_list=self.tok_encode(string),
                                                          prefix_token=self.prefix_token_id,
                                                          max_seq_len=self.max_length, context_len=1))
            scores = self._loglikelihood_tokens([(None, *window) for window in windows], disable_tqdm=True)
            total = sum(score for score, _ in scores)
            self.cache_hook.add_partial("loglikelihood_rolling", (string,), total)
            results.append(total)
        return results

    def generate_until(self, requests: list, disable_tqdm: bool = False) -> list[str]:
        """Greedy (or sampled, as gen_kwargs say) continuations, cut at the first stop string."""
        results = []
        eos = self.tok_decode([self.eot_token_id], skip_special_tokens=False)
        for context, gen_kwargs in tqdm([request.args for request in requests], disable=disable_tqdm,
                                        desc="generate_until"):
            kwargs = normalize_gen_kwargs(dict(gen_kwargs), self.max_gen_toks)
            until = handle_stop_sequences(kwargs.pop("until", None), eos=eos)
            max_new = kwargs.pop("max_gen_toks")
            if max_new >= self.max_length:
                raise ValueError(f"max_gen_toks {max_new} must be below the model's max_length {self.max_length}")
            ids = self.tok_encode(context)[-(self.max_length - max_new):]
            do_sample = bool(kwargs.get("do_sample", False))
            generated = self.model.generate(self.backend.from_numpy(np.asarray([ids], np.int64)),
                                            max_new_tokens=max_new, do_sample=do_sample,
                                            temperature=kwargs.get("temperature") if do_sample else None)
            text = self.tok_decode(list(np.asarray(generated)[0, len(ids):]))
            for stop in until:
                if stop:
                    text = text.split(stop)[0]
            self.cache_hook.add_partial("generate_until", (context, gen_kwargs), text)
            results.append(text)
        return results


def _torch_device(device: str | None) -> str:
    import torch

    if device is None or (device.startswith("cuda") and not torch.cuda.is_available()):
        return "cpu"
    return device


@register_model("llama-twin-flax")
class FlaxLlamaTwinLM(LlamaTwinLM):
    """The Flax twin (JAX)."""

    backend_name = "flax"


@register_model("llama-twin-torch")
class TorchLlamaTwinLM(LlamaTwinLM):
    """The PyTorch twin."""

    backend_name = "torch"


def main(argv: list[str] | None = None) -> None:
    """lm_eval's command line, with llama-twin's models registered."""
    from lm_eval.__main__ import cli_evaluate

    if argv is not None:
        sys.argv = [sys.argv[0], *argv]
    cli_evaluate()


if __name__ == "__main__":
    main()
