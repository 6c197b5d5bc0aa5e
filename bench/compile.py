"""Benchmark: `campaign compile` end to end against a hand-written floor.

Run from the repository root (the package installed, `campaign` on PATH):

    python bench/compile.py                      # sizes 100000 and 1000000
    python bench/compile.py --sizes 20000 --repeat 3
    python bench/compile.py --workdir /tmp/bench --keep

For each size it generates a CSV audience (`msisdn,name,tier`, valid and distinct
E.164 numbers in four countries) and a campaign YAML next to it, then runs two child
processes and measures each one on its own (wall seconds, and peak RSS from the
child's own rusage via `os.wait4`, so one child's peak never hides another's):

* compile: `campaign compile campaign.yaml -o compile.jsonl`, everything included
  (interpreter start-up, imports, YAML load and validation, recipients, rendering,
  segment counting, batching, JSON writing, the rename of the finished file).
* floor: this file run as `python bench/compile.py _floor ...`, which reads the same
  CSV with the `csv` module and writes the same JSON Lines (batches of 1000, the same
  keys in the same order, the same generated correlation ids) with no checks at all.
  Both outputs are hashed afterwards: "same output: yes" means the floor really did
  the same job, so the ratio compares like with like.

This is a measurement, not a test: nothing here asserts on a time. The goals it
reports against (from the issue): compile within 3x of the floor, peak RSS under
200 MB and about the same at 100k and at 1M.
"""

from __future__ import annotations

import sys

# --- the floor (child process) ----------------------------------------------------
# Kept above the heavier imports so the floor child pays only for csv/json/hashlib.


def _floor(csv_path: str, out_path: str, spec_json: str) -> None:
    """The same JSON Lines as compile, by the shortest route: no validation, no
    dedupe, no segment count, no idempotency key. It does compute the correlation ids,
    because they are part of the output."""
    import csv
    import hashlib
    import json

    spec = json.loads(spec_json)
    campaign_id: str = spec["campaign_id"]
    size: int = spec["batch_size"]
    blake2b = hashlib.blake2b

    def line(to: list[dict[str, object]]) -> str:
        body = {"channel": "sms", "from": spec["from"], "to": to, "content": spec["content"],
                "substitutions": spec["substitutions"]}
        return json.dumps(body, ensure_ascii=False, separators=(",", ":"), check_circular=False) + "\n"

    with open(csv_path, encoding="utf-8", newline="") as source, \
            open(out_path, "w", encoding="utf-8", newline="\n") as sink:
        reader = csv.reader(source)
        next(reader)  # header: msisdn,name,tier
        to: list[dict[str, object]] = []
        for msisdn, name, tier in reader:
            digest = blake2b(f"{campaign_id}\x00{msisdn}".encode(), digest_size=8).hexdigest()
            to.append({"msisdn": [msisdn], "substitutions": {"name": name, "tier": tier},
                       "correlationId": f"cr-{digest}"})
            if len(to) == size:
                sink.write(line(to))
                to = []
        if to:
            sink.write(line(to))


if __name__ == "__main__" and len(sys.argv) == 5 and sys.argv[1] == "_floor":
    _floor(sys.argv[2], sys.argv[3], sys.argv[4])
    sys.exit(0)


# --- the benchmark (parent process) -----------------------------------------------

import argparse  # noqa: E402
import hashlib  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import platform  # noqa: E402
import random  # noqa: E402
import resource  # noqa: E402
import shutil  # noqa: E402
import subprocess  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from dataclasses import dataclass  # noqa: E402
from pathlib import Path  # noqa: E402

from common import write_audience, write_campaign  # noqa: E402

CAMPAIGN_ID = "bench-compile"
SENDER = "12025550100"
TEXT = "Hi {{ name }}, your {{ tier }} offer: 20% off at {{ store }} https://shop.example.com"
WIRE_TEXT = "Hi $(name), your $(tier) offer: 20% off at $(store) https://shop.example.com"
STORE = "Fernway"
BATCH = 1000  # throughput.tps 1000 -> 1000 destinations per request

# (prefix, digits after it, stride). Every number `prefix + zero-padded digits` in these
# ranges is valid for libphonenumber (checked on a sample by `check_numbers`). A stride
# coprime to the range size walks the range without repeats, so numbers are distinct
# and not in file order. Avoid +447911: only 79110-79112/79117-79118 are valid mobiles.
RANGES = (
    ("+447400", 6, 7919),  # UK mobile
    ("+14152", 6, 7927),  # US, San Francisco 415-2xx-xxxx
    ("+49151", 8, 1_000_003),  # DE mobile
    ("+35387", 7, 104_729),  # IE mobile
)
# GSM-7 only (é, ñ, ü are in the basic table), so every message stays in one encoding
# group and the floor's output can be byte-identical to compile's.
NAMES = ("Ada", "Alan", "Grace", "Barbara", "José", "Linus", "Margaret", "Niño", "Renée", "Jürgen", "Katherine", "Tim")
TIERS = ("gold", "silver", "bronze")
MAX_SIZE = len(RANGES) * 10 ** min(d for _, d, _ in RANGES)


def number(i: int) -> str:
    prefix, digits, stride = RANGES[i % len(RANGES)]
    k = i // len(RANGES)
    return f"{prefix}{(k * stride + 12345) % 10**digits:0{digits}d}"


def generate(directory: Path, size: int) -> tuple[Path, Path]:
    audience, campaign = directory / "audience.csv", directory / "campaign.yaml"
    write_audience(audience, "msisdn,name,tier",
                   (f"{number(i)},{NAMES[i % len(NAMES)]},{TIERS[(i // 7) % len(TIERS)]}\n" for i in range(size)))
    write_campaign(campaign, campaign_id=CAMPAIGN_ID, description="compile benchmark", sender=SENDER,
                   content_type="auto", text=TEXT, store=STORE, tps=BATCH,
                   personalisation="platform")  # the floor writes platform bodies: like with like
    return campaign, audience


def check_numbers(size: int, sample: int = 2000) -> None:
    """The generated numbers must be ones compile accepts unchanged, or the run would
    stop at the first bad row (or measure a different audience than the floor)."""
    from runner.msisdn import normalise_msisdn

    rng = random.Random(size)
    picks = {0, size - 1, *(rng.randrange(size) for _ in range(sample))}
    for i in sorted(picks):
        raw = number(i)
        if normalise_msisdn(raw) != raw:
            raise SystemExit(f"bench: generated number {raw} (row {i}) is not valid E.164; fix RANGES")
    if len({number(i) for i in picks}) != len(picks):
        raise SystemExit("bench: generated numbers repeat; fix RANGES")


@dataclass
class Run:
    seconds: float  # wall clock, start to exit
    cpu_seconds: float  # the child's user + system time: less sensitive to a busy machine
    peak_rss_mb: float


def _maxrss_mb(usage: resource.struct_rusage) -> float:
    raw = float(usage.ru_maxrss)
    return raw / (1024 * 1024) if sys.platform == "darwin" else raw / 1024  # bytes on macOS, KiB on Linux


def measure(cmd: list[str], cwd: Path, log: Path) -> Run:
    """Wall time and the child's own peak RSS (os.wait4 returns that child's rusage)."""
    with log.open("wb") as err:
        start = time.perf_counter()
        proc = subprocess.Popen(cmd, cwd=cwd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=err)
        _, status, usage = os.wait4(proc.pid, 0)
        seconds = time.perf_counter() - start
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise SystemExit(f"bench: {' '.join(cmd)} exited {proc.returncode}:\n{log.read_text(errors='replace')}")
    return Run(seconds, usage.ru_utime + usage.ru_stime, _maxrss_mb(usage))


def best(runs: list[Run]) -> Run:
    """Fastest wall and CPU time of the repeats; the highest peak RSS seen in any of them."""
    return Run(min(r.seconds for r in runs), min(r.cpu_seconds for r in runs), max(r.peak_rss_mb for r in runs))


def file_digest(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def dedupe_set_mb(size: int) -> tuple[float, float]:
    """What remembering `size` distinct numbers costs, the one part of compile that must
    grow with the audience: the recipients stage's `NumberSet` (as compile sizes it),
    and for comparison a Python set of the same ints."""
    import tracemalloc

    from runner.msisdn import NumberSet

    numbers = [int(number(i)) for i in range(size)]
    tracemalloc.start()
    try:
        seen = NumberSet(size)
        for n in numbers:
            seen.add(n)
        compact = tracemalloc.get_traced_memory()[0]
    finally:
        tracemalloc.stop()
    as_set = set(numbers)
    plain = sys.getsizeof(as_set) + sum(sys.getsizeof(n) for n in as_set)
    return compact / (1024 * 1024), plain / (1024 * 1024)


def compile_command() -> list[str]:
    """The `campaign` console script of this interpreter when there is one: a version
    manager's shim on PATH (pyenv) adds its own start-up to every run."""
    beside = Path(sys.executable).parent / "campaign"
    exe = str(beside) if beside.is_file() and os.access(beside, os.X_OK) else shutil.which("campaign")
    if exe is None:
        raise SystemExit("bench: `campaign` is not on PATH (pip install -e . in the repository root)")
    return [exe]


def floor_spec() -> str:
    return json.dumps({
        "campaign_id": CAMPAIGN_ID,
        "batch_size": BATCH,
        "from": SENDER,
        "content": {"type": "text", "text": WIRE_TEXT},
        "substitutions": {"store": STORE},
    }, ensure_ascii=False)


@dataclass
class Result:
    size: int
    floor: Run
    compile: Run
    same_output: bool
    output_mb: float


def bench_size(root: Path, size: int, repeat: int, keep: bool) -> Result:
    directory = root / f"n{size}"
    print(f"[{size:,}] generating {directory} ...", file=sys.stderr, flush=True)
    campaign, audience = generate(directory, size)
    check_numbers(size)
    compile_out = directory / "compile.jsonl"
    floor_out = directory / "floor.jsonl"
    compile_cmd = [*compile_command(), "compile", str(campaign), "-o", str(compile_out)]
    floor_cmd = [sys.executable, str(Path(__file__).resolve()), "_floor", str(audience), str(floor_out), floor_spec()]
    floors: list[Run] = []
    compiles: list[Run] = []
    for attempt in range(1, repeat + 1):
        print(f"[{size:,}] run {attempt}/{repeat}: floor ...", file=sys.stderr, flush=True)
        floors.append(measure(floor_cmd, directory, directory / "floor.stderr"))
        print(f"[{size:,}] run {attempt}/{repeat}: compile ...", file=sys.stderr, flush=True)
        compiles.append(measure(compile_cmd, directory, directory / "compile.stderr"))
    same = file_digest(compile_out) == file_digest(floor_out)
    output_mb = compile_out.stat().st_size / (1024 * 1024)
    if not keep:
        for path in (compile_out, floor_out):
            path.unlink(missing_ok=True)
    return Result(size, best(floors), best(compiles), same, output_mb)


def startup(root: Path) -> tuple[Run, Run]:
    """Fixed cost of each child (interpreter, imports, YAML/validation) on one recipient."""
    _, audience = generate(root / "n1", 1)
    campaign = root / "n1" / "campaign.yaml"
    compile_cmd = [*compile_command(), "compile", str(campaign), "-o", str(root / "n1" / "compile.jsonl")]
    floor_cmd = [sys.executable, str(Path(__file__).resolve()), "_floor", str(audience),
                 str(root / "n1" / "floor.jsonl"), floor_spec()]
    return (best([measure(floor_cmd, root, root / "n1" / "floor.stderr") for _ in range(3)]),
            best([measure(compile_cmd, root, root / "n1" / "compile.stderr") for _ in range(3)]))


def print_report(results: list[Result], start: tuple[Run, Run], repeat: int) -> None:
    print(f"machine: {os.cpu_count()} cores, {platform.machine()}, {platform.system()} {platform.release()}, "
          f"load average {os.getloadavg()[0]:.2f} at the end")
    print(f"python:  {platform.python_implementation()} {platform.python_version()} ({sys.executable})")
    print(f"compile: {' '.join(compile_command())} compile campaign.yaml -o compile.jsonl")
    print(f"runs:    best wall and best CPU time of {repeat}; peak RSS is the highest of those runs")
    print(f"startup: 1 recipient: floor {start[0].seconds:.2f} s / {start[0].peak_rss_mb:.0f} MB, "
          f"compile {start[1].seconds:.2f} s / {start[1].peak_rss_mb:.0f} MB (included in every figure below)")
    for r in results:
        print()
        print(f"recipients: {r.size:,}   output: {r.output_mb:.0f} MB, {-(-r.size // BATCH):,} requests   "
              f"same output as floor: {'yes' if r.same_output else 'NO (floor is not equivalent)'}")
        print(f"  {'':<13} {'wall s':>8} {'CPU s':>8} {'recipients/s':>13} {'peak RSS MB':>12}")
        for label, run in (("floor", r.floor), ("compile", r.compile)):
            print(f"  {label:<13} {run.seconds:>8.2f} {run.cpu_seconds:>8.2f} {r.size / run.seconds:>13,.0f} "
                  f"{run.peak_rss_mb:>12.1f}")
        wall = r.compile.seconds / r.floor.seconds
        cpu = r.compile.cpu_seconds / r.floor.cpu_seconds
        print(f"  {'compile/floor':<13} {wall:>7.2f}x {cpu:>7.2f}x {'':>13} {r.compile.peak_rss_mb / r.floor.peak_rss_mb:>11.2f}x")
        print(f"  goals: time <= 3x floor: {'met' if wall <= 3 else 'NOT met'} ({wall:.2f}x wall, {cpu:.2f}x CPU); "
              f"peak RSS < 200 MB: {'met' if r.compile.peak_rss_mb < 200 else 'NOT met'} ({r.compile.peak_rss_mb:.0f} MB)")
        compact, plain = dedupe_set_mb(r.size)
        print(f"  dedupe: the numbers seen take {compact:.1f} MB (a Python set of the same ints: {plain:.1f} MB)")
    if len(results) > 1:
        small, large = results[0], results[-1]
        print()
        print(f"flatness, {large.size:,} vs {small.size:,} recipients ({large.size / small.size:.0f}x the rows):")
        print(f"  peak RSS compile: {small.compile.peak_rss_mb:.1f} -> {large.compile.peak_rss_mb:.1f} MB "
              f"= {large.compile.peak_rss_mb / small.compile.peak_rss_mb:.2f}x "
              f"(+{large.compile.peak_rss_mb - small.compile.peak_rss_mb:.1f} MB, of which the dedupe set "
              f"+{dedupe_set_mb(large.size)[0] - dedupe_set_mb(small.size)[0]:.1f} MB)")
        print(f"  peak RSS floor:   {small.floor.peak_rss_mb:.1f} -> {large.floor.peak_rss_mb:.1f} MB "
              f"= {large.floor.peak_rss_mb / small.floor.peak_rss_mb:.2f}x")
        print(f"  compile time per recipient: {small.compile.seconds / small.size * 1e6:.2f} -> "
              f"{large.compile.seconds / large.size * 1e6:.2f} us wall, "
              f"{small.compile.cpu_seconds / small.size * 1e6:.2f} -> {large.compile.cpu_seconds / large.size * 1e6:.2f} us CPU")


def parse_sizes(text: str) -> list[int]:
    sizes = sorted({int(part.replace("_", "")) for part in text.split(",") if part.strip()})
    if not sizes or sizes[0] < 1 or sizes[-1] > MAX_SIZE:
        raise argparse.ArgumentTypeError(f"sizes must be between 1 and {MAX_SIZE:,}")
    return sizes


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Benchmark `campaign compile` against a csv+json floor.")
    parser.add_argument("--sizes", type=parse_sizes, default=[100_000, 1_000_000],
                        help="comma-separated recipient counts (default 100000,1000000)")
    parser.add_argument("--workdir", type=Path, help="where to write data (default: a temp dir)")
    parser.add_argument("--keep", action="store_true", help="keep generated files and outputs")
    parser.add_argument("--repeat", type=int, default=1, help="runs per size; the best time is reported")
    args = parser.parse_args(argv)
    if args.repeat < 1:
        parser.error("--repeat must be at least 1")
    if args.workdir is not None:
        args.workdir.mkdir(parents=True, exist_ok=True)
        root = args.workdir.resolve()
    else:
        root = Path(tempfile.mkdtemp(prefix="bench-compile-"))
    try:
        start = startup(root)
        results = [bench_size(root, size, args.repeat, args.keep) for size in args.sizes]
        print_report(results, start, args.repeat)
    finally:
        if args.keep:
            print(f"\nfiles kept in {root}", file=sys.stderr)
        elif args.workdir is None:
            shutil.rmtree(root, ignore_errors=True)
        else:
            for size in [1, *args.sizes]:
                shutil.rmtree(root / f"n{size}", ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
