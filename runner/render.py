"""Rendering: one message text per recipient, with substitution precedence.

Campaign files come from pull requests, so templates run in jinja2's sandbox with
StrictUndefined: a template cannot run code, and a missing variable is an error that
names the recipient instead of a silent blank in someone's SMS.

Texts that use only plain `{{ name }}` variables are detected here, because the
compile stage can then let the platform personalise them (placeholders on the wire,
values per destination) instead of sending one request per distinct text.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
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
        self.campaign_layer: dict[str, Any] = {"campaign_id": campaign.id}
        self.campaign_layer.update({f"{vendor.SMARTLINK_TOKEN_PREFIX}{sid}": smartlink_token(
            f"{vendor.SMARTLINK_TOKEN_PREFIX}{sid}") for sid in text.smartlink_ids})
        self.campaign_layer.update(campaign.substitutions)
        self._template = None if text.is_plain else ENVIRONMENT.from_string(text.source)
        # Plain texts: the text as a %-format (`%s` calls str(), like `_as_text`) with the
        # names it reads in order, and per name (sorted): whether it is a variable, and the
        # campaign layer's value if any. `render_plain` needs nothing else per recipient.
        parts = text.plain_parts or ()
        self._plain_format = "".join(part.replace("%", "%%") if isinstance(part, str) else "%s" for part in parts)
        self._plain_order = tuple(part.name for part in parts if isinstance(part, Variable))
        self._plain_lookup = tuple((name, name in text.variables, name in self.campaign_layer,
                                    self.campaign_layer.get(name)) for name in sorted(set(self._plain_order)))

    def values_for(self, recipient: Recipient, correlation_id: str) -> dict[str, Any]:
        values = dict(self.campaign_layer)
        values["msisdn"] = recipient.msisdn
        values["correlation_id"] = correlation_id
        values.update(recipient.source_substitutions)
        values.update(recipient.substitutions)
        return values

    def render_plain(self, own: Mapping[str, Scalar], shared: Mapping[str, Scalar], msisdn: str,
                     correlation_id: str) -> tuple[str, dict[str, Scalar]] | None:
        """A plain text for a recipient given by its own values, its source's values and
        its number: what `render` returns, and the personal values, i.e. the variables
        whose value is not the campaign layer's, by name (what platform personalisation
        sends per destination). None when a name is undefined: `render` raises for it.
        """
        values: dict[str, Any] = {}
        personal: dict[str, Scalar] = {}
        for name, is_variable, in_campaign, campaign_value in self._plain_lookup:
            if name in own:
                value = own[name]
            elif name in shared:
                value = shared[name]
            elif name == "correlation_id":
                value = correlation_id
            elif name == "msisdn":
                value = msisdn
            elif in_campaign:
                values[name] = campaign_value
                continue
            else:
                return None
            values[name] = value
            if is_variable and (not in_campaign or campaign_value != value):
                personal[name] = value
        return self._plain_format % tuple([values[name] for name in self._plain_order]), personal

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


def _as_text(value: Scalar) -> str:
    """The same text jinja2 would print for a value, so both strategies agree."""
    return str(value)


def _undefined_name(error: UndefinedError) -> str:
    message = str(error)
    if message.startswith("'") and "' is undefined" in message:
        return message[1 : message.index("' is undefined")]
    return message
