"""A template from a pull request cannot make plan or apply burn CPU or memory.

Each bomb is a real campaign file run through the real CLI: it must be refused with the
`template-cost` rule and exit 1 (never 70), at the message text's location. The
subprocess timeout is the guard against a hang; no wall-clock assertion.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.helpers import number, write_campaign, write_csv
from tests.test_cli import in_tmp, invoke  # noqa: F401 (fixture)

BOMBS = {
    "repeat": "{{ 'a' * 1000000000 }}",
    "repeat-left": "{{ 1000000000 * 'a' }}",
    "list-repeat": "{{ ['abcdefgh'] * 100000000 }}",
    "power-tower": "{{ 10**10**10**10**10 }}",
    "power": "{{ 2 ** 100000 }}",
    "range": "{% for i in range(10**9) %}x{% endfor %}",
    "nested-ranges": "{% for i in range(1000) %}{% for j in range(1000) %}{% endfor %}{% endfor %}",
    "nested-string-loops": ("{% set s = 'x' * 60000 %}{% for a in s %}{% for b in s %}{% endfor %}{% endfor %}"),
    "nested-list-loops": "{% for a in [0] * 5000 %}{% for b in [0] * 5000 %}{% endfor %}{% endfor %}",
    "center-filter": "{{ 'a' | center(1000000000) }}",
    "center-method": "{{ 'a'.center(1000000000) }}",
    "ljust-method": "{{ 'a'.ljust(1000000000) }}",
    "format-method": "{{ '{:>999999999}'.format(1) }}",
    "percent-format": "{{ '%999999999s' % 'a' }}",
    "replace": "{{ ('a' * 60000) | replace('a', 'aaaaaaaaaa') }}",
    "namespace-doubling": ("{% set ns = namespace(s='ab') %}{% for i in range(40) %}"
                           "{% set ns.s = ns.s ~ ns.s %}{% endfor %}{{ ns.s | length }}"),
    "concat-doubling": "{% set s = 'a' * 60000 %}{{ s + s }}",
    "output-length": "{% for i in range(9000) %}{{ 'abcdefgh' * 8000 }}{% endfor %}",
    "batch-fill": "{{ [1] | batch(1000000000, 'x') | list | length }}",
    "concat-chain": "{% set a = 'x' * 60000 %}{% set b = a ~ a %}{{ b | length }}",
    "captured-block": ("{% set s = 'x' * 60000 %}{% set x %}{% for i in range(1000) %}{{ s }}{% endfor %}"
                       "{% endset %}{{ x | length }}"),
    "join-range": "{{ range(10000) | join('x' * 60000) }}",
    "join-method-generator": "{{ ('x' * 60000).join(range(10000) | map('string')) }}",
    "percent-reused-argument": "{% set s = 'a' * 60000 %}{{ '%(a)s%(a)s%(a)s' % {'a': s} }}",
    "format-reused-argument": "{% set s = 'a' * 30000 %}{{ '{0}{0}{0}'.format(s) }}",
}


def _campaign(folder: Path, text: str) -> Path:
    write_csv(folder / "aud.csv", ["msisdn", "name"], [[number(1), "Bo"]])
    write_campaign(folder, {"content": {"text": text}, "recipients": [{"file": "aud.csv"}]})
    return Path("campaign.yaml")  # relative: the names a user types


@pytest.mark.parametrize("name", sorted(BOMBS))
def test_template_bomb_is_refused_by_plan(in_tmp: Path, name: str) -> None:
    path = _campaign(in_tmp, BOMBS[name])
    result = invoke("plan", path)
    assert result.exit_code == 1, (result.stdout, result.stderr)
    assert "[template-cost]" in result.stderr
    # The text's location, and the recipient by its row, never by its number.
    assert result.stderr.startswith("campaign.yaml:")
    assert "aud.csv:2" in result.stderr
    assert number(1) not in result.stderr


def test_refusal_names_the_size_and_the_limit(in_tmp: Path) -> None:
    result = invoke("plan", _campaign(in_tmp, BOMBS["repeat"]))
    assert ("repeating a value would make about 1,000,000,000 characters; "
            "a template may build at most 65,536 [template-cost]") in result.stderr


def test_huge_number_is_described_not_printed(in_tmp: Path) -> None:
    result = invoke("plan", _campaign(in_tmp, BOMBS["power-tower"]))
    assert "-digit number) ** 10 would have about" in result.stderr
    assert "0" * 50 not in result.stderr


@pytest.mark.parametrize("text, expected", [
    ("{% for i in range(3) %}{{ name ~ i }}{% endfor %}", "Bo0Bo1Bo2"),
    ("{{ name * 3 }}", "BoBoBo"),
    ("{{ 2 ** 10 }} {{ '%5s' % name }}", "1024    Bo"),
    ("{{ name | center(6) }}|{{ '{:>4}'.format(name) }}", "  Bo  |  Bo"),
    ("{% set ns = namespace(s='') %}{% for i in range(2) %}{% set ns.s = ns.s ~ name %}{% endfor %}{{ ns.s }}",
     "BoBo"),
    ("{{ [name, 'x'] | join('-') }} {{ name | replace('o', 'oo') }}", "Bo-x Boo"),
    ("{{ 'a' ~ 1 ~ name }} {% set x %}{{ name }}!{% endset %}{{ x }} {{ none }}", "a1Bo Bo! None"),
    ("{% macro m(v) %}<{{ v }}>{% endmacro %}{{ m(name) ~ m('x') }}", "<Bo><x>"),
    ("{{ range(3) | join('-') }} {{ '-'.join(name | list) }} {{ '%(n)s!' % {'n': name} }} {{ '{0}{0}'.format(name) }}",
     "0-1-2 B-o Bo! BoBo"),
    ("{% for c in name %}{{ c }}{{ loop.index }}/{{ loop.length }}{{ ',' if not loop.last }}{% endfor %}",
     "B1/2,o2/2"),
    ("{% for c in '' %}x{% else %}empty{% endfor %} {% for k, v in [('a', 1)] %}{{ k }}{{ v }}{% endfor %}",
     "empty a1"),
])
def test_ordinary_templates_still_render(in_tmp: Path, text: str, expected: str) -> None:
    result = invoke("plan", "--format", "json", _campaign(in_tmp, text))
    assert result.exit_code == 0, result.stderr
    assert f'"text": "{expected}"' in result.stdout


def test_range_is_a_builtin_not_a_variable(in_tmp: Path) -> None:
    """`range` needs no value from a recipient (it used to be reported as missing)."""
    result = invoke("validate", _campaign(in_tmp, "{% for i in range(2) %}{{ name }}{% endfor %}"))
    assert result.exit_code == 0, result.stdout
    assert "missing-variable" not in result.stdout


def test_range_of_the_limit_is_allowed_and_one_more_refused(in_tmp: Path) -> None:
    ok = invoke("plan", _campaign(in_tmp, "{{ range(10000) | length }}"))
    assert ok.exit_code == 0, ok.stderr
    refused = invoke("plan", _campaign(in_tmp, "{{ range(10001) | length }}"))
    assert refused.exit_code == 1
    assert "range() of 10,001 items; a template may use at most 10,000 [template-cost]" in refused.stderr


def test_rendered_text_over_1024_is_the_vendor_limit_error_not_cost(in_tmp: Path) -> None:
    result = invoke("plan", _campaign(in_tmp, "{{ 'a' * 2000 }}"))
    assert result.exit_code == 1
    assert "is 2000 characters after rendering; the API takes at most 1024 [text-length]" in result.stderr
    assert "template-cost" not in result.stderr


@pytest.mark.parametrize("text, expected", [
    ("Hi {{ name | nosuchfilter }}", "campaign.yaml:5:22: error: template syntax: no filter named 'nosuchfilter'"),
    ("Hi {{ name | uper }}", "campaign.yaml:5:22: error: template syntax: no filter named 'uper' "
                             "[template-syntax] (hint: did you mean 'upper'?)"),
    ("{% if name is nosuchtest %}x{% endif %}", "campaign.yaml:5:24: error: template syntax: no test named "
                                               "'nosuchtest'"),
    ("{% if name %}{{ name | nosuchfilter }}{% endif %}", "no filter named 'nosuchfilter'"),
])
def test_unknown_filter_or_test_is_a_syntax_error_at_validate(in_tmp: Path, text: str, expected: str) -> None:
    path = _campaign(in_tmp, text)
    result = invoke("validate", path)
    assert result.exit_code == 1
    assert expected in result.stdout
    assert "[template-syntax]" in result.stdout
    planned = invoke("plan", path)
    assert planned.exit_code == 1  # refused as invalid input, not 70


def test_unknown_filter_in_a_block_text_points_at_its_line_and_column(in_tmp: Path) -> None:
    write_csv(in_tmp / "aud.csv", ["msisdn", "name"], [[number(1), "Bo"]])
    (in_tmp / "block.yaml").write_text(
        'version: 1\nid: b\nfrom: "12025550100"\ncontent:\n  text: |\n    Hi {{ name }}\n'
        "    {{ name | nosuchfilter }}\nrecipients: [{file: aud.csv}]\n", encoding="utf-8")
    result = invoke("validate", "block.yaml")
    assert result.exit_code == 1
    assert result.stdout.startswith("block.yaml:7:15: error: template syntax: no filter named 'nosuchfilter' "
                                    "[template-syntax]")


def test_loop_budget_is_per_message_not_per_campaign(in_tmp: Path) -> None:
    """9,900 steps per message is within the 10,000 budget, for every recipient."""
    write_csv(in_tmp / "aud.csv", ["msisdn", "name"], [[number(i), f"R{i}"] for i in range(3)])
    write_campaign(in_tmp, {"content": {"text": "{% for i in range(900) %}{% for j in range(10) %}{% endfor %}"
                                                "{% endfor %}{{ name }}"},
                            "recipients": [{"file": "aud.csv"}]})
    result = invoke("plan", "--format", "json", "campaign.yaml")
    assert result.exit_code == 0, result.stderr
    assert '"text": "R2"' in result.stdout
    over = "{% for i in range(1000) %}{% for j in range(10) %}{% endfor %}{% endfor %}{{ name }}"
    write_campaign(in_tmp, {"content": {"text": over}, "recipients": [{"file": "aud.csv"}]})
    refused = invoke("plan", "campaign.yaml")
    assert refused.exit_code == 1
    assert "loops took more than 10,000 steps in one message [template-cost]" in refused.stderr
