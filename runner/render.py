"""Rendering: one message text per recipient, with substitution precedence.

Campaign files come from pull requests, so templates run in jinja2's sandbox with
StrictUndefined: a template cannot run code, and a missing variable is an error that
names the recipient instead of a silent blank in someone's SMS.

Texts that use only plain `{{ name }}` variables are detected here, because the
compile stage can then let the platform personalise them (placeholders on the wire,
values per destination) instead of sending one request per distinct text.
"""

from __future__ import annotations

import difflib
import functools
import re
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from operator import itemgetter
from typing import Any

from jinja2 import StrictUndefined, TemplateSyntaxError, UndefinedError, nodes, pass_eval_context
from jinja2.nodes import EvalContext
from jinja2.exceptions import SecurityError
from jinja2.runtime import Context
from jinja2.sandbox import SandboxedEnvironment
from jinja2.utils import Namespace

from . import vendor
from .errors import CampaignError, ExitCode
from .model import Campaign, Location, Recipient, Scalar, WrittenBool

# --- what a template may cost ---------------------------------------------------------
# A text comes from a pull request and is rendered once per recipient: a template that
# builds a gigabyte string or a number with billions of digits would stall plan and apply
# (and pass validate, which only parses). Every operation that can grow a value faster
# than the template's own length is checked BEFORE it runs, against these limits.

MAX_VALUE_CHARS = 65_536  # any string or list a template builds, and the rendered text
MAX_RENDERED_CHARS = 65_536  # far above the API's 1024 (its own `text-length` error)
MAX_INT_DIGITS = 4_300  # Python's own limit for int <-> str conversions
MAX_RANGE = 10_000  # items of one range()
MAX_LOOP_STEPS = 10_000  # iterations of all {% for %} loops in one rendering, nested ones included (~15 ms)

_INT_BITS = int(MAX_INT_DIGITS * 3.33)
_DIGIT_RUN = re.compile(r"\d+")


class TemplateCostError(SecurityError):
    """A template asked for more than a message can need; refused before the work."""


def _size(value: Any) -> int:
    """Characters a value stands for: a string's length, a list's items plus its strings'."""
    if isinstance(value, (str, bytes)):
        return len(value)
    if isinstance(value, (list, tuple)):
        return len(value) + sum(len(item) for item in value if isinstance(item, (str, bytes, list, tuple)))
    return 0


def _refuse(what: str, size: int, limit: int = MAX_VALUE_CHARS) -> None:
    if size > limit:
        raise TemplateCostError(f"{what} would make about {size:,} characters; a template may build at most {limit:,}")


def _digits(number: int) -> int:
    return (abs(number).bit_length() * 10 + 32) // 33 + 1  # bits * log10(2), rounded up


def _number(value: int) -> str:
    """A number as a message may quote it: huge ones by their size."""
    return str(value) if abs(value) < 10**15 else f"(a {_digits(value):,}-digit number)"


def _check_format(fmt: Any, what: str) -> None:
    """A width or precision in a format string ('%1000000000s', '{:>999999999}') is its output size."""
    if isinstance(fmt, str):
        widest = _widest_number(fmt)
        if widest:
            _refuse(f"{what} width {widest}", int(widest) if len(widest) < 30 else 10**30)


@functools.lru_cache(maxsize=256)
def _widest_number(fmt: str) -> str:
    """The first number in a format string above the value limit ('' when none): a
    template's format strings are few and used for every recipient, so this is cached."""
    return next((run for run in _DIGIT_RUN.findall(fmt) if len(run) > 6 or int(run) > MAX_VALUE_CHARS), "")


def _format_size(fmt: str, arguments: Any) -> int:
    """At most: the format, plus each placeholder filled with the largest argument (one
    argument may be used many times: '%(a)s%(a)s...', '{0}{0}...')."""
    values = list(arguments.values()) if isinstance(arguments, Mapping) else list(arguments)
    for value in list(values):
        if isinstance(value, Mapping):
            values.extend(value.values())
    largest = max((_size(value) for value in values), default=0)
    return len(fmt) + (fmt.count("%") + fmt.count("{")) * largest


def _check_binop(operator_name: str, left: Any, right: Any) -> None:
    ints = isinstance(left, int) and isinstance(right, int)
    if ints and operator_name != "**" and left.bit_length() + right.bit_length() <= _INT_BITS:
        return  # the common case: small numbers
    if operator_name == "**" and ints:
        if abs(left) > 1 and right > 0:
            bits = max(abs(left).bit_length() - 1, 1) * min(right, 10**30)
            if bits > _INT_BITS:
                raise TemplateCostError(f"{_number(left)} ** {_number(right)} would have about {bits * 3 // 10:,} digits; "
                                        f"a template may make numbers of at most {MAX_INT_DIGITS:,} digits")
    elif operator_name == "*":
        if ints:
            if _digits(left) + _digits(right) > MAX_INT_DIGITS:
                raise TemplateCostError(f"a product of more than {MAX_INT_DIGITS:,} digits is refused")
        elif isinstance(right, int) and not isinstance(right, bool):
            _refuse("repeating a value", _size(left) * max(right, 0))
        elif isinstance(left, int) and not isinstance(left, bool):
            _refuse("repeating a value", _size(right) * max(left, 0))
    elif operator_name == "+" and not ints:
        _refuse("joining two values", _size(left) + _size(right))
    elif operator_name == "%" and isinstance(left, str):
        _check_format(left, "a '%' format")
        _refuse("a '%' format", _format_size(left, right if isinstance(right, tuple) else (right,)))


_LOOP_FILTER = "campaign-runner loop steps"
_CONCAT_FILTER = "campaign-runner concat"
MAX_OUTPUT_CHARS = 4 * MAX_RENDERED_CHARS  # all `{{ }}` output of one rendering, captured blocks and macros included


@pass_eval_context
def _counted_output(eval_ctx: EvalContext, value: Any) -> str:
    """jinja2's `finalize`: every `{{ }}` output of a rendering, also inside `{% set %}`
    blocks, macros and calls that never reach the final text, draws on one budget."""
    text = str(value)
    budget: list[int] = eval_ctx.__dict__.setdefault("campaign_runner_output_left", [MAX_OUTPUT_CHARS])
    budget[0] -= len(text)
    if budget[0] < 0:
        raise TemplateCostError(f"the template printed more than {MAX_OUTPUT_CHARS:,} characters in one message")
    return text


def _concat(items: list[Any]) -> str:
    """The `~` operator, measured first."""
    texts = [str(item) for item in items]
    _refuse("joining values with '~'", sum(len(text) for text in texts))
    return "".join(texts)


@pass_eval_context
def _counted(eval_ctx: EvalContext, items: Any) -> Iterator[Any]:
    """Items of a loop, each drawn from the rendering's step budget. The budget lives on
    the evaluation context, which jinja2 makes anew for every rendering."""
    budget: list[int] = eval_ctx.__dict__.setdefault("campaign_runner_steps_left", [MAX_LOOP_STEPS])
    for item in items:
        budget[0] -= 1
        if budget[0] < 0:
            raise TemplateCostError(f"loops took more than {MAX_LOOP_STEPS:,} steps in one message")
        yield item


def _range(*args: int) -> range:
    items = range(*args)
    if len(items) > MAX_RANGE:
        raise TemplateCostError(f"range() of {len(items):,} items; a template may use at most {MAX_RANGE:,}")
    return items


class _BoundedNamespace(Namespace):
    """`namespace()` whose attributes obey the value limit (`{% set ns.s = ns.s ~ ns.s %}` in a loop)."""

    def __setitem__(self, name: str, value: Any) -> None:
        _refuse(f"namespace attribute '{name}'", _size(value))
        super().__setitem__(name, value)


def _filter_check(name: str, value: Any, args: tuple[Any, ...], kwargs: Mapping[str, Any]) -> None:
    """Estimate the output of the filters whose arguments can make it grow without bound."""
    def arg(position: int, keyword: str, default: Any) -> Any:
        return args[position] if len(args) > position else kwargs.get(keyword, default)

    def number(given: Any) -> int:
        return given if isinstance(given, int) else 0

    text = str(value) if isinstance(value, (str, int, float)) else ""
    if name == "center":
        _refuse("center()", max(number(arg(0, "width", 80)), len(text)))
    elif name == "indent":
        width = arg(0, "width", 4)
        pad = len(width) if isinstance(width, str) else number(width)
        _refuse("indent()", len(text) + (text.count("\n") + 1) * pad)
    elif name == "format":
        _check_format(value, "format()")
        _refuse("format()", _format_size(text, (*args, *kwargs.values())))
    elif name == "replace":
        old, new = arg(0, "old", ""), arg(1, "new", "")
        if isinstance(value, str) and isinstance(old, str) and isinstance(new, str):
            hits = value.count(old) if old else len(value) + 1
            _refuse("replace()", len(value) + hits * len(new))
    elif name == "join":
        separator = arg(0, "d", "")
        if isinstance(value, (list, tuple)) and isinstance(separator, str):
            _refuse("join()", _size(value) + len(value) * len(separator))
    elif name == "wordwrap":
        wrap = arg(2, "wrapstring", "\n")
        wrap_len = len(wrap) if isinstance(wrap, str) else 1
        _refuse("wordwrap()", len(text) * (1 + wrap_len))
    elif name in ("batch", "slice"):
        _refuse(f"{name}()", number(arg(0, "linecount" if name == "batch" else "slices", 1)))


def _bounded_filter(name: str, function: Callable[..., Any]) -> Callable[..., Any]:
    """The filter, with its output estimated first; keeps jinja2's pass_* marker (via `wraps`)."""
    skip = 1 if getattr(function, "jinja_pass_arg", None) is not None else 0

    @functools.wraps(function)
    def bounded(*args: Any, **kwargs: Any) -> Any:
        if name == "join" and len(args) > skip and not isinstance(args[skip], (str, list, tuple)):
            args = (*args[:skip], list(args[skip]), *args[skip + 1 :])  # a range or generator: count its items
        _filter_check(name, args[skip] if len(args) > skip else None, args[skip + 1 :], kwargs)
        return function(*args, **kwargs)

    return bounded


_GROWING_FILTERS = ("center", "indent", "format", "replace", "join", "wordwrap", "batch", "slice")
_GROWING_STR_METHODS = {"center": "center", "ljust": "center", "rjust": "center", "zfill": "center",
                        "replace": "replace", "join": "join", "format": "format", "format_map": "format",
                        "expandtabs": "expandtabs"}


def _is_boolean(value: Any) -> bool:
    return value is True or value is False or type(value) is WrittenBool


class BoundedEnvironment(SandboxedEnvironment):
    """jinja2's sandbox (no code execution) that also bounds what a template can cost:
    repetition, power, concatenation and formatting results, range lengths and loop
    steps, the growing filters and string methods. Every refusal is a `TemplateCostError`."""

    intercepted_binops = frozenset({"*", "**", "+", "%"})

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        self.globals["range"] = _range
        self.globals["namespace"] = _BoundedNamespace
        for name in _GROWING_FILTERS:
            self.filters[name] = _bounded_filter(name, self.filters[name])
        self.filters[_LOOP_FILTER] = _counted
        self.filters[_CONCAT_FILTER] = _concat
        self.finalize = _counted_output
        # A boolean from a file is a `WrittenBool` (it prints as written, `true`), not
        # Python's bool: the tests that ask whether a value is a boolean still say yes.
        self.tests["boolean"] = _is_boolean
        self.tests["true"] = lambda value: _is_boolean(value) and bool(value)
        self.tests["false"] = lambda value: _is_boolean(value) and not value

    def _generate(self, source: nodes.Template, name: str | None, filename: str | None,
                  defer_init: bool = False) -> str:
        """jinja2's documented hook before code generation: every `{% for %}` iterates
        through `_counted`, so nested loops (over ranges, strings, lists) share one step
        budget per rendering. The filter's name cannot be written in a template."""
        for loop in source.find_all(nodes.For):
            loop.iter = nodes.Filter(loop.iter, _LOOP_FILTER, [], [], None, None, lineno=loop.lineno)
        for concat in list(source.find_all(nodes.Concat)):
            # `~` compiles to a plain join that no sandbox hook sees: make it a measured one.
            measured = nodes.Filter(nodes.List(list(concat.nodes)), _CONCAT_FILTER, [], [], None, None,
                                    lineno=concat.lineno)
            _replace_node(source, concat, measured)
        return super()._generate(source, name, filename, defer_init)


    def call_binop(self, context: Context, operator: str, left: Any, right: Any) -> Any:
        _check_binop(operator, left, right)
        return self.binop_table[operator](left, right)

    def call(__self, __context: Context, __obj: Any, *args: Any, **kwargs: Any) -> Any:  # noqa: N805 (jinja2's names)
        target = getattr(__obj, "__wrapped__", __obj)  # the sandbox wraps str.format
        owner = getattr(target, "__self__", None)
        kind = _GROWING_STR_METHODS.get(getattr(target, "__name__", ""))
        if isinstance(owner, str) and kind is not None:
            if kind == "center":
                _refuse(f"str.{target.__name__}()", args[0] if args and isinstance(args[0], int) else 0)
            elif kind == "expandtabs":
                tab = args[0] if args and isinstance(args[0], int) else 8
                _refuse("str.expandtabs()", len(owner) + owner.count("\t") * max(tab, 0))
            elif kind == "join" and args:
                items = args[0] if isinstance(args[0], (str, list, tuple)) else list(args[0])
                _refuse("str.join()", _size(items) + len(items) * len(owner))
                args = (items, *args[1:])
            else:
                _filter_check(kind, owner, args, kwargs)
        return super().call(__context, __obj, *args, **kwargs)


def _replace_node(tree: nodes.Node, old: nodes.Node, new: nodes.Node) -> None:
    """Put `new` where `old` stands in `tree` (jinja2 nodes keep children in fields and lists)."""
    for parent in tree.find_all(nodes.Node):
        for field, value in parent.iter_fields():
            if value is old:
                setattr(parent, field, new)
                return
            if isinstance(value, list) and any(item is old for item in value):
                value[:] = [new if item is old else item for item in value]
                return


ENVIRONMENT = BoundedEnvironment(undefined=StrictUndefined, autoescape=False)
# The lowest layer: every text may use these without defining them.
BUILTIN_VARIABLES = frozenset({"campaign_id", "msisdn", "correlation_id"})


@dataclass(frozen=True)
class Variable:
    name: str


@dataclass(frozen=True)
class CompiledText:
    """A parsed message text and what it needs."""

    source: str
    location: Location
    variables: frozenset[str]  # every variable the text reads (smartlink tokens excluded)
    smartlink_ids: frozenset[str]
    # Literal strings and variables in order when the text is plain, else None.
    plain_parts: tuple[str | Variable, ...] | None

    @property
    def is_plain(self) -> bool:
        return self.plain_parts is not None

    @property
    def plain_names(self) -> tuple[str, ...]:
        """The names a plain text reads, in text order, each once, smartlink tokens
        included; empty for a text with logic."""
        return tuple(dict.fromkeys(part.name for part in self.plain_parts or () if isinstance(part, Variable)))

    def wire_text(self) -> str:
        """The text with the platform's own placeholders, for platform-side personalisation."""
        if self.plain_parts is None:
            raise ValueError("only plain texts have a wire form")
        return "".join(
            part if isinstance(part, str) else _wire_placeholder(part.name) for part in self.plain_parts
        )


def _wire_placeholder(name: str) -> str:
    if name.startswith(vendor.SMARTLINK_TOKEN_PREFIX):
        return smartlink_token(name)
    return vendor.PLACEHOLDER_TEMPLATE.format(name=name)


def smartlink_token(name: str) -> str:
    """The vendor's in-text smartlink token, which the platform replaces with a link."""
    return "{{" + name + "}}"


class TemplateSyntaxProblem(CampaignError):
    """A text that does not parse, with the place inside it, so validate can point there."""

    def __init__(self, message: str, location: Location, *, hint: str | None = None, exact: bool = False) -> None:
        super().__init__(message, hint=hint)
        self.location = location
        self.exact = exact  # the column is the problem's own, not the text's start


def compile_text(text: str, location: Location, *, indent: int | None = None) -> CompiledText:
    """Parse a message text once; syntax errors point at the line inside the text.

    `location` is where the text's first character stands; `indent`, when given, is the
    column (0-based) where each further line of it starts (a YAML `|` block)."""
    try:
        tree = ENVIRONMENT.parse(text)
    except TemplateSyntaxError as error:
        line = location.line + (error.lineno or 1) - 1 if location.line else 0
        where = Location(location.file, line, location.col if line == location.line else 0)
        raise TemplateSyntaxProblem(
            f"{where}: error: template syntax: {error.message} [template-syntax]", where,
            hint="message text uses Jinja2 syntax: {{ name }}, {% if ... %}",
        ) from None
    for kind, name, lineno in _unknown_names(tree):
        line = location.line + lineno - 1 if location.line else 0
        col = _column_of(text, lineno, name)
        if col and lineno == 1 and location.col:
            col += location.col - 1
        elif col and indent is not None:
            col += indent
        where = Location(location.file, line, col if line else 0)
        close = difflib.get_close_matches(name, ENVIRONMENT.filters if kind == "filter" else ENVIRONMENT.tests, 3)
        raise TemplateSyntaxProblem(
            f"{where}: error: template syntax: no {kind} named '{name}' [template-syntax]", where,
            hint=f"did you mean {' or '.join(repr(c) for c in close)}?" if close else f"see jinja2's built-in {kind}s",
            exact=bool(col),
        )
    names = {node.name for node in tree.find_all(nodes.Name) if node.ctx == "load"}
    smartlinks = {name for name in names if name.startswith(vendor.SMARTLINK_TOKEN_PREFIX)}
    assigned = {node.name for node in tree.find_all(nodes.Name) if node.ctx in ("store", "param")}
    assigned |= {node.name for node in tree.find_all(nodes.Macro)}
    if any(True for _ in tree.find_all(nodes.For)):
        assigned.add("loop")  # jinja2's own loop variable
    return CompiledText(
        source=text,
        location=location,
        # Globals (range, namespace, ...) are the environment's, not values to supply.
        variables=frozenset(names - smartlinks - assigned - set(ENVIRONMENT.globals)),
        smartlink_ids=frozenset(name[len(vendor.SMARTLINK_TOKEN_PREFIX) :] for name in smartlinks),
        plain_parts=_plain_parts(tree),
    )


def _template(text: CompiledText) -> Any:
    try:
        return ENVIRONMENT.from_string(text.source)
    except TemplateSyntaxError as error:  # validate reports these first; a direct caller gets them here
        raise CampaignError(f"{text.location}: error: template syntax: {error.message} [template-syntax]") from None


def _unknown_names(tree: nodes.Template) -> Iterator[tuple[str, str, int]]:
    """Filters and tests the environment does not have, as (kind, name, line in the text):
    jinja2 finds some only when it renders (inside `{% if %}`), so validate looks itself."""
    for node in tree.find_all((nodes.Filter, nodes.Test)):
        if isinstance(node, nodes.Filter) and node.name not in ENVIRONMENT.filters:
            yield "filter", node.name, node.lineno
        elif isinstance(node, nodes.Test) and node.name not in ENVIRONMENT.tests:
            yield "test", node.name, node.lineno


def _column_of(text: str, line: int, name: str) -> int:
    """1-based column of `name` on `line` of a text (0 when not found)."""
    lines = text.split("\n")
    if not 0 < line <= len(lines):
        return 0
    match = re.search(rf"(?:\||\bis(?:\s+not)?)\s*{re.escape(name)}\b", lines[line - 1])
    return match.end() - len(name) + 1 if match else 0


def _plain_parts(tree: nodes.Template) -> tuple[str | Variable, ...] | None:
    parts: list[str | Variable] = []
    for statement in tree.body:
        if not isinstance(statement, nodes.Output):
            return None
        for node in statement.nodes:
            if isinstance(node, nodes.TemplateData):
                parts.append(node.data)
            elif isinstance(node, nodes.Name) and node.ctx == "load":
                parts.append(Variable(node.name))
            else:
                return None
    return tuple(parts)


class Renderer:
    """Renders one campaign's text for each recipient.

    Layers, lowest to highest: built-ins < campaign substitutions < the source's shared
    substitutions < the recipient's own values. A layer overrides only the keys it sets.
    """

    def __init__(self, campaign: Campaign, text: CompiledText) -> None:
        self.text = text
        # Smartlink tokens pass through verbatim for the platform, whatever a layer sets
        # under the same name: they are applied last, over every layer.
        self._smartlink_tokens = {f"{vendor.SMARTLINK_TOKEN_PREFIX}{sid}": smartlink_token(
            f"{vendor.SMARTLINK_TOKEN_PREFIX}{sid}") for sid in text.smartlink_ids}
        self.campaign_layer: dict[str, Any] = {"campaign_id": campaign.id}
        self.campaign_layer.update(campaign.substitutions)
        self.campaign_layer.update(self._smartlink_tokens)
        self._template = None if text.is_plain else _template(text)
        # Plain texts: the text as a %-format (`%s` calls str(), like `_as_text`), and
        # what `render_plain` needs so that per recipient it makes C-level calls only:
        # the campaign layer's values of the names the text reads, a getter for the
        # format's arguments, and the variables in the order of a `to[]` entry's values.
        parts = text.plain_parts or ()
        order = tuple(part.name for part in parts if isinstance(part, Variable))
        used = set(order)
        self._plain_format = "".join(part.replace("%", "%%") if isinstance(part, str) else "%s" for part in parts)
        # As text: a plain text only prints them, and personal values compare by text.
        self._plain_base: dict[str, Any] = {name: _as_text(value) for name, value in self.campaign_layer.items()
                                            if name in used}
        self._plain_builtins = ("msisdn" in used, "correlation_id" in used)
        self._plain_arguments = _getter(order)
        self._plain_variables = tuple(sorted(used & text.variables))
        # The own values that make a row common (see `render_plain`); None when the text
        # reads a built-in, whose value never comes from the row.
        self._plain_from_own = (None if any(self._plain_builtins) else
                                tuple(name for name in self._plain_variables if name not in self._plain_base))
        # Variables the campaign layer sets: personal only where a recipient's value differs.
        self._plain_overridable = tuple((name, self._plain_base[name]) for name in self._plain_variables
                                        if name in self._plain_base)

    def values_for(self, recipient: Recipient, correlation_id: str) -> dict[str, Any]:
        values = dict(self.campaign_layer)
        values["msisdn"] = recipient.msisdn
        values["correlation_id"] = correlation_id
        values.update(recipient.source_substitutions)
        values.update(recipient.substitutions)
        values.update(self._smartlink_tokens)
        return values

    def render_plain(self, own: Mapping[str, Scalar], shared: Mapping[str, Scalar], msisdn: str,
                     correlation_id: str) -> tuple[str, dict[str, Scalar]] | None:
        """A plain text for a recipient given by its own values, its source's values and
        its number: what `render` returns, and the personal values, i.e. the variables
        whose value is not the campaign layer's, by name (what platform personalisation
        sends per destination). None when a name is undefined: `render` raises for it.
        """
        if not shared and self._plain_from_own is not None and tuple(own) == self._plain_from_own:
            # The common row: its own values are exactly the variables the campaign does
            # not set, in name order (the order compile reads them in), so they are also
            # its personal values as they are.
            return self._plain_format % self._plain_arguments({**self._plain_base, **own}), dict(own)
        values = self._plain_base.copy()
        with_msisdn, with_correlation_id = self._plain_builtins
        if with_msisdn:
            values["msisdn"] = msisdn
        if with_correlation_id:
            values["correlation_id"] = correlation_id
        if shared:
            values.update(shared)
        values.update(own)
        values.update(self._smartlink_tokens)
        try:
            arguments = self._plain_arguments(values)
        except KeyError:
            return None
        personal: dict[str, Scalar] = {}
        for name in self._plain_variables:  # a plain loop: twice as fast as dict(zip(...))
            personal[name] = values[name]
        for name, campaign_value in self._plain_overridable:
            if same_value(personal[name], campaign_value):
                del personal[name]
        return self._plain_format % arguments, personal

    def render(self, recipient: Recipient, correlation_id: str) -> str:
        values = self.values_for(recipient, correlation_id)
        parts = self.text.plain_parts
        if parts is not None:
            try:
                return "".join(part if isinstance(part, str) else _as_text(values[part.name]) for part in parts)
            except KeyError as missing:
                raise self._missing(recipient, str(missing.args[0])) from None
        assert self._template is not None
        try:
            return _bounded_render(self._template, values)
        except UndefinedError as error:
            name = _undefined_name(error)
            raise self._missing(recipient, name) from None
        except TemplateCostError as error:
            raise CampaignError(f"{self.text.location}: error: template too costly for {recipient.origin}: {error} "
                                "[template-cost]",
                                hint="a message needs neither huge repetitions, numbers nor loops") from None
        except SecurityError as error:
            raise CampaignError(f"{self.text.location}: error: template not allowed: {error} [template-sandbox]") from None
        except Exception as error:  # a template's own runtime error (e.g. division by zero)
            raise CampaignError(
                f"{recipient.origin}: error: rendering failed for {recipient.msisdn}: {error} [template-runtime]"
            ) from None

    def _missing(self, recipient: Recipient, name: str) -> CampaignError:
        return CampaignError(
            f"{recipient.origin}: error: variable '{name}' is not defined for {recipient.msisdn} [missing-variable]",
            exit_code=ExitCode.INVALID,
            hint=f"add '{name}' to the campaign substitutions, the source's substitutions, or this recipient",
        )


def _bounded_render(template: Any, values: Mapping[str, Any]) -> str:
    """The rendered text, refused past `MAX_RENDERED_CHARS`. What it can reach before the
    check is bounded too: every `{{ }}` output counts against `MAX_OUTPUT_CHARS`, and
    literal text repeats at most `MAX_LOOP_STEPS` times. Runs the template's render
    function itself, as `Template.render` does, minus jinja2's traceback rewriting
    (errors are caught and reported by `Renderer.render`)."""
    text: str = template.environment.concat(template.root_render_func(template.new_context(values)))
    if len(text) > MAX_RENDERED_CHARS:
        raise TemplateCostError(f"the rendered text is {len(text):,} characters; at most {MAX_RENDERED_CHARS:,}")
    return text


def _getter(names: tuple[str, ...]) -> Callable[[Mapping[str, Any]], tuple[Any, ...]]:
    """`itemgetter` that always gives a tuple (it gives the bare value for one name)."""
    if len(names) == 1:
        only = names[0]
        return lambda values: (values[only],)
    return itemgetter(*names) if names else lambda values: ()


def same_value(a: Any, b: Any) -> bool:
    """The same text: what the platform prints and the wire carries. A row's `true` is
    not the campaign's `1` (Python says True == 1), nor is `1.50` the same as `1.5`."""
    if type(a) is str and type(b) is str:
        return a == b
    return a is b or _as_text(a) == _as_text(b)


def _as_text(value: Scalar) -> str:
    """The same text jinja2 would print for a value, so both strategies agree. Values
    from files print as written (`runner.model.written`)."""
    return str(value)


def _undefined_name(error: UndefinedError) -> str:
    message = str(error)
    if message.startswith("'") and "' is undefined" in message:
        return message[1 : message.index("' is undefined")]
    return message
