"""The recipients stage: sources, normalisation, dedupe/exclude, errors, memory."""

from __future__ import annotations

import tracemalloc
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Literal

import pytest

from runner.errors import CampaignError, ExitCode
from runner.model import (
    Campaign,
    ExcludedNumber,
    ExcludeSource,
    InlineRecipient,
    Location,
    RecipientFile,
    RecipientSource,
    Scalar,
    SourceDocument,
)
from runner.recipients import (
    RecipientStats,
    check_source_readable,
    iter_recipients,
    iter_source,
    load_excluded,
    normalise_msisdn,
)

YAML = "campaign.yaml"


# --- helpers ------------------------------------------------------------------------


def make_campaign(
    tmp_path: Path,
    recipients: Sequence[RecipientSource] = (),
    exclude: Sequence[ExcludeSource] = (),
) -> Campaign:
    source = SourceDocument(
        path=tmp_path / YAML,
        display_name=YAML,
        data={},
        value_positions={},
        key_positions={},
        raw_scalars={},
    )
    return Campaign(
        id="spring-sale",
        description=None,
        sender="ACME",
        content=None,
        template=None,
        substitutions={},
        recipients=tuple(recipients),
        exclude=tuple(exclude),
        send_at=None,
        expire_at=None,
        validity_seconds=None,
        options=None,
        requested_receipts=(),
        notify_url=None,
        notify_url_auth_id=None,
        callback_data=None,
        contact_policy=None,
        smartlinks=(),
        tps=10,
        source=source,
    )


def file_source(
    path: Path,
    fmt: Literal["csv", "jsonl"] = "csv",
    *,
    field: str = "msisdn",
    substitutions: Mapping[str, Scalar] | None = None,
    line: int = 12,
) -> RecipientFile:
    return RecipientFile(
        path=path,
        display_name=path.name,
        format=fmt,
        msisdn_field=field,
        substitutions=dict(substitutions or {}),
        location=Location(YAML, line, 7),
    )


def write(tmp_path: Path, name: str, text: str, *, bom: bool = False) -> Path:
    path = tmp_path / name
    path.write_bytes((b"\xef\xbb\xbf" if bom else b"") + text.encode("utf-8"))
    return path


def inline(msisdn: str, line: int = 20, **subs: Scalar) -> InlineRecipient:
    return InlineRecipient(msisdn=msisdn, substitutions=subs, correlation_id=None, location=Location(YAML, line, 9))


def as_error(message: str) -> str:
    """`file:row: text` in the project's located-error form."""
    location, _, text = message.partition(": ")
    return f"{location}: error: {text} [recipient-row]"


def error_of(source: RecipientSource) -> CampaignError:
    with pytest.raises(CampaignError) as info:
        list(iter_source(source))
    assert info.value.exit_code == ExitCode.INVALID
    return info.value


# --- CSV ----------------------------------------------------------------------------


@pytest.mark.parametrize("bom", [False, True])
def test_csv_with_and_without_bom(tmp_path: Path, bom: bool) -> None:
    path = write(tmp_path, "r.csv", "msisdn,name\r\n+447400123456,Ann\r\n+33612345678,Bob\r\n", bom=bom)
    got = list(iter_source(file_source(path, substitutions={"shop": "Leeds"})))
    assert [r.msisdn for r in got] == ["+447400123456", "+33612345678"]
    assert [dict(r.substitutions) for r in got] == [{"name": "Ann"}, {"name": "Bob"}]
    assert [r.origin for r in got] == [Location("r.csv", 2), Location("r.csv", 3)]
    assert all(r.correlation_id is None for r in got)


def test_custom_number_column_and_correlation_id(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "r.csv",
        "name,phone,correlationId\nAnn,+447400123456,c-1\nBob,+33612345678,\n",
    )
    got = list(iter_source(file_source(path, field="phone")))
    assert [(r.msisdn, r.correlation_id) for r in got] == [("+447400123456", "c-1"), ("+33612345678", None)]
    assert [dict(r.substitutions) for r in got] == [{"name": "Ann"}, {"name": "Bob"}]


def test_row_and_source_substitutions_kept_apart(tmp_path: Path) -> None:
    path = write(tmp_path, "r.csv", "msisdn,first,code\n+447400123456,Ann,\n+33612345678,Bob,X9\n")
    got = list(iter_source(file_source(path, substitutions={"shop": "Leeds", "first": "Customer"})))
    # an empty cell is "no value": it must not blank a lower layer's value
    assert [dict(r.substitutions) for r in got] == [{"first": "Ann"}, {"first": "Bob", "code": "X9"}]
    assert [dict(r.source_substitutions) for r in got] == [{"shop": "Leeds", "first": "Customer"}] * 2


def test_header_names_are_trimmed(tmp_path: Path) -> None:
    path = write(tmp_path, "r.csv", "msisdn , name\n+447400123456, Ann \n")
    [got] = iter_source(file_source(path))
    assert dict(got.substitutions) == {"name": " Ann "}  # cell values are kept as written


def test_quoted_multiline_cells_keep_row_numbers(tmp_path: Path) -> None:
    text = 'msisdn,note\n+447400123456,"line one\nline two"\n+33612345678,plain\n\n+4915123456789,"a\n\nb"\n+4479,x\n'
    path = write(tmp_path, "r.csv", text)
    got = []
    with pytest.raises(CampaignError) as info:
        for recipient in iter_source(file_source(path)):
            got.append(recipient)
    assert [r.origin.line for r in got] == [2, 4, 6]
    assert got[0].substitutions == {"note": "line one\nline two"}
    assert str(info.value) == as_error("r.csv:9: '+4479' is not a valid E.164 number: too short for country code +44 (GB, GG, IM, JE)")


# --- JSON Lines ---------------------------------------------------------------------


def test_jsonl(tmp_path: Path) -> None:
    text = (
        '{"msisdn": "+447400123456", "name": "Ann", "visits": 3, "vip": true, "score": 1.5, "correlationId": "c-1"}\n'
        "\n"
        '   \n'
        '{"msisdn": "0033 6 12 34 56 78", "name": "Bob", "correlationId": ""}\n'
    )
    path = write(tmp_path, "r.jsonl", text, bom=True)
    got = list(iter_source(file_source(path, "jsonl", substitutions={"shop": "Leeds"})))
    assert [(r.msisdn, r.correlation_id, r.origin) for r in got] == [
        ("+447400123456", "c-1", Location("r.jsonl", 1)),
        ("+33612345678", None, Location("r.jsonl", 4)),
    ]
    assert dict(got[0].substitutions) == {"name": "Ann", "visits": 3, "vip": True, "score": 1.5}
    assert dict(got[1].substitutions) == {"name": "Bob"}
    assert dict(got[1].source_substitutions) == {"shop": "Leeds"}


# --- numbers in files -------------------------------------------------------------


def test_punctuation_and_00_normalised_in_files(tmp_path: Path) -> None:
    path = write(tmp_path, "r.csv", 'msisdn\n"0044 (0)7400-123.456"\n+1 (415) 555-2671\n')
    assert [r.msisdn for r in iter_source(file_source(path))] == ["+447400123456", "+14155552671"]


# --- several sources, duplicates, exclusions -----------------------------------------


def test_sources_in_order_with_duplicates_counted(tmp_path: Path) -> None:
    csv_path = write(tmp_path, "a.csv", "msisdn\n+33612345678\n+44 7400 123456\n+4915123456789\n")
    jsonl_path = write(tmp_path, "b.jsonl", '{"msisdn": "+4915123456789"}\n{"msisdn": "+61412345678"}\n')
    campaign = make_campaign(
        tmp_path,
        recipients=[
            inline("+447400123456", line=20, name="Inline"),
            file_source(csv_path),
            file_source(jsonl_path, "jsonl"),
            inline("0044 7400 123456", line=30),
        ],
    )
    stats = RecipientStats()
    got = list(iter_recipients(campaign, stats))
    assert [(r.msisdn, str(r.origin)) for r in got] == [
        ("+447400123456", "campaign.yaml:20:9"),
        ("+33612345678", "a.csv:2"),
        ("+4915123456789", "a.csv:4"),
        ("+61412345678", "b.jsonl:2"),
    ]
    assert got[0].substitutions == {"name": "Inline"} and got[0].source_substitutions == {}
    assert stats == RecipientStats(total_rows=7, duplicates=3, excluded=0, accepted=4)


def test_exclude_via_file_and_inline_number(tmp_path: Path) -> None:
    recipients = write(
        tmp_path,
        "r.csv",
        "msisdn\n+447400123456\n+33612345678\n+4915123456789\n+33 6 12 34 56 78\n+61412345678\n+14155552671\n",
    )
    optout_csv = write(tmp_path, "optout.csv", "name,phone\nAnn,+33612345678\n")
    optout_jsonl = write(tmp_path, "optout.jsonl", '{"phone": "0049 151 23456789", "extra": [1]}\n')
    campaign = make_campaign(
        tmp_path,
        recipients=[file_source(recipients)],
        exclude=[
            file_source(optout_csv, field="phone"),
            file_source(optout_jsonl, "jsonl", field="phone"),
            ExcludedNumber("+1 415 555 2671", Location(YAML, 40, 5)),
        ],
    )
    assert set(load_excluded(campaign)) == {33612345678, 4915123456789, 14155552671}
    stats = RecipientStats()
    got = [r.msisdn for r in iter_recipients(campaign, stats)]
    assert got == ["+447400123456", "+61412345678"]
    # The French number occurs twice: excluded both times, never a duplicate.
    assert stats == RecipientStats(total_rows=6, duplicates=0, excluded=4, accepted=2)


def test_stats_argument_is_optional(tmp_path: Path) -> None:
    campaign = make_campaign(tmp_path, recipients=[inline("+447400123456")])
    assert [r.msisdn for r in iter_recipients(campaign)] == ["+447400123456"]


def test_stats_add_up_over_two_streams(tmp_path: Path) -> None:
    path = write(tmp_path, "r.csv", "msisdn\n+447400123456\n+14155552671\n")
    campaign = make_campaign(tmp_path, recipients=[file_source(path), inline("+447400123456")],
                             exclude=[ExcludedNumber("+14155552671", Location(YAML, 9))])
    stats = RecipientStats()
    for _ in range(2):
        list(iter_recipients(campaign, stats))
    assert stats == RecipientStats(total_rows=6, duplicates=2, excluded=2, accepted=2)


# --- errors -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("msisdn\n+447400123456\n+4479\n", "r.csv:3: '+4479' is not a valid E.164 number: too short for country code +44 (GB, GG, IM, JE)"),
        (
            "msisdn\n07400 123456\n",
            "r.csv:2: '07400 123456' is not a valid E.164 number: missing country code: write it as +<country><number>",
        ),
        (
            "msisdn\n+44 7400 1234567\n",
            "r.csv:2: '+44 7400 1234567' is not a valid E.164 number: too long for country code +44 (GB, GG, IM, JE)",
        ),
        (
            "msisdn\n+44 7700 900123\n",
            "r.csv:2: '+44 7700 900123' is not a valid E.164 number: no number of country code +44 (GB, GG, IM, JE) has this form",
        ),
        (
            "msisdn\n+999 123456\n",
            "r.csv:2: '+999 123456' is not a valid E.164 number: it does not start with a known country calling code",
        ),
        (
            "msisdn\n+44 7400 ABC\n",
            "r.csv:2: '+44 7400 ABC' is not a valid E.164 number: it may contain only a leading '+', digits, spaces, dashes, dots and brackets",
        ),
        ("msisdn,name\n+447400123456,Ann\n ,Bob\n", "r.csv:3: missing number in column 'msisdn'"),
        ("msisdn,name\n+447400123456,Ann,extra\n", "r.csv:2: row has 3 cells but the header has 2"),
        ("msisdn,name,city\n+447400123456,Ann\n", "r.csv:2: row has 2 cells but the header has 3"),
        ("", "r.csv:1: no header row: the first line must name the columns"),
        ("phone,name\n+447400123456,Ann\n", "r.csv:1: no 'msisdn' column in the header (columns: phone, name)"),
        ("msisdn,name,name\n", "r.csv:1: column 'name' appears twice in the header"),
        ("msisdn,\n", "r.csv:1: header cell 2 is empty: every column needs a name"),
    ],
)
def test_csv_errors(tmp_path: Path, text: str, message: str) -> None:
    path = write(tmp_path, "r.csv", text)
    assert str(error_of(file_source(path))) == as_error(message)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('{"msisdn": "+447400123456"}\n{"msisdn": "+4479"}\n', "r.jsonl:2: '+4479' is not a valid E.164 number: too short for country code +44 (GB, GG, IM, JE)"),
        ('{"msisdn": "+447400123456"\n', "r.jsonl:1: invalid JSON: Expecting ',' delimiter (column 28)"),
        ("\n[1, 2]\n", "r.jsonl:2: expected a JSON object, found a list"),
        ('{"phone": "+447400123456"}\n', "r.jsonl:1: missing number: no 'msisdn' key (keys: phone)"),
        ('{"msisdn": " "}\n', "r.jsonl:1: missing number: 'msisdn' is empty"),
        ('{"msisdn": null}\n', "r.jsonl:1: 'msisdn' must be a string like \"+447700900123\", found null"),
        ('{"msisdn": 447400123456}\n', 'r.jsonl:1: \'msisdn\' must be a string like "+447700900123", found a number'),
        ('{"msisdn": "+447400123456", "tags": ["a"]}\n', "r.jsonl:1: value of 'tags' must be a string, number or boolean, found a list"),
        ('{"msisdn": "+447400123456", "name": null}\n', "r.jsonl:1: value of 'name' must be a string, number or boolean, found null"),
        ('{"msisdn": "+447400123456", "correlationId": 7}\n', "r.jsonl:1: 'correlationId' must be a string, found a number"),
        ('{"msisdn": "+447400123456", "score": NaN}\n', "r.jsonl:1: invalid JSON: NaN is not valid JSON"),
    ],
)
def test_jsonl_errors(tmp_path: Path, text: str, message: str) -> None:
    path = write(tmp_path, "r.jsonl", text)
    assert str(error_of(file_source(path, "jsonl"))) == as_error(message)


@pytest.mark.parametrize(("fmt", "name"), [("csv", "r.csv"), ("jsonl", "r.jsonl")])
def test_non_utf8_points_at_the_row(tmp_path: Path, fmt: Literal["csv", "jsonl"], name: str) -> None:
    rows = [b"msisdn,name\n"] if fmt == "csv" else []
    good = (lambda i: b"+4474%08d,x\n" % i) if fmt == "csv" else (lambda i: b'{"msisdn": "+4474%08d"}\n' % i)
    rows += [good(i) for i in range(2000)]  # well past the first decode chunk
    rows.append(b"+447400123456,Ren\xe9\n" if fmt == "csv" else b'{"msisdn": "+447400123456", "n": "Ren\xe9"}\n')
    path = tmp_path / name
    path.write_bytes(b"".join(rows))
    bad_line = len(rows)
    column = 18 if fmt == "csv" else 38
    assert str(error_of(file_source(path, fmt))) == as_error(
        f"{name}:{bad_line}: not valid UTF-8 (byte 0xe9 at column {column}): save the file as UTF-8"
    )


def test_missing_file_points_at_the_campaign_line(tmp_path: Path) -> None:
    path = tmp_path / "nowhere.csv"
    assert str(error_of(file_source(path, line=14))) == as_error(
        f"campaign.yaml:14:7: cannot read csv file nowhere.csv ({path}): file not found"
    )
    assert str(error_of(file_source(tmp_path, line=15))) == as_error(
        f"campaign.yaml:15:7: cannot read csv file {tmp_path.name} ({tmp_path}): it is a directory"
    )


def test_invalid_inline_and_excluded_numbers(tmp_path: Path) -> None:
    assert str(error_of(inline("07400123456", line=21))) == as_error(
        "campaign.yaml:21:9: '07400123456' is not a valid E.164 number: missing country code: write it as +<country><number>"
    )
    optout = write(tmp_path, "optout.csv", "msisdn\n+447400123456\n\n+4479\n")
    campaign = make_campaign(tmp_path, recipients=[inline("+33612345678")], exclude=[file_source(optout)])
    with pytest.raises(CampaignError) as info:
        list(iter_recipients(campaign))
    assert str(info.value) == as_error("optout.csv:4: '+4479' is not a valid E.164 number: too short for country code +44 (GB, GG, IM, JE)")
    campaign = make_campaign(tmp_path, exclude=[ExcludedNumber("+4479", Location(YAML, 41, 5))])
    with pytest.raises(CampaignError) as info:
        load_excluded(campaign)
    assert str(info.value) == as_error("campaign.yaml:41:5: '+4479' is not a valid E.164 number: too short for country code +44 (GB, GG, IM, JE)")


# --- check_source_readable ------------------------------------------------------------


def test_check_source_readable(tmp_path: Path) -> None:
    good_csv = write(tmp_path, "good.csv", "msisdn,name\n+447400123456,Ann\n", bom=True)
    assert check_source_readable(file_source(good_csv)) is None
    good_jsonl = write(tmp_path, "good.jsonl", '\n{"msisdn": "+447400123456"}\n')
    assert check_source_readable(file_source(good_jsonl, "jsonl")) is None
    assert check_source_readable(file_source(write(tmp_path, "empty.jsonl", ""), "jsonl")) is None

    missing = tmp_path / "missing.csv"
    assert check_source_readable(file_source(missing)) == f"cannot read {missing}: file not found"
    assert check_source_readable(file_source(write(tmp_path, "e.csv", ""))) == (
        "no header row: the first line must name the columns"
    )
    assert check_source_readable(file_source(good_csv, field="phone")) == (
        "no 'phone' column in the header (columns: msisdn, name)"
    )
    bad_jsonl = write(tmp_path, "bad.jsonl", "\r\n[1]\n")
    assert check_source_readable(file_source(bad_jsonl, "jsonl")) == "line 2: expected a JSON object, found a list"
    assert check_source_readable(file_source(good_jsonl, "jsonl", field="phone")) == (
        "line 2: missing number: no 'phone' key (keys: msisdn)"
    )
    latin1 = tmp_path / "latin1.csv"
    latin1.write_bytes(b"\xef\xbb\xbfmsisdn,name\n+447400123456,Ren\xe9\n")
    assert check_source_readable(file_source(latin1)) == "line 2: not valid UTF-8 (byte 0xe9): save the file as UTF-8"


def test_check_source_reads_only_the_start(tmp_path: Path) -> None:
    path = tmp_path / "big.csv"
    body = b"".join(b"+4474%08d,x\n" % i for i in range(20000))
    path.write_bytes(b"msisdn,name\n" + body + b"+447400123456,Ren\xe9\n")
    assert check_source_readable(file_source(path)) is None  # the bad byte is past the peek


# --- memory -----------------------------------------------------------------------------


def _write_audience(path: Path, rows: int) -> None:
    with path.open("w", encoding="utf-8", newline="") as handle:
        handle.write("msisdn,first_name,city\n")
        handle.writelines(f"+4474{i:08d},Name{i},City{i % 97}\n" for i in range(rows))


def _peak_while_consuming(campaign: Campaign) -> tuple[int, RecipientStats]:
    stats = RecipientStats()
    tracemalloc.start()
    try:
        for _ in iter_recipients(campaign, stats):
            pass
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    return peak, stats


def test_memory_stays_flat_as_recipients_grow(tmp_path: Path) -> None:
    small, large = 20_000, 200_000
    peaks = {}
    normalise_msisdn("+447400123456")  # build the +44 pattern table outside the measurement
    for rows in (small, large):
        path = tmp_path / f"a{rows}.csv"
        _write_audience(path, rows)
        peak, stats = _peak_while_consuming(make_campaign(tmp_path, recipients=[file_source(path)]))
        assert stats == RecipientStats(total_rows=rows, accepted=rows)
        peaks[rows] = peak
    # Holding the 180k extra rows would cost about 500 bytes each (~90 MB), and a Python
    # set of their numbers about 60 bytes each (~11 MB). Streaming with a `NumberSet`
    # costs about 5 bytes a number: allow 8, plus 1 MB of noise.
    assert peaks[large] - peaks[small] < (large - small) * 8 + 1_000_000, peaks
