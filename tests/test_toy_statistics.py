"""The statistics every published toy table uses: sample standard deviation (ddof = 1) over units, a
training run as the mean of its noise seeds, and the "supported by the spread" rule of the targets."""
from __future__ import annotations

import importlib.util
import math
from pathlib import Path

import pytest

from tlcm_toy.evaluate import COLUMNS, markdown_table, mean_over_seeds, summarise

_spec = importlib.util.spec_from_file_location("toy_table1", Path(__file__).resolve().parents[1] / "bench" / "toy_table1.py")
_table1 = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_table1)
clearly_below = _table1.clearly_below


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
