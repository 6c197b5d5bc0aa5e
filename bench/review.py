"""What the review-output safeguards cost, next to what they guard.

1. Template bombs: `campaign plan` in a child process on a one-recipient campaign whose
   text is a bomb, next to the same campaign with a harmless text with logic (the
   baseline: start-up, load, validate, plan). Bounded rendering should make a bomb cost
   about the baseline; before it, `{{ 'a' * 1000000000 }}` took ~100 s and 4.9 GB.
2. Rendering a text with logic (loop, operators, filters) with the bounded environment,
   next to jinja2's plain SandboxedEnvironment on the same template and values.
3. The control-character scan of recipient files at plan: in-process, the scan alone
   (`control_character_warnings`) next to the whole `build_plan` of the same campaign,
   on a clean CSV (one byte scan) and on one where every row holds an ESC (full parse).

    python bench/review.py                 # 200,000 rows (~1 min)
    python bench/review.py --rows 1000000
"""

from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

BOMBS = {
    "baseline (logic, harmless)": "{% for c in name %}{{ c }}{% endfor %}",
    "repeat 1e9": "{{ 'a' * 1000000000 }}",
    "power tower": "{{ 10**10**10**10**10 }}",
    "range 1e9": "{% for i in range(10**9) %}x{% endfor %}",
    "nested string loops": "{% set s = 'x' * 60000 %}{% for a in s %}{% for b in s %}{% endfor %}{% endfor %}",
    "center 1e9": "{{ 'a' | center(1000000000) }}",
}
NOW = "2026-11-23T12:00:00Z"


def _campaign(folder: Path, text: str, audience: str = "aud.csv") -> Path:
    path = folder / "campaign.yaml"
    escaped = text.replace("\\", "\\\\").replace('"', '\\"')
    path.write_text(f'version: 1\nid: bench\nfrom: "12025550100"\ncontent:\n  text: "{escaped}"\n'
                    f"recipients: [{{file: {audience}}}]\nthroughput: {{tps: 1000}}\n", encoding="utf-8")
    return path


def bombs(folder: Path) -> None:
    (folder / "aud.csv").write_text("msisdn,name\n+447400012345,Bo\n", encoding="utf-8")
    campaign = [sys.executable, "-c", "from runner.cli import main; main()"]
    print(f"{'template':<28} {'exit':>4} {'wall s':>7} {'cpu s':>6} {'peak MB':>8}")
    for name, text in BOMBS.items():
        path = _campaign(folder, text)
        start = time.perf_counter()
        proc = subprocess.Popen([*campaign, "plan", str(path)], cwd=folder, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL, env={**os.environ, "CAMPAIGN_NOW": NOW})
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - start
        print(f"{name:<28} {os.waitstatus_to_exitcode(status):>4} {wall:>7.2f} "
              f"{usage.ru_utime + usage.ru_stime:>6.2f} {usage.ru_maxrss / 1024:>8.0f}")


def scan(folder: Path, rows: int) -> None:
    from runner.plan import build_plan, control_character_warnings
    from runner.validate import load_campaign

    now = datetime(2026, 11, 23, 12, tzinfo=timezone.utc)
    for label, cell in (("clean CSV", "Name"), ("ESC in every row", "Na\x1bme")):
        with (folder / "big.csv").open("w", encoding="utf-8") as out:
            out.write("msisdn,name\n")
            out.writelines(f"+4474{i:08d},{cell}\n" for i in range(rows))
        campaign, warnings = load_campaign(_campaign(folder, "Hi {{ name }}", "big.csv"), now=now)
        start = time.process_time()
        found = control_character_warnings(campaign)
        scan_cpu = time.process_time() - start
        start = time.process_time()
        build_plan(campaign, warnings)
        plan_cpu = time.process_time() - start
        print(f"{label:<18} {rows:,} rows: scan {scan_cpu:.2f} s CPU ({len(found)} warnings), "
              f"whole plan {plan_cpu:.2f} s CPU (scan included): {100 * scan_cpu / plan_cpu:.1f}%")


LOGIC_TEXT = ("{% if tier == 'gold' %}Dear {{ name | upper }}{% else %}Hi {{ name }}{% endif %}, "
              "{{ points * 2 }} points{% for c in code %}-{{ c }}{% endfor %} {{ '%s!' % store }}")


def render_cost(renders: int) -> None:
    from jinja2 import StrictUndefined
    from jinja2.sandbox import SandboxedEnvironment

    from runner.render import ENVIRONMENT, _bounded_render

    values = {"tier": "gold", "name": "Ada", "points": 120, "code": "AB12", "store": "Fernway"}
    plain = SandboxedEnvironment(undefined=StrictUndefined, autoescape=False).from_string(LOGIC_TEXT)
    bounded = ENVIRONMENT.from_string(LOGIC_TEXT)
    assert plain.render(values) == _bounded_render(bounded, values)
    for label, render in (("jinja2 sandbox", lambda: plain.render(values)),
                          ("bounded", lambda: _bounded_render(bounded, values))):
        start = time.process_time()
        for _ in range(renders):
            render()
        cpu = time.process_time() - start
        print(f"{label:<16} {renders:,} renders: {cpu:.2f} s CPU ({1e6 * cpu / renders:.1f} µs each)")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=200_000)
    args = parser.parse_args()
    print(f"load average {os.getloadavg()[0]:.1f}; peak RSS of this process so far "
          f"{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MB")
    with tempfile.TemporaryDirectory() as name:
        bombs(Path(name))
        print()
        render_cost(args.rows)
        print()
        scan(Path(name), args.rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
