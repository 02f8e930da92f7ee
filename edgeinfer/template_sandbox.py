"""A Jinja sandbox for chat templates from strangers: every render ends within a time, text and number bound.

jinja2's ImmutableSandboxedEnvironment stops a template from reaching Python internals, but not from spending
the machine: `{{ 'ab ' * 10000000 }}` takes gigabytes, two nested `range` loops never end, `10 ** 10**8` computes
for minutes. Here every place a template can grow text or spend time is bounded:

- time: MAX_RENDER_SECONDS of wall clock per render, checked from inside the sandbox (every call, operator,
  filter, printed expression and every DEADLINE_EVERY loop iterations), so even empty nested loops end;
- text: no value and no output beyond `max_chars` (CHARS_PER_CONTEXT_TOKEN per context token); each operation
  that can multiply text (`*`, `%`, `~`, `+`, filters, string methods) is sized *before* it runs;
- numbers: integers stay under MAX_INT_BITS, `range` under `max_chars` numbers.

Honest templates never come near these bounds: chat.py passes message contents as short markers, so a template's
own values are a few hundred characters whatever the conversation's length.
"""

from __future__ import annotations

import contextvars
import functools
import re
import string
import time
from collections import abc
from contextlib import contextmanager

import jinja2
from jinja2 import nodes
from jinja2.compiler import CodeGenerator
from jinja2.sandbox import ImmutableSandboxedEnvironment
from jinja2.utils import Namespace

from .errors import GenerationError

# A rendered prompt beyond the context is refused later anyway; 16 characters per token leaves room for any
# tokenizer (English averages ~4 characters per token) while keeping the worst case at 4096 x 16 = 64K characters.
CHARS_PER_CONTEXT_TOKEN = 16
# An honest chat template renders in about a millisecond; 2 s is far beyond it even on a loaded phone.
MAX_RENDER_SECONDS = 2.0
# Text produced in all (output plus macro and {% set %} buffers that are thrown away) may reach this many times
# max_chars: buffers are where a template can build text without printing it.
WORK_FACTOR = 8
# No template needs numbers above 2^4096 (1234 digits); 10 ** 10**8 would take minutes.
MAX_INT_BITS = 4096
DEADLINE_EVERY = 256  # loop iterations between clock reads
OPAQUE_SIZE = 16  # what an object we cannot see into (macro, loop, undefined) prints as, about

_active: contextvars.ContextVar[Budget | None] = contextvars.ContextVar("template_budget", default=None)


def refuse(problem: str) -> GenerationError:
    return GenerationError(f"the package's chat template {problem}: fix or remove the template and re-export the package")


class Budget:
    """The limits of one render and what it has spent so far."""

    def __init__(self, max_chars: int, seconds: float = MAX_RENDER_SECONDS):
        self.max_chars = max_chars
        self.seconds = seconds
        self.deadline = time.monotonic() + seconds
        self.produced = 0

    def tick(self) -> None:
        if time.monotonic() > self.deadline:
            raise refuse(f"ran past the {self.seconds:g} s a render may take")

    def spend(self, chars: int) -> None:
        self.produced += chars
        if self.produced > WORK_FACTOR * self.max_chars:
            raise refuse(f"produced more than {WORK_FACTOR * self.max_chars} characters of text while rendering")

    def fits(self, chars: int, what: str) -> None:
        if chars > self.max_chars:
            raise refuse(f"would make about {chars} characters with {what}, above the {self.max_chars} a prompt may take")


def active() -> Budget:
    budget = _active.get()
    if budget is None:  # jinja folds constants at compile time; failing here makes it leave them to the render
        raise RuntimeError("template limits are only known during a render")
    return budget


@contextmanager
def render_limits(budget: Budget):
    """Make BUDGET the one the sandbox hooks check for renders in this thread (or task)."""
    token = _active.set(budget)
    try:
        yield budget
    finally:
        _active.reset(token)


def text_size(value, limit: int, indent: int = 0) -> int:
    """About how many characters str(VALUE) takes, counted only until LIMIT is passed so the count is cheap.

    Containers are walked: a list of 1000 references to one long string is 1000 long strings once printed.
    INDENT adds that many characters per nesting level per item (tojson(indent=N), pprint).
    """
    total, stack = 0, [(value, 0)]
    while stack and total <= limit:
        item, depth = stack.pop()
        total += depth * indent
        if isinstance(item, (str, bytes)):
            total += len(item) + 2 * (depth > 0)
        elif isinstance(item, bool) or item is None:
            total += 5
        elif isinstance(item, int):
            total += item.bit_length() // 3 + 2
        elif isinstance(item, float):
            total += 24
        elif isinstance(item, Namespace):  # prints its attributes; jinja keeps them in a private dict
            stack.append((dict(object.__getattribute__(item, "_Namespace__attrs")), depth))
        elif isinstance(item, range):  # prints as range(a, b) but joins and lists as its numbers
            total += len(item) * (max(abs(item.start), abs(item.stop)).bit_length() // 3 + 2)
        elif isinstance(item, (abc.Mapping, abc.Sequence, abc.Set, abc.MappingView)):
            total += 2 + len(item)
            if total <= limit:  # one container's items are pushed only while under the limit
                pairs = item.items() if isinstance(item, abc.Mapping) else ((x,) for x in item)
                stack += [(x, depth + 1) for pair in pairs for x in pair]
        else:
            total += OPAQUE_SIZE
    return total


def amount(value, limit: int) -> int:
    """How much an argument can multiply text by: an integer by its value, anything else by its size."""
    if isinstance(value, int) and not isinstance(value, bool):
        return abs(value)
    return text_size(value, limit)


def product_bound(base: int, others, limit: int) -> int:
    """An upper bound on text made from BASE characters by an operation whose other arguments are OTHERS.

    Every amplifier (replace, join, center, indent, wordwrap, urlize, translate, ljust...) makes at most
    base x (1 + each argument's amount); honest calls, on short markers and small numbers, stay tiny.
    """
    return (base + 1) * (1 + sum(amount(x, limit) for x in others))


def args_amount(args, limit: int) -> int:
    """The amount of a `%` or format() argument list: `*` widths are numbers inside the tuple or dict."""
    if isinstance(args, (tuple, list)):
        return sum(amount(x, limit) for x in args)
    if isinstance(args, abc.Mapping):
        return sum(amount(x, limit) for x in args.values())
    return amount(args, limit)


_PERCENT_SPEC = re.compile(r"%(?:\([^)]*\))?[#0\- +]*(\*|\d+)?(?:\.(\*|\d+))?")


def format_widths(fmt: str, braces: bool) -> tuple[int, int]:
    """(sum of the widths and precisions the format spells out, number of fields) for %-style or {}-style FMT."""
    if braces:
        fields = [spec for _, name, spec, _ in string.Formatter().parse(fmt) if name is not None]
        numbers = [n for spec in fields for n in re.findall(r"\d+", spec or "")]
    else:
        fields = _PERCENT_SPEC.findall(fmt)
        numbers = [n for groups in fields for n in groups if n and n != "*"]
    if any(len(n) > 9 for n in numbers):
        return 10**9, len(fields)
    return sum(int(n) for n in numbers), len(fields)


def check_format(budget: Budget, fmt: str, args, braces: bool, what: str) -> None:
    widths, fields = format_widths(fmt, braces)
    # `*` widths and nested {} widths come from the arguments: their amounts count through product_bound.
    budget.fits(len(fmt) + widths + (fields + 1) * (1 + args_amount(args, budget.max_chars)), what)


def bounded_iterable(budget: Budget, iterable):
    """A one-shot iterator (map, select...) as a list, refused as soon as its items pass the text bound."""
    if not isinstance(iterable, abc.Iterator):
        return iterable
    items, total = [], 0
    for item in iterable:
        budget.tick()
        total += text_size(item, budget.max_chars)
        budget.fits(total, "a filtered sequence")
        items.append(item)
    return items


def check_int_bits(budget: Budget, bits: int, what: str) -> None:
    if bits > MAX_INT_BITS:
        raise refuse(f"computes {what} of about {bits} bits, above the {MAX_INT_BITS} a template may use")


_SEQUENCES = (str, bytes, list, tuple)


def check_binop(budget: Budget, op: str, left, right) -> None:
    limit = budget.max_chars
    ints = isinstance(left, int) and isinstance(right, int)
    if op == "*":
        if ints:
            check_int_bits(budget, left.bit_length() + right.bit_length(), "a product")
        elif isinstance(left, _SEQUENCES) or isinstance(right, _SEQUENCES):
            seq, times = (left, right) if isinstance(left, _SEQUENCES) else (right, left)
            if isinstance(times, int):
                budget.fits(text_size(seq, limit) * max(times, 0), "`*`")
    elif op == "**" and ints and right > 0 and abs(left) > 1:
        check_int_bits(budget, left.bit_length() * min(right, 1 << 40), "a power")
    elif op == "+" and isinstance(left, _SEQUENCES) and isinstance(right, _SEQUENCES):
        budget.fits(text_size(left, limit) + text_size(right, limit), "`+`")
    elif op == "%" and isinstance(left, str):
        check_format(budget, left, right, braces=False, what="`%` formatting")


def check_call(budget: Budget, func, args, kwargs) -> None:
    """Size a call to a method, macro or global before it runs."""
    limit = budget.max_chars
    # jinja passes the variables of enclosing loops and blocks along; they are not arguments
    values = [*args, *(v for k, v in kwargs.items() if k not in ("_loop_vars", "_block_vars"))]
    target = getattr(func, "__wrapped__", func)  # jinja wraps str.format to sandbox its field lookups
    owner = getattr(target, "__self__", None)
    name = getattr(target, "__name__", "")
    if isinstance(owner, str) and name in ("format", "format_map"):
        check_format(budget, owner, values, braces=True, what=f"str.{name}")
        return
    base = text_size(owner, limit) if isinstance(owner, (str, bytes)) else amount(owner, limit) if isinstance(owner, int) else 0
    budget.fits(product_bound(base, values, limit), f"calling {name or 'a function'}")


class BoundedCodeGenerator(CodeGenerator):
    """Compiles `for` loops and `~` so that the sandbox sees them: jinja runs both as plain Python."""

    def visit_Template(self, node: nodes.Template, frame=None) -> None:
        for loop in node.find_all(nodes.For):
            literal = sum(len(data.data) for data in loop.find_all(nodes.TemplateData))
            loop.iter = _guarded(loop.iter, literal)
            if loop.recursive:  # loop(children) iterates children without going through loop.iter
                for call in loop.find_all(nodes.Call):
                    if isinstance(call.node, nodes.Name) and call.node.name == "loop" and call.args:
                        call.args[0] = _guarded(call.args[0], literal)
        super().visit_Template(node, frame)

    def visit_Concat(self, node: nodes.Concat, frame) -> None:
        self.write("environment.bounded_concat((")
        for arg in node.nodes:
            self.visit(arg, frame)
            self.write(", ")
        self.write("))")


def _guarded(iterable: nodes.Expr, literal_chars: int) -> nodes.Expr:
    return nodes.Call(nodes.EnvironmentAttribute("guard_iter"), [iterable, nodes.Const(literal_chars)], [], None, None)


def bounded_filter(name: str, func):
    """FUNC checked against the render's budget: its input sized before, its result after."""
    passes_env = getattr(func, "jinja_pass_arg", None) is not None

    @functools.wraps(func)  # keeps jinja_pass_arg, so jinja still hands over context/environment
    def bounded(*args, **kwargs):
        budget = active()
        budget.tick()
        head, (value, *rest) = (args[:1], args[1:]) if passes_env else ((), args)
        value = bounded_iterable(budget, value)
        if name == "tojson":
            indent = kwargs.get("indent", rest[0] if rest else None) or 0
            budget.fits(text_size(value, budget.max_chars, indent=amount(indent, budget.max_chars)), "tojson")
        elif name == "pprint":
            budget.fits(text_size(value, budget.max_chars, indent=1), "pprint")
        elif name == "format" and isinstance(value, str):
            check_format(budget, value, [*rest, *kwargs.values()], braces=False, what="the format filter")
        else:
            base = text_size(value, budget.max_chars)
            budget.fits(product_bound(base, [*rest, *kwargs.values()], budget.max_chars), f"the {name} filter")
        result = func(*head, value, *rest, **kwargs)
        budget.fits(text_size(result, budget.max_chars), f"the {name} filter")
        return result

    return bounded


class BoundedSandbox(ImmutableSandboxedEnvironment):
    code_generator_class = BoundedCodeGenerator
    intercepted_binops = frozenset(["+", "-", "*", "/", "//", "%", "**"])

    def __init__(self, **options):
        super().__init__(finalize=self.bounded_output, **options)
        self.globals["range"] = bounded_range
        del self.globals["lipsum"]  # n x max words of lorem ipsum: an amplifier no chat template has a use for
        self.filters = {name: bounded_filter(name, f) for name, f in self.filters.items()}

    def call_binop(self, context, operator, left, right):
        budget = active()
        budget.tick()
        check_binop(budget, operator, left, right)
        return self.binop_table[operator](left, right)

    def call(__self, __context, __obj, *args, **kwargs):  # noqa: N805 (jinja's signature)
        budget = active()
        budget.tick()
        if __obj is BoundedSandbox.guard_iter or __obj is bounded_range:  # they check themselves
            return __context.call(__obj, *args, **kwargs)
        if getattr(getattr(__obj, "__wrapped__", __obj), "__name__", "") == "join":
            args = (bounded_iterable(budget, args[0]), *args[1:]) if args else args
        check_call(budget, __obj, args, kwargs)
        result = super().call(__context, __obj, *args, **kwargs)
        budget.fits(text_size(result, budget.max_chars), "a call's result")
        return result

    @staticmethod
    def bounded_output(value):
        """Every {{ expression }} passes here before it is turned into text."""
        budget = active()
        budget.tick()
        size = text_size(value, budget.max_chars)
        budget.fits(size, "a printed value")
        budget.spend(size)
        return value

    @staticmethod
    def bounded_concat(pieces) -> str:
        budget = active()
        budget.fits(sum(text_size(p, budget.max_chars) for p in pieces), "`~`")
        return "".join(map(str, pieces))

    @staticmethod
    def guard_iter(iterable, literal_chars: int = 0):
        """Iterate as the loop would, reading the clock every DEADLINE_EVERY items; LITERAL_CHARS is the template
        text each iteration writes (into output or a buffer)."""
        budget = active()
        for n, item in enumerate(iterable):
            if n % DEADLINE_EVERY == 0:
                budget.tick()
            budget.spend(literal_chars)
            yield item


def bounded_range(*args) -> range:
    budget = active()
    numbers = range(*args)
    try:
        count = len(numbers)
    except OverflowError:  # more than sys.maxsize numbers
        count = None
    if count is None or count > budget.max_chars:
        raise refuse(f"asks for a range of {count or 'more than 2^63'} numbers, above the {budget.max_chars} "
                     "a template may loop over")
    return numbers


def template_refusal(message: str):
    """raise_exception(): the template's own way to refuse a conversation (e.g. roles that do not alternate)."""
    raise TemplateRefusal(message)


class TemplateRefusal(jinja2.exceptions.TemplateError):
    pass
