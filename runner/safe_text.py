"""What may reach a terminal or a pull request: text from campaign files made inert.

Campaign files and their CSVs come from pull requests. Their values end up in a
terminal (where ESC sequences recolour or hide rows, and CR overwrites them) and in PR
comments (where `<!--` hides the rest of a comment, `@team` pings people, and a phone
number is personal data). Every reporter passes such values through here, so there is
one definition of a control character, one markdown escape and one phone mask.
"""

from __future__ import annotations

import re

import phonenumbers

# C0 controls except LF (a message may have lines), DEL, C1 controls, and the Unicode
# bidirectional controls that reorder what a reader sees (U+202E shows text backwards).
CONTROL_CHARACTER = re.compile("[\x00-\x09\x0b-\x1f\x7f-\x9f\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069]")
_NAMED = {"\r": "\\r", "\t": "\\t", "\x1b": "\\x1b", "\x00": "\\0"}
_CALLING_CODES = frozenset(str(code) for code in phonenumbers.COUNTRY_CODE_TO_REGION_CODE)
# A phone number in free text: 8 to 15 digits standing alone, with or without '+' (E.164
# as recipients are normalised, but also a file's raw cell quoted by a row error, such as
# '447911000001' or '07911000003'). A sender's long code is masked too: over-masking in a
# review comment is harmless, `--show-pii` shows everything.
_PHONE_NUMBER = re.compile(r"(?<![\w•+])\+?\d{8,15}(?![\w•])")
MASK = "•••"


def _visible_char(match: re.Match[str]) -> str:
    char = match.group()
    named = _NAMED.get(char)
    if named is not None:
        return named
    return f"\\x{ord(char):02x}" if ord(char) < 0x100 else f"\\u{ord(char):04x}"


def visible(text: str) -> str:
    """Control characters spelled out (`\\x1b`, `\\r`, `\\u202e`), so they show instead of acting."""
    return CONTROL_CHARACTER.sub(_visible_char, text)


def control_characters(text: str) -> list[str]:
    """The distinct control characters in a text, as `U+001B` names, in order of appearance."""
    return list(dict.fromkeys(f"U+{ord(char):04X}" for char in CONTROL_CHARACTER.findall(text)))


# Backslash-escapable markdown punctuation that changes meaning inline: emphasis, links,
# images, code spans, strikethrough, tables, headings and HTML entities' own marker.
_MARKDOWN_SPECIAL = re.compile(r"([\\`*_\[\]~|#])")


def markdown(text: str, *, newlines: str = "<br>") -> str:
    """A value as inert text in GitHub-flavoured markdown and its HTML: no tag, comment,
    entity, link, emphasis, code span, table cell break or @-mention survives, and
    control characters are spelled out. Never put the result inside backticks (a code
    span shows backslashes literally); it is meant for plain text and table cells."""
    text = visible(text)
    text = text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    text = _MARKDOWN_SPECIAL.sub(r"\\\1", text)
    # A word joiner after '@' keeps the text readable and stops GitHub's mention (and team) links.
    text = text.replace("@", "@\u2060")
    return text.replace("\r\n", newlines).replace("\n", newlines)


def mask_msisdn(msisdn: str) -> str:
    """`+447911000123` -> `+44•••••••123`: the country and the last 3 digits, enough to
    tell numbers apart in a review, not enough to call anyone."""
    plus = "+" if msisdn.startswith("+") else ""
    digits = msisdn[len(plus):]
    code = next((digits[:n] for n in (1, 2, 3) if digits[:n] in _CALLING_CODES), "")
    hidden = len(digits) - len(code) - 3
    if hidden < 3:  # too short to keep anything but the end
        return plus + "•" * max(len(digits) - 2, 1) + digits[-2:]
    return plus + code + "•" * hidden + digits[-3:]


def mask_numbers(text: str) -> str:
    """Every phone-like run of digits in free text (a diagnostic, a vendor message) masked."""
    return _PHONE_NUMBER.sub(lambda match: mask_msisdn(match.group()), text)


def mask_identifier(value: str) -> str:
    """A correlation id may be a customer number, or a hash of the phone number: its
    first 3 characters (`cr-` for generated ones), then a mask."""
    return value[:3] + MASK if len(value) > 3 else MASK
