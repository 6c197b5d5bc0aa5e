"""How many SMS segments a rendered message costs, and in which encoding.

The count is billed per recipient, so it has to match what the network does: one
non-GSM character turns the whole message into UCS-2, and long messages are split
into parts that never cut a two-unit character in half (section 8 of the
shared webex-connect-api.md notes). `count` runs once per recipient of campaigns with a
million recipients, so every decision is made by a precompiled regex or a C-level
string method; Python only loops over the rare two-unit characters of long texts.

Empty text counts as one segment (0 units): the platform sends one empty message
rather than none, so a plan that said 0 would under-count what is billed.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from runner.model import Encoding, SegmentCount

__all__ = [
    "GSM7_BASIC",
    "GSM7_EXTENSION",
    "count",
    "gsm7_replacement",
    "is_gsm7",
    "non_gsm7",
]

# 3GPP TS 23.038 default alphabet in code order (0x00-0x7F), ESC (0x1B) left out:
# ESC is how the extension table is reached, never a character a user writes.
GSM7_BASIC: frozenset[str] = frozenset(
    "@£$¥èéùìòÇ\nØø\rÅå"
    "Δ_ΦΓΛΩΠΨΣΘΞÆæßÉ"  # 0x1B (ESC) omitted between Ξ and Æ
    " !\"#¤%&'()*+,-./"
    "0123456789:;<=>?"
    "¡ABCDEFGHIJKLMNO"
    "PQRSTUVWXYZÄÖÑÜ§"
    "¿abcdefghijklmno"
    "pqrstuvwxyzäöñüà"
)

# Reached through ESC, hence two septets each. Form feed is a control character but
# it is in the table, so a text containing it is still GSM-7.
GSM7_EXTENSION: frozenset[str] = frozenset("^{}\\[~]|€\x0c")

GSM7_SINGLE_LIMIT = 160
GSM7_PART_LIMIT = 153  # 7 septets of every part go to the concatenation header
UCS2_SINGLE_LIMIT = 70
UCS2_PART_LIMIT = 67  # 3 code units of every part go to the concatenation header


def _class(chars: Iterable[str], *, negate: bool) -> re.Pattern[str]:
    body = "".join(re.escape(c) for c in sorted(chars))
    return re.compile(f"[{'^' if negate else ''}{body}]")


# A regex search runs in C and stops at the first hit, which makes it faster than
# `frozenset.issuperset(text)` or `str.translate` for the all-basic common case.
_NOT_BASIC = _class(GSM7_BASIC, negate=True)
_NOT_GSM7 = _class(GSM7_BASIC | GSM7_EXTENSION, negate=True)
_EXTENSION = _class(GSM7_EXTENSION, negate=False)
_ASTRAL = re.compile("[\U00010000-\U0010ffff]")  # two UTF-16 code units each

# SegmentCount is frozen, so one-segment results can be shared; building a frozen
# dataclass costs about as much as the regex search, and nearly every message is
# a single segment.
# Enum members as module constants: `Encoding.UCS2` is a class attribute lookup through
# the enum machinery, four times the cost of a global, once per message.
_GSM7, _UCS2 = Encoding.GSM7, Encoding.UCS2

_GSM7_SINGLE = tuple(SegmentCount(_GSM7, u, 1) for u in range(GSM7_SINGLE_LIMIT + 1))
_UCS2_SINGLE = tuple(SegmentCount(_UCS2, u, 1) for u in range(UCS2_SINGLE_LIMIT + 1))


def is_gsm7(text: str) -> bool:
    return _NOT_GSM7.search(text) is None


def non_gsm7(text: str) -> list[tuple[int, str]]:
    """Indices are Python string indices (code points), so a caller can slice `text`
    with them or turn them into a column; they are not UTF-16 offsets."""
    return [(m.start(), m.group()) for m in _NOT_GSM7.finditer(text)]


def count(text: str, encoding: Encoding | None = None) -> SegmentCount:
    """Forcing GSM-7 on a text it cannot carry raises instead of counting the
    characters that would be lost: callers decide what to do with them first
    (`non_gsm7`, `gsm7_replacement`). Forcing UCS-2 counts a GSM text as UCS-2,
    since that is what `type: unicode` sends."""
    if encoding is not _UCS2:
        hit = _NOT_BASIC.search(text)
        if hit is None:
            units = len(text)
            if units <= GSM7_SINGLE_LIMIT:  # nearly every message: skip the call below
                return _GSM7_SINGLE[units]
            return _gsm7_count(units, text, has_extension=False)
        start = hit.start()
        bad = _NOT_GSM7.search(text, start)
        if bad is None:
            units = len(text) + len(_EXTENSION.findall(text, start))
            return _gsm7_count(units, text, has_extension=True)
        if encoding is _GSM7:
            raise ValueError(
                f"text is not GSM-7 encodable: {bad.group()!r} (U+{ord(bad.group()):04X}) at index {bad.start()}"
            )
    # surrogatepass: a lone surrogate (possible in a Python str) is one code unit, not an error.
    units = len(text.encode("utf-16-le", "surrogatepass")) // 2
    if units <= UCS2_SINGLE_LIMIT:
        return _UCS2_SINGLE[units]
    if units == len(text):  # BMP only: every character is one unit, no pair to protect
        segments = -(-units // UCS2_PART_LIMIT)
    else:
        segments = _parts(text, _ASTRAL, UCS2_PART_LIMIT)
    return SegmentCount(_UCS2, units, segments)


def _gsm7_count(units: int, text: str, *, has_extension: bool) -> SegmentCount:
    if units <= GSM7_SINGLE_LIMIT:
        return _GSM7_SINGLE[units]
    if not has_extension:  # every character one septet: the plain ceil is exact
        segments = -(-units // GSM7_PART_LIMIT)
    else:
        segments = _parts(text, _EXTENSION, GSM7_PART_LIMIT)
    return SegmentCount(_GSM7, units, segments)


def _parts(text: str, doubles: re.Pattern[str], limit: int) -> int:
    """Parts needed when the characters matched by `doubles` cost two units and must
    stay whole (an ESC+char pair, a surrogate pair), the rest one unit each.

    This is the greedy fill a sender does -- add characters to the current part until
    the next one does not fit, then start a new part -- and so it can need one part
    more than ceil(units / limit): with 152 one-unit characters, a two-unit one and
    152 more (306 units), the two-unit character moves to part 2 and leaves 154 units
    for it, so 3 parts of 153, not 2. Runs of one-unit characters between the two-unit
    ones are added arithmetically, so the Python loop runs once per two-unit char.
    """
    parts, used, pos = 1, 0, 0
    for m in doubles.finditer(text):
        used, parts = _fill(used + m.start() - pos, parts, limit)
        if used + 2 > limit:
            parts, used = parts + 1, 2
        else:
            used += 2
        pos = m.end()
    return _fill(used + len(text) - pos, parts, limit)[1]


def _fill(used: int, parts: int, limit: int) -> tuple[int, int]:
    """Spill one-unit characters that overflow the current part into new parts."""
    if used <= limit:
        return used, parts
    extra = (used - 1) // limit
    return used - extra * limit, parts + extra


# Typographic look-alikes that word processors and phones substitute for plain
# characters; one of them is enough to turn a message into UCS-2 and double its cost.
# An empty string means "drop it": these characters are invisible.
_REPLACEMENTS: dict[str, str] = {
    # single quotes, primes, backtick (` is not in GSM-7 either)
    "\u2018": "'", "\u2019": "'", "\u201a": "'", "\u201b": "'", "\u2032": "'",
    "\u2039": "'", "\u203a": "'", "\u00b4": "'", "`": "'",
    # double quotes, double prime, guillemets
    "\u201c": '"', "\u201d": '"', "\u201e": '"', "\u201f": '"', "\u2033": '"',
    "\u00ab": '"', "\u00bb": '"',
    # hyphens, dashes, minus sign, bullets
    "\u2010": "-", "\u2011": "-", "\u2012": "-", "\u2013": "-", "\u2014": "-",
    "\u2015": "-", "\u2212": "-", "\u2022": "-", "\u2023": "-", "\u2043": "-",
    "\u00b7": "-",
    # ellipsis
    "\u2026": "...",
    # spaces: tab, no-break, en/em/figure/thin/hair, narrow no-break, ideographic
    "\t": " ", "\u00a0": " ", "\u2000": " ", "\u2001": " ", "\u2002": " ",
    "\u2003": " ", "\u2004": " ", "\u2005": " ", "\u2006": " ", "\u2007": " ",
    "\u2008": " ", "\u2009": " ", "\u200a": " ", "\u202f": " ", "\u205f": " ",
    "\u3000": " ",
    # line/paragraph separators
    "\u2028": "\n", "\u2029": "\n",
    # invisible: zero-width space, soft hyphen, byte order mark / zero-width no-break
    "\u200b": "", "\u00ad": "", "\ufeff": "",
}


def gsm7_replacement(char: str) -> str | None:
    """Only characters outside GSM-7 have stand-ins (a GSM-7 character gives None).
    The result may be the empty string for invisible characters, so test it with
    `is None`, not for truthiness."""
    return _REPLACEMENTS.get(char)
