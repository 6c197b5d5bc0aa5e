"""Fuzzing the recipient-file loaders: whatever bytes a CSV or JSON Lines file holds,
reading it yields recipients or stops with the project's one-line located error."""

from __future__ import annotations

import json
import re
import tempfile
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from runner.errors import CampaignError, ExitCode
from runner.model import Location, RecipientFile
from runner.recipients import check_source_readable, iter_source

VALID = ["+447911000001", "+14155550101", "+33612345678", "+4479", "447911000002", "", "abc", "+44 7911 000003"]

rows = st.lists(
    st.tuples(st.sampled_from(VALID), st.text(max_size=8), st.text(max_size=8)),
    max_size=8,
)


def _read(content: bytes, fmt: str) -> None:
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / f"people.{fmt}"
        path.write_bytes(content)
        source = RecipientFile(path, path.name, "csv" if fmt == "csv" else "jsonl", "msisdn", {},
                               Location("campaign.yaml", 7, 11))
        reason = check_source_readable(source)
        assert reason is None or ("\n" not in reason and reason.strip() == reason)
        try:
            for recipient in iter_source(source):
                assert recipient.msisdn.startswith("+") and recipient.msisdn[1:].isdigit()
                assert recipient.origin.file == path.name and recipient.origin.line >= 2 - (fmt == "jsonl")
        except CampaignError as error:
            assert error.exit_code == ExitCode.INVALID
            # the file exists, so the error is about its content: located in it, never at the campaign line
            # every bad row is listed, one located line each (at most 20, then a count of the rest)
            lines = error.message.split("\n")
            assert len(lines) <= 21, error.message
            if len(lines) == 21:
                assert re.fullmatch(r"… and [0-9,]+ more bad rows", lines.pop()), error.message
            for line in lines:
                assert line.startswith(f"{path.name}:"), error.message
                assert line.endswith(" [recipient-row]"), error.message


@settings(max_examples=150, deadline=None)
@given(content=st.binary(max_size=300), fmt=st.sampled_from(["csv", "jsonl"]))
def test_arbitrary_bytes_never_escape_as_anything_but_a_located_error(content: bytes, fmt: str) -> None:
    _read(content, fmt)


@settings(max_examples=150, deadline=None)
@given(body=rows, header=st.sampled_from(["msisdn,name,note", "name,msisdn,note", "msisdn,name", "phone,name,note"]),
       bom=st.booleans(), newline=st.sampled_from(["\n", "\r\n"]))
def test_csv_like_files_read_or_fail_with_a_row(body: list[tuple[str, str, str]], header: str, bom: bool,
                                                newline: str) -> None:
    lines = [header] + [",".join(cells) for cells in body]
    content = (b"\xef\xbb\xbf" if bom else b"") + newline.join(lines).encode("utf-8")
    _read(content, "csv")


@settings(max_examples=150, deadline=None)
@given(objects=st.lists(st.dictionaries(st.sampled_from(["msisdn", "name", "correlationId", "n"]),
                                        st.one_of(st.sampled_from(VALID), st.integers(), st.none(), st.booleans(),
                                                  st.floats(allow_nan=True)), max_size=4), max_size=6))
def test_jsonl_like_files_read_or_fail_with_a_row(objects: list[dict[str, object]]) -> None:
    _read("\n".join(json.dumps(o) for o in objects).encode("utf-8"), "jsonl")
