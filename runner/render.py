"""Rendering: one message text per recipient, with substitution precedence.

Campaign files come from pull requests, so templates run in jinja2's sandbox with
StrictUndefined: a template cannot run code, and a missing variable is an error that
names the recipient instead of a silent blank in someone's SMS.

Texts that use only plain `{{ name }}` variables are detected here, because the
compile stage can then let the platform personalise them (placeholders on the wire,
values per destination) instead of sending one request per distinct text.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from operator import itemgetter
from typing import Any

from jinja2 import StrictUndefined, TemplateSyntaxError, UndefinedError, nodes
from jinja2.exceptions import SecurityError
from jinja2.sandbox import SandboxedEnvironment

from . import vendor
from .errors import CampaignError, ExitCode
from .model import Campaign, Location, Recipient, Scalar

ENVIRONMENT = SandboxedEnvironment(undefined=StrictUndefined, autoescape=False)
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


def compile_text(text: str, location: Location) -> CompiledText:
    """Parse a message text once; syntax errors point at the line inside the text."""
    try:
        tree = ENVIRONMENT.parse(text)
    except TemplateSyntaxError as error:
        line = location.line + (error.lineno or 1) - 1 if location.line else 0
        where = Location(location.file, line, location.col if line == location.line else 0)
        raise CampaignError(
            f"{where}: error: template syntax: {error.message} [template-syntax]",
            hint="message text uses Jinja2 syntax: {{ name }}, {% if ... %}",
        ) from None
    names = {node.name for node in tree.find_all(nodes.Name) if node.ctx == "load"}
    smartlinks = {name for name in names if name.startswith(vendor.SMARTLINK_TOKEN_PREFIX)}
    assigned = {node.name for node in tree.find_all(nodes.Name) if node.ctx == "store"}
    return CompiledText(
        source=text,
        location=location,
        variables=frozenset(names - smartlinks - assigned),
        smartlink_ids=frozenset(name[len(vendor.SMARTLINK_TOKEN_PREFIX) :] for name in smartlinks),
        plain_parts=_plain_parts(tree),
    )


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
        self._template = None if text.is_plain else ENVIRONMENT.from_string(text.source)
        # Plain texts: the text as a %-format (`%s` calls str(), like `_as_text`), and
        # what `render_plain` needs so that per recipient it makes C-level calls only:
        # the campaign layer's values of the names the text reads, a getter for the
        # format's arguments, and the variables in the order of a `to[]` entry's values.
        parts = text.plain_parts or ()
        order = tuple(part.name for part in parts if isinstance(part, Variable))
        used = set(order)
        self._plain_format = "".join(part.replace("%", "%%") if isinstance(part, str) else "%s" for part in parts)
        self._plain_base = {name: value for name, value in self.campaign_layer.items() if name in used}
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
            return self._template.render(values)
        except UndefinedError as error:
            name = _undefined_name(error)
            raise self._missing(recipient, name) from None
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


def _getter(names: tuple[str, ...]) -> Callable[[Mapping[str, Any]], tuple[Any, ...]]:
    """`itemgetter` that always gives a tuple (it gives the bare value for one name)."""
    if len(names) == 1:
        only = names[0]
        return lambda values: (values[only],)
    return itemgetter(*names) if names else lambda values: ()


def same_value(a: Any, b: Any) -> bool:
    """Equal and of one type: a row's `true` is not the campaign's `1` (Python says
    True == 1), and the platform would print them differently."""
    return type(a) is type(b) and a == b


def _as_text(value: Scalar) -> str:
    """The same text jinja2 would print for a value, so both strategies agree."""
    return str(value)


def _undefined_name(error: UndefinedError) -> str:
    message = str(error)
    if message.startswith("'") and "' is undefined" in message:
        return message[1 : message.index("' is undefined")]
    return message
