"""The statistics every published toy table uses: sample standard deviation (ddof = 1) over units, a
training run as the mean of its noise seeds, and the "supported by the spread" rule of the targets."""
from __future__ import annotations

import math

import pytest

from tlcm_toy.evaluate import COLUMNS, clearly_below, markdown_table, mean_over_seeds, paired_difference, summarise


def rows(fd: float, name: str = "TLCM-2") -> dict[str, dict[str, float]]:
    return {name: {c: (fd if c == "fd" else 0.5) for c in COLUMNS}}


def test_spread_is_the_sample_standard_deviation():
    summary = summarise([rows(1.0), rows(2.0), rows(4.0)])
    mean = 7 / 3
    sample_sd = math.sqrt(((1 - mean) ** 2 + (2 - mean) ** 2 + (4 - mean) ** 2) / (3 - 1))
    assert summary["TLCM-2"]["fd"] == pytest.approx([mean, sample_sd])
    assert summary["TLCM-2"]["acc_all"] == pytest.approx([0.5, 0.0])
    assert "| TLCM-2 |" in markdown_table(summary) and "2.33 ± 1.5" in markdown_table(summary)


def test_one_unit_has_no_spread_and_shows_none():
    summary = summarise([rows(3.0)])
    assert summary["TLCM-2"]["fd"] == [3.0, None]
    assert "±" not in markdown_table(summary)


def test_a_training_run_is_the_mean_of_its_noise_seeds():
    run = mean_over_seeds([rows(10.0), rows(20.0)])
    assert run["TLCM-2"]["fd"] == 15.0
    # the spread over runs then comes from the run means, not from the pooled noise seeds
    summary = summarise([run, mean_over_seeds([rows(30.0), rows(40.0)])])
    assert summary["TLCM-2"]["fd"] == pytest.approx([25.0, math.sqrt(2 * 10.0 ** 2)])


@pytest.mark.parametrize("a, b, n_a, n_b, expected", [
    ([10.0, 1.0], [15.0, 1.0], 3, 3, True),     # se = sqrt(1/3 + 1/3) = 0.816; t(0.975, df 2) = 4.303: 13.5 < 15
    ([10.0, 1.0], [13.0, 1.0], 3, 3, False),    # inside the interval: the means alone
    ([10.0, 1.0], [15.0, 1.0], 2, 3, False),    # df from the smaller group: t(0.975, 1) = 12.706
    ([10.0, None], [10.5, None], 3, 3, True),   # no spread: exact
    ([10.0, 2.0], [9.0, 0.0], 3, 3, False),
])
def test_supported_needs_the_difference_beyond_a_t_interval(a, b, n_a, n_b, expected):
    assert clearly_below(a, b, n_a, n_b) is expected


def test_paired_difference_is_taken_within_each_run_before_the_spread():
    # the two rows differ by 2, 3 and 7 in the three runs while the runs themselves differ by a lot: the
    # spread of the difference must come from (2, 3, 7), not from the rows' own spreads
    runs = [{**rows(base + d, "child"), **rows(base, "parent")} for base, d in ((10.0, 2.0), (50.0, 3.0), (90.0, 7.0))]
    mean, sd, half = paired_difference(runs, "child", "parent")["fd"]
    assert mean == pytest.approx(4.0)
    assert sd == pytest.approx(math.sqrt(((2 - 4) ** 2 + (3 - 4) ** 2 + (7 - 4) ** 2) / 2))
    assert half == pytest.approx(4.303 * sd / math.sqrt(3))               # t(0.975, df 2)
    assert paired_difference(runs, "child", "parent")["acc_all"] == pytest.approx([0.0, 0.0, 0.0])
    assert paired_difference(runs[:1], "child", "parent")["fd"] == [2.0, None, None]
