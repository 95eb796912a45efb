"""The jinja2 sandbox chat templates render in, with limits on what a template may build and for how long.

A chat template comes with a model, so it is untrusted: jinja2's ImmutableSandboxedEnvironment (as in
transformers) keeps it from Python's internals, and this module keeps it from exhausting memory or
time. Every value a template makes (operators, ``~``, calls, filters, output) is checked against a
size limit, and the operations that can multiply a size in one step (``*``, ``**``, ``%``, widths,
replace, join, indent, wordwrap, translate, ...) are checked before they run, from their arguments;
the whole output counts against the same limit; a trace on the template's own frames stops it when
its time is up (loops that build nothing included); runaway recursion is caught. All of these raise
TokenizerError saying which limit was hit.
"""

from __future__ import annotations

import json
import math
import re
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from functools import wraps
from typing import Any

import jinja2
import jinja2.ext
from jinja2.compiler import CodeGenerator
from jinja2.nodes import EvalContext
from jinja2.runtime import Context
from jinja2.sandbox import ImmutableSandboxedEnvironment

from llama_shared.errors import TokenizerError

# Characters a template may build in one value or in its whole output (at least; four times the
# size of the conversation when that is more), and seconds it may run.
SIZE_LIMIT = 16 * 2**20
TIME_LIMIT = 5.0
TEMPLATE_FILE = "<template>"
_NUMBER = re.compile(r"\d+")


class Limits:
    """The size and time one render may take; the deadline is set when it starts."""

    def __init__(self, size: int, seconds: float):
        self.size, self.seconds, self.deadline = size, seconds, math.inf

    def check_size(self, size: int, what: str) -> None:
        if size > self.size:
            raise TokenizerError(f"chat template {what} of size {size}, over the limit of {self.size}")

    def check_time(self) -> None:
        if time.monotonic() > self.deadline:
            raise TokenizerError(f"chat template ran for more than {self.seconds:g} s and was stopped")


def size_of(value: Any, limit: int) -> int:
    """The size of a value: characters for a string, items and their sizes for a container (a container
    held several times counts each time, as printing or joining it would), 1 for anything else;
    counted only until limit is passed, so that sizing a huge value costs no more than limit."""
    sizes: dict[int, int] = {}
    alive: list[Any] = []  # keeps every container measured alive, so that no id is reused meanwhile

    def measure(item: Any) -> int:
        if isinstance(item, (str, bytes)):
            return len(item)
        if not isinstance(item, (list, tuple, set, frozenset, dict)):
            return 1
        if id(item) in sizes:
            return sizes[id(item)]
        alive.append(item)
        sizes[id(item)] = limit + 1  # a container inside itself is over any limit
        total = len(item) + 1
        for child in (item for pair in item.items() for item in pair) if isinstance(item, dict) else item:
            total += measure(child)
            if total > limit:
                break
        sizes[id(item)] = total
        return total

    return measure(value)


_CURRENT: ContextVar[Limits] = ContextVar("chat_template_limits", default=Limits(SIZE_LIMIT, TIME_LIMIT))


class _Generator(CodeGenerator):
    """Compiles ``a ~ b`` through the environment's size check (jinja2 joins it in place otherwise)."""

    def visit_Concat(self, node: Any, frame: Any) -> None:
        self.write("environment.checked_value(")
        super().visit_Concat(node, frame)
        self.write(", '~')")


class BoundedEnvironment(ImmutableSandboxedEnvironment):
    """ImmutableSandboxedEnvironment whose values, output and time are bounded by self.limits."""

    code_generator_class = _Generator
    intercepted_binops = frozenset({"+", "*", "**", "%"})

    def __init__(self, **options: Any):
        super().__init__(extensions=[jinja2.ext.loopcontrols], finalize=self._finalize, **options)
        self.filters = {name: self._bounded(name, function) for name, function in self.filters.items()}
        del self.globals["lipsum"]  # builds n paragraphs of text: no template needs it

    @property
    def limits(self) -> Limits:
        """The limits of the render in progress in this thread (see render_bounded)."""
        return _CURRENT.get()

    def add_filters(self, **filters: Any) -> None:
        """Add filters, bounded like the built-in ones."""
        self.filters.update({name: self._bounded(name, function) for name, function in filters.items()})

    def checked_value(self, value: Any, what: str) -> Any:
        self.limits.check_time()
        self.limits.check_size(size_of(value, self.limits.size), f"builds a value ({what})")
        return value

    def call_binop(self, context: Any, operator: str, left: Any, right: Any) -> Any:
        self.limits.check_size(_binop_size(operator, left, right, self.limits.size),
                               f"would build a value ({operator})")
        return self.checked_value(super().call_binop(context, operator, left, right), operator)

    def call(__self, __context: Any, __obj: Any, *args: Any, **kwargs: Any) -> Any:  # noqa: N805 - jinja2's names
        method = getattr(__obj, "__wrapped__", __obj)  # the sandbox wraps str.format in a function of its own
        name = getattr(method, "__name__", type(method).__name__)
        owner = getattr(method, "__self__", None)
        if isinstance(owner, str):
            __self.limits.check_size(_call_size(name, owner, args, kwargs, __self.limits.size),
                                     f"would build a value (str.{name})")
        return __self.checked_value(super().call(__context, __obj, *args, **kwargs), f"{name}()")

    def _finalize(self, value: Any) -> Any:
        return self.checked_value(value, "output")

    def _bounded(self, name: str, function: Any) -> Any:
        """A filter that checks its arguments' promise and its result's size."""
        @wraps(function)
        def bounded(*args: Any, **kwargs: Any) -> Any:
            plain = [a for a in args if not _is_jinja_state(a)]
            value, rest = (plain[0], plain[1:]) if plain else (None, [])
            self.limits.check_size(_filter_size(name, value, rest, kwargs, self.limits.size),
                                   f"would build a value (|{name})")
            return self.checked_value(function(*args, **kwargs), f"|{name}")

        return bounded


def _is_jinja_state(value: Any) -> bool:
    """The context, eval context or environment jinja2 passes to some filters first."""
    return isinstance(value, (Context, EvalContext, jinja2.Environment))


def _ints_size(args: Any, kwargs: Any) -> int:
    """The largest integer among the arguments (a width or a count is a size a call may build)."""
    ints = [a for a in (*args, *kwargs.values()) if isinstance(a, int) and not isinstance(a, bool)]
    return max((abs(i) for i in ints), default=0)


def _binop_size(operator: str, left: Any, right: Any, limit: int) -> int:
    if operator == "*":
        for sequence, count in ((left, right), (right, left)):
            if isinstance(sequence, (str, list, tuple)) and isinstance(count, int):
                return size_of(sequence, limit) * max(count, 0)
        return 0
    if operator == "**":
        if isinstance(left, int) and isinstance(right, int) and abs(left) > 1 and right > 0:
            return right * abs(left).bit_length() // 3  # about the decimal digits of the result
        return 0
    if operator == "%" and isinstance(left, str):
        return _format_size(left, right if isinstance(right, tuple) else (right,), {}, limit)
    return size_of(left, limit) + size_of(right, limit)


def _format_size(template: str, args: Any, kwargs: Any, limit: int) -> int:
    """An upper bound of a printf or str.format result: the template, its arguments, and every number
    written in it or passed (any may be a width or precision)."""
    numbers = sum(min(int(n), limit + 1) if len(n) < 12 else limit + 1 for n in _NUMBER.findall(template))
    given = size_of(list(args), limit) + size_of(dict(kwargs), limit)
    return len(template) + given + numbers + _ints_size(args, kwargs)


def _call_size(name: str, text: str, args: Any, kwargs: Any, limit: int) -> int:
    """An upper bound of what a str method returns, for those that can build more than they are given."""
    if name in ("center", "ljust", "rjust", "zfill"):
        return len(text) + _ints_size(args, kwargs)
    if name == "expandtabs":
        return len(text) * max(_ints_size(args, kwargs), 8)
    if name == "replace" and args:
        return _replace_size(text, *args[:2], limit) if len(args) >= 2 else 0
    if name == "join" and args:
        items = list(args[0]) if isinstance(args[0], (list, tuple, set, dict, str)) else []
        return size_of(items, limit) + len(text) * len(items)
    if name in ("format", "format_map"):
        return _format_size(text, args, kwargs, limit)
    if name == "translate" and args and isinstance(args[0], dict):
        longest = max((size_of(v, limit) for v in args[0].values()), default=1)
        return len(text) * max(longest, 1)
    return size_of(list(args), limit) + size_of(dict(kwargs), limit)


def _replace_size(text: Any, old: Any, new: Any, limit: int) -> int:
    if not (isinstance(text, str) and isinstance(old, str) and isinstance(new, str)):
        return 0
    count = text.count(old) if old else len(text) + 1
    return len(text) + count * max(len(new) - len(old), 0)


def _filter_size(name: str, value: Any, args: list, kwargs: dict, limit: int) -> int:
    """An upper bound of a filter's result, for the filters that can build more than they are given."""
    text = value if isinstance(value, str) else ""
    widest = _ints_size(args, kwargs)
    if name == "center":
        return len(text) + widest
    if name == "indent":
        width = args[0] if args else kwargs.get("width", 4)
        width = len(width) if isinstance(width, str) else width if isinstance(width, int) else 0
        return len(text) + (text.count("\n") + 1) * max(width, 0)
    if name == "wordwrap":
        wrap = args[3] if len(args) > 3 else kwargs.get("wrapstring") or "\n"
        return len(text) * (1 + (len(wrap) if isinstance(wrap, str) else 1))
    if name == "replace" and len(args) >= 2:
        return _replace_size(text, args[0], args[1], limit)
    if name == "join":
        separator = args[0] if args else kwargs.get("d", "")
        items = value if isinstance(value, (list, tuple)) else []
        return size_of(list(items), limit) + len(separator if isinstance(separator, str) else "") * len(items)
    if name == "format":
        return _format_size(text, args, kwargs, limit)
    if name == "tojson":
        return size_of(value, limit) * (1 + widest) * (1 + _depth(value))
    if name == "batch":
        return size_of(value, limit) + widest
    return 0


def _depth(value: Any, limit: int = 64) -> int:
    depth, level = 0, [value]
    while level and depth < limit:
        level = [v for item in level if isinstance(item, (list, tuple, dict))
                 for v in (item.values() if isinstance(item, dict) else item)]
        depth += 1 if level else 0
    return depth


@contextmanager
def time_limited(limits: Limits) -> Iterator[None]:
    """Run the block with a deadline checked on every line the template's own code runs (its loops
    included), through sys.settrace for this thread; the previous trace function is put back."""
    limits.deadline = time.monotonic() + limits.seconds

    def on_line(frame: Any, event: str, arg: Any) -> Any:
        limits.check_time()
        return on_line

    def on_call(frame: Any, event: str, arg: Any) -> Any:
        return on_line if frame.f_code.co_filename == TEMPLATE_FILE else None

    previous = sys.gettrace()
    sys.settrace(on_call)
    try:
        yield
    finally:
        sys.settrace(previous)
        limits.deadline = math.inf


def render_bounded(template: Any, variables: dict[str, Any]) -> str:
    """Render a template of a BoundedEnvironment within the limits, the size one scaled to the
    variables' size; any failure of the template is a TokenizerError."""
    limits = Limits(max(SIZE_LIMIT, 4 * size_of(variables, 2**62)), TIME_LIMIT)
    token = _CURRENT.set(limits)
    pieces, total = [], 0
    try:
        with time_limited(limits):
            for piece in template.generate(**variables):
                total += len(piece)
                limits.check_size(total, "output")
                pieces.append(piece)
    except TokenizerError:
        raise
    except RecursionError:
        raise TokenizerError("chat template recursed too deeply") from None
    except MemoryError:
        raise TokenizerError("chat template ran out of memory") from None
    except (jinja2.TemplateError, ArithmeticError, LookupError, TypeError, ValueError, AttributeError,
            json.JSONDecodeError) as e:
        raise TokenizerError(f"chat template error: {type(e).__name__}: {e}") from None
    finally:
        _CURRENT.reset(token)
    return "".join(pieces)
