"""Benchmark: `campaign plan --state` against a ledger that accepted every recipient, vs
plain `campaign plan`, in the same run.

Run from the repository root (the package installed, `campaign` on PATH):

    python bench/plan_state.py                   # 1000000 recipients
    python bench/plan_state.py --sizes 100000 --repeat 3
    python bench/plan_state.py --workdir /tmp/bench --keep

For each size it writes the audience and campaign of bench/compile.py (platform
personalisation, 1,000 destinations a request), then builds a SQLite ledger in which
every recipient is `accepted`, as apply would have left it: the campaign's own batches
(`Compiler.iter_batches`), each destination with the `content_digest` apply records
(`batch_content_digests`), inserted with direct SQL into the schema `open_ledger`
created, in one transaction (minutes faster than sending a million through the
sandbox; the rows are the same). Then two child processes, each measured on its own
(wall seconds, CPU seconds, peak RSS from `os.wait4`):

* plan: `campaign plan campaign.yaml` (text output to /dev/null);
* plan --state: `campaign plan campaign.yaml --state ledger.db`: the same plan, plus
  one query of the ledger into a map number -> (status, digest), and every recipient
  classified (a digest computed for each accepted one) in the plan's own pass.

The goal it reports against (issue 10): plan --state within 2x of plain plan.
A measurement, not a test: nothing asserts on a time.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import sqlite3
import sys
import tempfile
import time
from pathlib import Path

from compile import Run, best, check_numbers, generate, measure  # bench/compile.py

GOAL_RATIO = 2.0


def build_ledger(campaign_file: Path, ledger_path: Path) -> tuple[int, float]:
    """Every recipient accepted, as apply records it; returns (destinations, seconds)."""
    from runner.compile import Compiler
    from runner.ledger import batch_content_digests, now_text, open_ledger
    from runner.send import input_hash
    from runner.validate import load_campaign

    start = time.perf_counter()
    from datetime import datetime, timezone

    campaign, _ = load_campaign(campaign_file, now=datetime.now(timezone.utc))
    open_ledger(ledger_path).close()  # the schema, as the tool creates it
    now = now_text()
    raw = sqlite3.connect(ledger_path, isolation_level=None)
    raw.execute("PRAGMA synchronous = OFF")
    raw.execute("BEGIN")
    raw.execute("INSERT INTO campaigns(environment, campaign_id, input_hash, created_at, updated_at) "
                "VALUES ('default', ?, ?, ?, ?)", (campaign.id, input_hash(campaign, "v2"), now, now))
    raw.execute("INSERT INTO runs(run_id, environment, campaign_id, seq, pid, hostname, started_at, finished_at) "
                "VALUES ('bench', 'default', ?, 1, 1, 'bench', ?, ?)", (campaign.id, now, now))
    count = 0
    for batch in Compiler(campaign).iter_batches():
        digests = batch_content_digests(batch)
        raw.execute("INSERT INTO batches(environment, batch_key, campaign_id, batch_index, api, status, attempts, "
                    "http_status, message_id, destinations_count, run_id, created_at, updated_at) "
                    "VALUES ('default', ?, ?, ?, 'v2', 'accepted', 1, 201, ?, ?, 'bench', ?, ?)",
                    (batch.key, campaign.id, batch.index, f"m-{batch.index}", len(batch.destinations), now, now))
        raw.executemany("INSERT INTO destinations(environment, campaign_id, batch_key, msisdn, correlation_id, status, "
                        "content_digest) VALUES ('default', ?, ?, ?, ?, 'accepted', ?)",
                        [(campaign.id, batch.key, d.msisdn, d.correlation_id, digests[d.msisdn])
                         for d in batch.destinations])
        count += len(batch.destinations)
    raw.execute("COMMIT")
    raw.close()
    return count, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1_000_000])
    parser.add_argument("--repeat", type=int, default=1)
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--keep", action="store_true")
    parser.add_argument("--reuse-ledger", action="store_true",
                        help="with --workdir: keep a ledger built by an earlier run (the same size)")
    args = parser.parse_args()
    campaign_cmd = shutil.which("campaign")
    if campaign_cmd is None:
        raise SystemExit("bench: `campaign` is not on PATH (pip install -e . in the active venv)")
    work = args.workdir or Path(tempfile.mkdtemp(prefix="bench-plan-state-"))
    work.mkdir(parents=True, exist_ok=True)
    print(f"# plan --state vs plan; {platform.python_implementation()} {platform.python_version()}, "
          f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}")
    try:
        for size in args.sizes:
            folder = work / str(size)
            folder.mkdir(exist_ok=True)
            check_numbers(size)
            ledger = folder / "ledger.db"
            if args.reuse_ledger and ledger.exists():
                campaign = folder / "campaign.yaml"
                print(f"\n{size:,} recipients; ledger of an earlier run ({ledger.stat().st_size / 1e6:.0f} MB)")
            else:
                campaign, _ = generate(folder, size)
                ledger.unlink(missing_ok=True)
                held, built = build_ledger(campaign, ledger)
                print(f"\n{size:,} recipients; ledger: {held:,} accepted destinations, built in {built:.1f} s "
                      f"({ledger.stat().st_size / 1e6:.0f} MB)")
            plain: list[Run] = []
            against: list[Run] = []
            for _ in range(args.repeat):  # interleaved, so a busy spell hits both
                plain.append(measure([campaign_cmd, "plan", str(campaign)], folder, folder / "plan.log"))
                against.append(measure([campaign_cmd, "plan", str(campaign), "--state", str(ledger)], folder,
                                       folder / "plan-state.log"))
            p, s = best(plain), best(against)
            print(f"{'':16}{'wall s':>9}{'cpu s':>9}{'peak RSS MB':>13}")
            print(f"{'plan':16}{p.seconds:9.2f}{p.cpu_seconds:9.2f}{p.peak_rss_mb:13.0f}")
            print(f"{'plan --state':16}{s.seconds:9.2f}{s.cpu_seconds:9.2f}{s.peak_rss_mb:13.0f}")
            ratio = s.seconds / p.seconds
            print(f"ratio: wall {ratio:.2f}x, cpu {s.cpu_seconds / p.cpu_seconds:.2f}x, "
                  f"RSS +{s.peak_rss_mb - p.peak_rss_mb:.0f} MB; goal <= {GOAL_RATIO:g}x: "
                  f"{'met' if ratio <= GOAL_RATIO else 'NOT met'}")
            tail = (folder / "plan-state.log").read_text(errors="replace").strip()
            if tail:
                print(f"(plan --state stderr: {tail[-300:]})")
    finally:
        if not args.keep and args.workdir is None:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    main()
