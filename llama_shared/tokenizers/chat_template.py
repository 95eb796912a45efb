"""Chat templates: jinja2 rendering in the sandbox transformers uses, and the Llama 2 [INST] and
Llama 3 header formats for tokenizers whose files carry no chat_template."""

from __future__ import annotations

import json
from datetime import datetime
from functools import lru_cache
from typing import Any

from llama_shared.errors import TokenizerError

# The chat_template of meta-llama/Llama-2-7b-chat-hf: [INST] turns, optional <<SYS>> block in the first.
LLAMA2_CHAT_TEMPLATE = (
    "{% if messages[0]['role'] == 'system' %}{% set loop_messages = messages[1:] %}"
    "{% set system_message = messages[0]['content'] %}{% else %}{% set loop_messages = messages %}"
    "{% set system_message = false %}{% endif %}{% for message in loop_messages %}"
    "{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}"
    "{% if loop.index0 == 0 and system_message != false %}"
    "{% set content = '<<SYS>>\\n' + system_message + '\\n<</SYS>>\\n\\n' + message['content'] %}"
    "{% else %}{% set content = message['content'] %}{% endif %}"
    "{% if message['role'] == 'user' %}{{ bos_token + '[INST] ' + content.strip() + ' [/INST]' }}"
    "{% elif message['role'] == 'assistant' %}{{ ' '  + content.strip() + ' ' + eos_token }}{% endif %}"
    "{% endfor %}"
)

# The chat_template of meta-llama/Meta-Llama-3-8B-Instruct: header-delimited turns ending in <|eot_id|>.
LLAMA3_CHAT_TEMPLATE = (
    "{% set loop_messages = messages %}{% for message in loop_messages %}"
    "{% set content = '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n'"
    "+ message['content'] | trim + '<|eot_id|>' %}"
    "{% if loop.index0 == 0 %}{% set content = bos_token + content %}{% endif %}"
    "{{ content }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{% endif %}"
)


def _raise_exception(message: str) -> None:
    raise TokenizerError(f"chat template error: {message}")


def _tojson(value: Any, ensure_ascii: bool = False, indent: int | None = None, separators: Any = None,
            sort_keys: bool = False) -> str:
    return json.dumps(value, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)


@lru_cache(maxsize=16)
def _compile(template: str):
    import jinja2

    from llama_shared.tokenizers.sandbox import BoundedEnvironment  # jinja2 is imported when a template is used

    env = BoundedEnvironment(trim_blocks=True, lstrip_blocks=True)
    env.add_filters(tojson=_tojson)
    env.globals["raise_exception"] = _raise_exception
    env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
    try:
        return env.from_string(template)
    except jinja2.TemplateSyntaxError as exc:
        raise TokenizerError(f"chat_template is not valid jinja2 (line {exc.lineno}): {exc.message}") from None


def render_chat_template(template: str, messages: list[dict[str, Any]], *, add_generation_prompt: bool,
                         special_tokens: dict[str, str], **kwargs: Any) -> str:
    """Render `messages` as transformers' apply_chat_template(tokenize=False) does, within the
    sandbox's limits on size and time (llama_shared.tokenizers.sandbox)."""
    if not isinstance(template, str):
        raise TokenizerError(f"chat_template must be a string, got {type(template).__name__}")
    if not isinstance(messages, (list, tuple)) or not all(isinstance(m, dict) for m in messages):
        raise TokenizerError("a conversation must be a list of {'role': ..., 'content': ...} dicts")
    from llama_shared.tokenizers.sandbox import render_bounded

    variables = {**special_tokens, **kwargs, "messages": list(messages), "add_generation_prompt": add_generation_prompt}
    return render_bounded(_compile(template), variables)
