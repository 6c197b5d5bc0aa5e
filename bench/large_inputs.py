"""What large campaign files cost `campaign validate`: refused by size, or checked.

Three child processes, each measured on its own with `os.wait4` (wall clock, the
child's user + system CPU, peak RSS):

* baseline: a campaign with one inline recipient (what starting the command costs);
* inline: a campaign listing N inline recipients (default 25,000, a real campaign),
  each with a name and a correlation id; it must load and validate (exit 0);
* oversized: a 42 MB campaign file of the same shape (real bytes, not a sparse file),
  which must be refused by its size before it is read (exit 1, `file-too-large`).

    python bench/large_inputs.py
    python bench/large_inputs.py --inline 50000 --oversized-mb 100
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HEADER = 'version: 1\nid: bench-inline\nfrom: "12025550100"\ncontent: {text: "Hi {{ name }}"}\nrecipients:\n'


def recipient(i: int) -> str:
    return f'- msisdn: "+4474{i:08d}"\n  substitutions: {{name: P{i}}}\n  correlationId: c{i}\n'


def write_inline(path: Path, count: int) -> None:
    with path.open("w", encoding="utf-8") as handle:
        handle.write(HEADER)
        for start in range(0, count, 10_000):
            handle.write("".join(recipient(i) for i in range(start, min(count, start + 10_000))))


def write_bytes_of_yaml(path: Path, size: int) -> None:
    with path.open("w", encoding="utf-8") as handle:
        handle.write(HEADER)
        i = 0
        while handle.tell() < size:
            handle.write("".join(recipient(i + k) for k in range(10_000)))
            i += 10_000


def measure(campaign: Path) -> tuple[int, float, float, float, str]:
    """(exit code, wall s, CPU s, peak RSS MB, first output line) of `campaign validate FILE`."""
    command = shutil.which("campaign") or sys.exit("`campaign` is not on PATH: pip install -e . first")
    environment = {**os.environ, "CAMPAIGN_NOW": "2026-11-23T12:00:00Z"}
    started = time.perf_counter()
    child = subprocess.Popen([command, "validate", str(campaign)], stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, env=environment)
    assert child.stdout is not None
    output = child.stdout.read().decode("utf-8", "replace")
    _, status, usage = os.wait4(child.pid, 0)
    wall = time.perf_counter() - started
    child.returncode = os.waitstatus_to_exitcode(status)
    first = output.splitlines()[0] if output else ""
    return child.returncode, wall, usage.ru_utime + usage.ru_stime, usage.ru_maxrss / 1024, first


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--inline", type=int, default=25_000, help="inline recipients (default 25,000)")
    parser.add_argument("--oversized-mb", type=float, default=42.0, help="size of the oversized file in MB")
    options = parser.parse_args()
    print(f"load average: {', '.join(f'{x:.2f}' for x in os.getloadavg())}")
    with tempfile.TemporaryDirectory() as folder:
        base, inline, oversized = Path(folder, "base.yaml"), Path(folder, "inline.yaml"), Path(folder, "big.yaml")
        write_inline(base, 1)
        write_inline(inline, options.inline)
        write_bytes_of_yaml(oversized, int(options.oversized_mb * 1_000_000))
        print(f"{'case':<28} {'bytes':>12} {'exit':>4} {'wall s':>8} {'CPU s':>7} {'RSS MB':>7}  first line")
        for name, path in (("baseline (1 inline)", base), (f"{options.inline:,} inline recipients", inline),
                           (f"{oversized.stat().st_size / 1e6:.0f} MB file", oversized)):
            code, wall, cpu, rss, first = measure(path)
            print(f"{name:<28} {path.stat().st_size:>12,} {code:>4} {wall:>8.2f} {cpu:>7.2f} {rss:>7.0f}  {first[:90]}")


if __name__ == "__main__":
    main()
