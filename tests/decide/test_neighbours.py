"""The decision verifies more than the nearest corpus item: a copy whose nearest item is a look-alike and whose
source is the second is Overlap, and the report names the source."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from benchmarks.photos import MEDIUM, appc_copy, quadrants
from overlap_audit.decide.rule import DecisionRule, VerifySettings, rule_from_record
from overlap_audit.errors import SettingsError
from overlap_audit.values import Embeddings, Neighbors, RawItem

T = 1 - 9 / 64  # phash's default threshold; its first stage is 1 - 2.5 * 9 / 64


@pytest.fixture(scope="module")
def pictures():
    """An App. C copy of one quadrant of a photograph, that quadrant (its source), and the opposite quadrant
    of the same photograph (a look-alike: the same colours and light, another region)."""
    from overlap_audit.demos.synthetic import bundled_photos

    quads = quadrants(bundled_photos()["astronaut"])
    return appc_copy(quads[0], MEDIUM, np.random.default_rng(0)), quads[0], quads[3]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory, pictures):
    from overlap_audit.api import build_index
    from overlap_audit.settings import IndexSettings

    root = tmp_path_factory.mktemp("neighbours")
    copy, source, look_alike = pictures
    (root / "corpus").mkdir()
    (root / "eval").mkdir()
    source.save(root / "corpus" / "source.png")
    look_alike.save(root / "corpus" / "look_alike.png")
    copy.save(root / "eval" / "copy.png")
    build_index([str(root / "corpus")], root / "index", IndexSettings(detector="phash"))
    return root


def _rule(neighbours: int | None = None) -> DecisionRule:
    from overlap_audit.detectors import get_detector

    verify = VerifySettings() if neighbours is None else VerifySettings(neighbours=neighbours)
    return DecisionRule.for_detector(get_detector("phash"), {"s": T}, verify)


def _decide(corpus, rule: DecisionRule, near_sim: float):
    """The rule's decision on the copy, whose nearest item is the look-alike at ``near_sim`` and whose second is
    its source, a bit less similar."""
    emb = Embeddings(["copy.png"], np.zeros((1, 8), np.uint8), np.zeros(1, bool))
    nb = Neighbors(["copy.png"], np.array([["look_alike.png", "source.png"]], object),
                   np.array([[near_sim, near_sim - 2 / 64]], np.float32))
    return rule.decide({"s": (emb, nb)}, index_dir=corpus / "index", eval_sources={"s": str(corpus / "eval")},
                       workers=0)


@pytest.mark.parametrize("near_sim", [1 - 14 / 64, 1 - 6 / 64], ids=["below-threshold", "above-threshold"])
def test_the_source_second_behind_a_look_alike_is_overlap_and_named(corpus, near_sim):
    from overlap_audit.matched import matched_pairs
    from overlap_audit.report.write import splits_table

    rule = _rule()
    assert near_sim - 2 / 64 >= rule.first_stage("s")
    decision = _decide(corpus, rule, near_sim)
    sp = decision.splits["s"]
    # the look-alike was compared and refused (evidence against it, even above the threshold), then the source
    assert bool(sp.overlap[0]) and bool(sp.verified[0])
    assert sp.match_key(0) == "source.png" and sp.match_similarity(0) == pytest.approx(near_sim - 2 / 64)
    record = decision.verification["datasets"]["s"]
    assert record["n_pairs"] == 2 and record["n_by_neighbour"] == 1 and record["n_overlap"] == 1
    assert matched_pairs(decision.splits) == [("s", "copy.png", 2, "source.png", pytest.approx(near_sim - 2 / 64),
                                               pytest.approx(float(sp.verify_scores[0])))]
    assert splits_table(decision.splits, {"s": np.ones(1, bool)}).column("match_rank").to_pylist() == [2]

    # verifying the nearest item only, the copy is lost: the look-alike is refused
    alone = _decide(corpus, _rule(neighbours=1), near_sim).splits["s"]
    assert not alone.overlap[0] and alone.match_key(0) == "look_alike.png"
    assert decision.verification["neighbours"] == 3 and rule_from_record(
        decision.verification, {"s": T}, where="report.json").verify.neighbours == 3


def _item(image: Image.Image, ident: str) -> RawItem:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return RawItem("s", ident, data=buf.getvalue())


def test_judge_examples_names_the_verified_neighbour(pictures):
    """The review sheet's path (``judge_examples`` over items, as ``pairs`` and the notebook decide)."""
    copy, source, look_alike = pictures
    near = 1 - 14 / 64
    (col, j), = _rule().judge_examples("s", [(_item(copy, "copy"), [(_item(look_alike, "l"), near),
                                                                     (_item(source, "s"), near - 2 / 64)])],
                                       workers=0)
    assert col == 1 and j.verdict is True and j.overlap and j.similarity == pytest.approx(near - 2 / 64)


def test_choose_walks_the_neighbours_in_order_and_stops_at_the_first_verified():
    rule = _rule(neighbours=3)
    stage = rule.first_stage("s")
    sims = np.array([[0.95, 0.9, 0.8, 0.8],     # nearest confident: judged first
                     [0.8, 0.79, 0.78, 0.77],   # below the threshold: walks on
                     [stage - 0.01, 0.5, 0.4, 0.3],  # below the first stage: nothing compared
                     [0.8, 0.79, 0.78, 0.77]], np.float32)  # low information: nothing compared
    low = np.array([False, False, False, True])
    first = rule.choose("s", sims, {}, low)
    assert first.todo == [(0, 0), (1, 0)] and not first.overlap.any()
    # nearest confident with nothing to say stands, and is the match; a refused nearest walks on
    second = rule.choose("s", sims, {(0, 0): None, (1, 0): False}, low)
    assert second.overlap.tolist() == [True, False, False, False] and second.todo == [(1, 1)]
    third = rule.choose("s", sims, {(0, 0): None, (1, 0): False, (1, 1): True}, low)
    assert third.overlap.tolist() == [True, True, False, False] and third.match.tolist() == [0, 1, 0, 0]
    assert not third.todo
    # a confident nearest refused: its next neighbours are compared, the third being the last allowed
    refused = rule.choose("s", sims, {(0, 0): False, (0, 1): None, (0, 2): None, (1, 0): False, (1, 1): None,
                                      (1, 2): None}, low)
    assert not refused.overlap.any() and not refused.todo
    # a later neighbour at or above the threshold with nothing to say is not a match: only a verified one is
    assert not rule.choose("s", sims, {(0, 0): False, (0, 1): None, (0, 2): None}, low).overlap[0]


def test_only_a_photograph_pair_walks_past_the_nearest():
    rule = _rule(neighbours=3)
    sims = np.array([[0.8, 0.79, 0.78], [0.8, 0.79, 0.78]], np.float32)
    low = np.zeros(2, bool)
    refused = {(0, 0): False, (1, 0): False}
    # row 0's nearest pair was compared as photographs, row 1's as drawings: only row 0 goes on
    walked = rule.choose("s", sims, refused, low, {0: True, 1: False})
    assert walked.todo == [(0, 1)] and not walked.overlap.any()
    # a drawing row is decided by its nearest pair alone, even where a later item would verify
    assert not rule.choose("s", sims, refused | {(1, 1): True}, low, {0: True, 1: False}).overlap[1]
    assert rule.choose("s", sims, refused | {(1, 1): True}, low).overlap[1]  # without the flags: every row walks


def test_the_number_of_neighbours_is_checked():
    for bad in (0, -1, 1.5, True):
        with pytest.raises(SettingsError, match="neighbours"):
            VerifySettings(neighbours=bad)


def test_an_item_past_the_nearest_needs_the_photograph_acceptance():
    """A drawing comparison's acceptance at a low photo score counts for the nearest item only."""
    from overlap_audit.decide.rule import beyond_nearest

    assert beyond_nearest(0.95, True, 0.91) is True
    assert beyond_nearest(0.28, True, 0.91) is None and beyond_nearest(float("nan"), True, 0.91) is None
    assert beyond_nearest(0.2, False, 0.91) is False and beyond_nearest(0.5, None, 0.91) is None
