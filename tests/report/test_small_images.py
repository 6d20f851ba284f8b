"""A report warns about a set whose images are mostly smaller than the size its detector was measured at."""

import numpy as np

from overlap_audit.api import small_image_warnings
from overlap_audit.content import ContentBox
from overlap_audit.report import format_markdown, load_report
from overlap_audit.values import Neighbors, Split

from .test_report import make_report


def split_of(sides: list[int]) -> Split:
    n = len(sides)
    nb = Neighbors([f"q{i}" for i in range(n)], np.full((n, 1), "c", object), np.ones((n, 1), np.float32))
    return Split("s", 0.9, [f"q{i}" for i in range(n)], [None] * n, nb, np.zeros(n, bool), np.zeros(n, bool),
                 boxes=[ContentBox(0, 0, s, s, s, s, False) for s in sides])


def test_small_images_are_warned_about_and_large_ones_are_not(tmp_path):
    small = small_image_warnings(split_of([16, 16, 20, 40]), 32)
    assert len(small) == 1 and "under 18 px" in small[0] and "32 px" in small[0]
    assert small_image_warnings(split_of([32, 32, 40]), 32) == []
    assert small_image_warnings(split_of([8, 8]), None) == []
    assert small_image_warnings(Split("s", 0.9, [], [], Neighbors([], np.zeros((0, 1), object),
                                                                  np.zeros((0, 1), np.float32)),
                                      np.zeros(0, bool), np.zeros(0, bool)), 32) == []
    from dataclasses import replace

    from overlap_audit.atomic import atomic_write_json

    rep = make_report()
    rep = replace(rep, datasets=[replace(rep.datasets[0], warnings=small), rep.datasets[1]])
    assert "## Warnings" in format_markdown(rep) and "under 18 px" in format_markdown(rep)
    assert "## Warnings" not in format_markdown(make_report())
    atomic_write_json(tmp_path / "report.json", rep.to_dict())
    assert load_report(tmp_path).datasets[0].warnings == small
