import pytest

from planner.budget import BudgetError, format_bytes, parse_budget

PEAK = 10 * 2**30


@pytest.mark.parametrize("spec,expected", [
    ("5GiB", 5 * 2**30), ("800MB", 800 * 10**6), ("1.5 GiB", int(1.5 * 2**30)),
    ("123456789", 123456789), (123456789, 123456789), ("0.5", PEAK // 2), (0.25, PEAK // 4),
    ("1", PEAK), ("1.0", PEAK), ("512kib", 512 * 1024), (".5", PEAK // 2),
])
def test_parse(spec, expected):
    assert parse_budget(spec, PEAK) == expected


@pytest.mark.parametrize("spec", ["", "abc", "5 parsecs", "1.5", "-3GiB", "0", "0.0", "GiB",
                                  "5GiBs", "1e9"])
def test_bad_budgets_raise_one_clear_error(spec):
    with pytest.raises(BudgetError) as err:
        parse_budget(spec, PEAK)
    assert "\n" not in str(err.value)


def test_format_bytes():
    assert format_bytes(1536) == "1.50 KiB"
    assert format_bytes(3 * 2**30) == "3.00 GiB"
    assert format_bytes(12) == "12 B"
