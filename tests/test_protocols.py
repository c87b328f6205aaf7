"""Benchmark episodes and metrics (gpoa.protocols): hand-computed values, determinism, merging."""

from __future__ import annotations

import json

import numpy as np
import pytest

from gpoa.errors import InputError
from gpoa.protocols import (
    PASCAL_CLASSES,
    Episode,
    SegmentationCounts,
    coco20i_episodes,
    coco20i_folds,
    fss1000_episodes,
    natural_key,
    one_shot_episodes,
    pascal5i_episodes,
    pascal5i_fold_classes,
    read_episodes,
    shard,
    write_episodes,
)


def masks(*rows: str) -> np.ndarray:
    """'110', '000' → a boolean (2, 3) array."""
    return np.array([[c == "1" for c in row] for row in rows])


# ----- metrics -----------------------------------------------------------------------------------
def hand_counts() -> SegmentationCounts:
    """Class A, two episodes; class B, one (2x3 masks, values worked out in the comments)."""
    counts = SegmentationCounts()
    # A1: fg I=2, U=2; bg I=4, U=4
    counts.add("A", masks("110", "000"), masks("110", "000"))
    # A2: fg I=1, U=3; bg: ~pred 5 px, ~truth 3 px (row 2) → I=3, U=5
    counts.add("A", masks("100", "000"), masks("111", "000"))
    # B1: fg I=0, U=3; bg: ~pred 4 px, ~truth 5 px → I=3 (row 1), U=6
    counts.add("B", masks("000", "110"), masks("000", "001"))
    return counts


def test_class_wise_miou_sums_intersections_and_unions_per_class():
    counts = hand_counts()
    assert counts.class_iou() == {"A": pytest.approx(3 / 5), "B": 0.0}
    # summed over A's episodes: 3/5 = 0.6, not the mean of its episode IoUs (1 + 1/3) / 2 = 0.667
    assert counts.miou() == pytest.approx((3 / 5 + 0.0) / 2)
    assert counts.miou(["A"]) == pytest.approx(0.6)


def test_fb_iou_and_per_image_means():
    counts = hand_counts()
    foreground = (2 + 1 + 0) / (2 + 3 + 3)
    background = (4 + 3 + 3) / (4 + 5 + 6)
    assert counts.fb_iou() == pytest.approx((foreground + background) / 2) == pytest.approx(25 / 48)
    assert counts.mdsc() == pytest.approx((1.0 + 0.5 + 0.0) / 3)  # Dice 2*2/4, 2*1/4, 0/3
    assert counts.mean_image_iou() == pytest.approx((1.0 + 1 / 3 + 0.0) / 3)
    summary = counts.summary()
    assert summary["episodes"] == 3 and summary["miou"] == counts.miou()


def test_ignored_pixels_are_left_out_of_every_count():
    prediction, truth = masks("110", "000"), masks("100", "000")
    plain = SegmentationCounts()
    assert plain.add("A", prediction, truth) == pytest.approx(1 / 2)
    ignored = SegmentationCounts()
    assert ignored.add("A", prediction, truth, ignore=masks("010", "000")) == 1.0  # the false positive is ignored
    row = dict(zip(SegmentationCounts.FIELDS, ignored.classes["A"]))
    assert row == {"bg_intersection": 4, "bg_union": 4, "fg_intersection": 1, "fg_union": 1, "episodes": 1}
    assert ignored.fb_iou() == 1.0 and ignored.mdsc() == 1.0
    assert ignored.images == [("A", 1, 1, 1)]
    # an ignored truth pixel is not counted as missed either
    missed = SegmentationCounts()
    missed.add("A", masks("100", "000"), masks("110", "000"), ignore=masks("010", "000"))
    assert missed.miou() == 1.0


def test_empty_prediction_and_truth_count_as_perfect():
    counts = SegmentationCounts()
    empty = np.zeros((2, 3), bool)
    assert counts.add("A", empty, empty) == 1.0
    assert counts.miou() == counts.mdsc() == counts.fb_iou() == 1.0


def test_mismatched_shapes_are_rejected():
    with pytest.raises(ValueError, match="shape"):
        SegmentationCounts().add("A", np.zeros((2, 3), bool), np.zeros((3, 2), bool))


def random_episodes(seed: int = 0, n: int = 30) -> list:
    rng = np.random.default_rng(seed)
    return [(f"class{int(rng.integers(4))}", rng.random((9, 7)) < 0.4, rng.random((9, 7)) < 0.5,
             rng.random((9, 7)) < 0.1) for _ in range(n)]


def test_merged_partial_counts_equal_one_accumulator():
    episodes = random_episodes()
    whole = SegmentationCounts()
    for name, prediction, truth, ignore in episodes:
        whole.add(name, prediction, truth, ignore)
    parts = []
    for rank in range(3):
        part = SegmentationCounts()
        for name, prediction, truth, ignore in shard(episodes, rank, 3):
            part.add(name, prediction, truth, ignore)
        parts.append(SegmentationCounts.from_dict(json.loads(json.dumps(part.to_dict()))))  # as a rank sends it
    merged = SegmentationCounts.merged(parts)
    assert merged.to_dict()["classes"] == whole.to_dict()["classes"]
    assert sorted(merged.images) == sorted(whole.images)
    for metric in ("miou", "fb_iou", "mdsc", "mean_image_iou"):
        assert getattr(merged, metric)() == getattr(whole, metric)()  # exactly, not approximately
    assert merged.class_iou() == whole.class_iou()


def test_counts_round_trip_through_json():
    counts = hand_counts()
    back = SegmentationCounts.from_dict(json.loads(json.dumps(counts.to_dict())))
    assert back.to_dict() == counts.to_dict() and back.summary() == counts.summary()


# ----- folds and episodes ------------------------------------------------------------------------------
def fold_members(classes: list, images: int = 6) -> dict:
    return {name: [f"{name}_{k:03d}" for k in range(images)] for name in classes}


def test_pascal5i_folds_are_consecutive_blocks_of_five():
    assert pascal5i_fold_classes(0) == ["aeroplane", "bicycle", "bird", "boat", "bottle"]
    assert pascal5i_fold_classes(3) == ["pottedplant", "sheep", "sofa", "train", "tvmonitor"]
    assert sum((pascal5i_fold_classes(f) for f in range(4)), []) == list(PASCAL_CLASSES)
    with pytest.raises(ValueError):
        pascal5i_fold_classes(4)


def test_coco20i_folds_are_interleaved():
    categories = [f"cat{k:02d}" for k in range(80)]
    folds = coco20i_folds(categories)
    assert [len(folds[f]) for f in range(4)] == [20] * 4
    assert folds[1][:3] == ["cat01", "cat05", "cat09"]
    assert sorted(sum(folds.values(), [])) == categories


@pytest.mark.parametrize("make", [pascal5i_episodes, coco20i_episodes])
def test_fold_episodes_1000_deterministic_support_differs_from_query(make):
    members = fold_members(pascal5i_fold_classes(1))
    members["bus"] = members["bus"][:1]  # a class with a single image can give no episode
    episodes = make(members, fold=1, seed=0)
    assert len(episodes) == 1000
    assert all(e.fold == 1 and e.query not in e.support and len(e.support) == 1 for e in episodes)
    assert all(e.query in members[e.domain] and set(e.support) <= set(members[e.domain]) for e in episodes)
    assert "bus" not in {e.domain for e in episodes}
    assert {e.domain for e in episodes} == {"car", "cat", "chair", "cow"}
    shuffled = {name: list(reversed(stems)) for name, stems in reversed(list(members.items()))}
    assert make(shuffled, fold=1, seed=0) == episodes  # input order does not matter
    assert make(members, fold=1, seed=1) != episodes
    assert make(members, fold=1, seed=0, n=10) == episodes[:10]  # a prefix: episode k never depends on n


def test_pascal5i_queries_every_pair_before_repeating():
    members = fold_members(pascal5i_fold_classes(0), images=5)  # 25 (class, image) pairs
    episodes = pascal5i_episodes(members, fold=0, n=1000, seed=4)
    first = {(e.domain, e.query) for e in episodes[:25]}
    assert len(first) == 25
    assert [(e.domain, e.query) for e in episodes[25:50]] == [(e.domain, e.query) for e in episodes[:25]]


def test_k_shot_supports_are_distinct():
    episodes = coco20i_episodes(fold_members(["a", "b"]), fold=0, n=50, seed=0, shots=3)
    assert all(len(set(e.support)) == 3 and e.query not in e.support for e in episodes)


def test_fss1000_every_test_image_once_or_a_subset():
    members = fold_members(["abacus", "bee"], images=10)
    episodes = fss1000_episodes(members, seed=0)
    assert [(e.domain, e.query) for e in episodes] == [(n, s) for n in ("abacus", "bee") for s in members[n]]
    five = fss1000_episodes(members, seed=0, queries_per_class=5)
    assert [sum(e.domain == n for e in five) for n in ("abacus", "bee")] == [5, 5]
    assert fss1000_episodes(members, seed=0, queries_per_class=5) == five
    assert fss1000_episodes(members, seed=1) != episodes
    # a class's episodes do not depend on the other classes
    assert fss1000_episodes({"bee": members["bee"]}, seed=0) == [e for e in episodes if e.domain == "bee"]


def test_one_shot_episodes_use_one_reference():
    episodes = one_shot_episodes("kvasir", ["t1", "t2", "t3"], ["q2", "q10", "q1", "t2"], seed=0)
    (support,) = {e.support for e in episodes}
    assert support[0] in ("t1", "t2", "t3")
    assert [e.query for e in episodes] == [q for q in ("q1", "q2", "q10", "t2") if q != support[0]]
    assert len(one_shot_episodes("kvasir", ["t1"], [f"q{i}" for i in range(9)], seed=0, limit=4)) == 4


def test_natural_key_orders_numbers():
    assert sorted(["10", "9", "1", "a2", "a10"], key=natural_key) == ["1", "9", "10", "a2", "a10"]


def test_shards_partition_the_list_in_order():
    episodes = pascal5i_episodes(fold_members(["aeroplane", "bird"]), fold=0, n=11, seed=0)
    shards = [shard(episodes, rank, 3) for rank in range(3)]
    assert sorted(sum(shards, []), key=episodes.index) == episodes
    assert shards[1] == episodes[1::3]
    with pytest.raises(ValueError):
        shard(episodes, 3, 3)


def test_episode_rejects_query_among_its_supports():
    with pytest.raises(ValueError, match="also a support"):
        Episode("cat", ("1", "2"), "2")
    with pytest.raises(ValueError, match="no support"):
        Episode("cat", (), "2")


def test_episode_file_round_trip_and_errors(tmp_path):
    episodes = coco20i_episodes(fold_members(["a", "b"]), fold=2, n=7, seed=0) + [Episode("x", ["1"], "2")]
    path = tmp_path / "episodes.json"
    write_episodes(path, episodes, benchmark="coco20i", seed=0)
    data = json.loads(path.read_text())
    assert data["count"] == 8 and data["benchmark"] == "coco20i"
    assert data["episodes"][-1] == {"fold": None, "domain": "x", "support": ["1"], "query": "2"}
    assert read_episodes(path) == episodes
    with pytest.raises(InputError, match="does not exist"):
        read_episodes(tmp_path / "nope.json")
    path.write_text('{"episodes": []}')
    with pytest.raises(InputError, match="not a valid episode file"):
        read_episodes(path)
