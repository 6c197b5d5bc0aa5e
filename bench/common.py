"""What both benchmarks write: an audience CSV and the campaign that sends to it.

Imported by `compile.py` and `send.py` (run as scripts, so this folder is on the path).
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

_CHUNK_ROWS = 10_000  # rows joined per write: millions of rows, never a list of them all


def write_audience(path: Path, header: str, rows: Iterable[str]) -> None:
    """`rows` are whole CSV lines, newline included."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8", newline="") as handle:
        handle.write(header + "\n")
        chunk: list[str] = []
        for row in rows:
            chunk.append(row)
            if len(chunk) == _CHUNK_ROWS:
                handle.write("".join(chunk))
                chunk.clear()
        handle.write("".join(chunk))


def write_campaign(path: Path, *, campaign_id: str, description: str, sender: str, content_type: str,
                   text: str, store: str, tps: int, audience: str = "audience.csv",
                   personalisation: str = "local") -> None:
    """A plain-variable campaign over one CSV audience, with `store` as a campaign value."""
    path.write_text(
        "version: 1\n"
        f"id: {campaign_id}\n"
        f"description: {description}\n"
        f'from: "{sender}"\n'
        "content:\n"
        f"  type: {content_type}\n"
        f'  text: "{text}"\n'
        f"substitutions: {{store: {store}}}\n"
        f"recipients: [{{file: {audience}}}]\n"
        f"throughput: {{tps: {tps}}}\n"
        f"personalisation: {personalisation}\n",
        encoding="utf-8",
    )
