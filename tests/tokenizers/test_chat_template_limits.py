"""Chat templates come with models, so they are untrusted (issue 18): the sandbox still keeps them from
Python's internals, and now also from unbounded memory and time. Each hostile template gets a
TokenizerError saying which limit it hit, quickly; real templates render as before."""

from __future__ import annotations

import sys
import time

import pytest

from llama_shared.errors import TokenizerError
from llama_shared.tokenizers import sandbox
from llama_shared.tokenizers.chat_template import LLAMA3_CHAT_TEMPLATE, render_chat_template

CONVERSATION = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi there"}]
BIG = "{% set s = 'x' * 1000000 %}"
HOSTILE = {
    "string repeated 10**10 times": ("{{ 'x' * 10**10 }}", r"would build a value \(\*\)"),
    "a power of 10**10 digits": ("{{ 10 ** (10 ** 10) }}", r"\(\*\*\)"),
    "str.center to 10**10": ("{{ 'x'.center(10**10) }}", r"str\.center"),
    "center filter to 10**10": ("{{ 'x'|center(10**10) }}", r"\|center"),
    "doubling with ~": ("{% set ns = namespace(s='x') %}{% for i in range(64) %}{% set ns.s = ns.s ~ ns.s %}"
                        "{% endfor %}", r"builds a value \(~\)"),
    "doubling with +": ("{% set ns = namespace(s='x') %}{% for i in range(64) %}{% set ns.s = ns.s + ns.s %}"
                        "{% endfor %}", r"\(\+\)"),
    "replace filter": (BIG + "{{ s|replace('x', s) }}", r"\|replace"),
    "str.replace of the empty string": (BIG + "{{ s.replace('', s) }}", r"str\.replace"),
    "join of a repeated reference": (BIG + "{{ ([s] * 100)|join }}", r"\(\*\)"),
    "printf width": ("{{ '%1000000000d' % 1 }}", r"\(%\)"),
    "printf star width": ("{{ '%*d' % (1000000000, 1) }}", r"\(%\)"),
    "str.format width": ("{{ '{:>1000000000}'.format(1) }}", r"str\.format"),
    "nested str.format width": ("{{ '{0:{1}}'.format(1, 10**9) }}", r"str\.format"),
    "indent of many lines": ("{{ ('\\n' * 1000000)|indent(100000) }}", r"\|indent"),
    "wordwrap with a long wrapstring": (BIG + "{{ s|wordwrap(1, wrapstring='y' * 1000) }}", r"\|wordwrap"),
    "translate table": (BIG + "{{ s.translate(s.maketrans({'x': 'y' * 100000})) }}", r"str\.translate"),
    "tojson indent": ("{{ messages|tojson(indent=10**9) }}", r"\|tojson"),
    "range past jinja's cap": ("{{ range(10**9)|length }}", "range"),
    "output past the limit": ("{% for i in range(20) %}{{ 'x' * 1000000 }}{% endfor %}", "output of size"),
    "endless recursion": ("{% macro f(n) %}{{ f(n) }}{% endmacro %}{{ f(1) }}", "recursed too deeply"),
    "nested empty loops": ("{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}",
                           "ran for more than 0.5 s"),
    "loops over one range": ("{% set r = range(100000) %}{% for a in r %}{% for b in r %}{% endfor %}{% endfor %}",
                             "ran for more than 0.5 s"),
    "lipsum": ("{{ lipsum(10**6) }}", "'lipsum' is undefined"),
    "python internals": ("{{ ''.__class__.__mro__[1].__subclasses__() }}", "SecurityError"),
    "undefined variable": ("{{ foo.bar }}", "UndefinedError"),
    "type error": ("{{ messages + 1 }}", "TypeError"),
}


@pytest.fixture
def half_a_second(monkeypatch):
    monkeypatch.setattr(sandbox, "TIME_LIMIT", 0.5)


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_hostile_template_is_a_quick_clear_error(case, half_a_second):
    template, message = HOSTILE[case]
    trace = sys.gettrace()
    start = time.monotonic()
    with pytest.raises(TokenizerError, match=message):
        render_chat_template(template, CONVERSATION, add_generation_prompt=True, special_tokens={})
    assert time.monotonic() - start < 5
    assert sys.gettrace() is trace


def test_the_size_limit_grows_with_a_long_conversation():
    """A conversation of 40 M characters renders: the limit is four times the input when that is more."""
    document = [{"role": "user", "content": "x" * (40 * 2**20)}]
    rendered = render_chat_template(LLAMA3_CHAT_TEMPLATE, document, add_generation_prompt=True,
                                    special_tokens={"bos_token": "<|begin_of_text|>"})
    assert len(rendered) > 40 * 2**20


def test_real_templates_render_unchanged_and_template_errors_keep_their_words():
    rendered = render_chat_template(LLAMA3_CHAT_TEMPLATE, CONVERSATION, add_generation_prompt=True,
                                    special_tokens={"bos_token": "<|begin_of_text|>"})
    assert rendered.startswith("<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nBe brief.<|eot_id|>")
    with pytest.raises(TokenizerError, match="chat template error: roles must alternate"):
        render_chat_template("{{ raise_exception('roles must alternate') }}", CONVERSATION,
                             add_generation_prompt=True, special_tokens={})


def test_large_numbers_that_build_nothing_are_fine():
    template = "{% set ns = namespace(n=10**10) %}{{ ns.n }} {{ missing|default(10**12) }} {{ (2 ** 40)|string }}"
    assert render_chat_template(template, CONVERSATION, add_generation_prompt=False, special_tokens={}) == \
        "10000000000 1000000000000 1099511627776"
