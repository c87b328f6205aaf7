"""Clips (gpoa.video, GPOAPredictor.track, gpoa track, benchmarks/bench_video.py) on small generated
clips (gpoa.synth.clips): the motion, point and memory pieces on hand-made cases, the tracker on a
clip with an occlusion, the command's outputs, resume and failures, and the benchmark's tables
split over two processes."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
from conftest import DEMO_CONFIG, ROOT
from PIL import Image

from gpoa.cli import main as gpoa_main
from gpoa.config import PlacementConfig, load_config
from gpoa.errors import InputError, UsageError
from gpoa.grid import PatchGrid
from gpoa.io import read_mask
from gpoa.metrics import iou
from gpoa.predictor import GPOAPredictor
from gpoa.segmenters import cell_means
from gpoa.synth.clips import draw_clip, write_clip
from gpoa.video import (
    ClipMemory,
    ClipTracker,
    MemoryFrame,
    carried_prompts,
    carry_mask,
    dense_flow,
    gray,
    search_window,
    track_points,
)

#: frames of the generated clips: long enough for an occlusion in the middle, short enough to be quick
FRAMES = 10


def textured(shape=(120, 160), seed=0) -> np.ndarray:
    """A uint8 RGB image of smooth random texture (something optical flow can follow)."""
    rng = np.random.default_rng(seed)
    noise = cv2.GaussianBlur(rng.random((shape[0] + 40, shape[1] + 40)).astype(np.float32), (0, 0), 2.0)
    noise = (noise - noise.min()) / (noise.max() - noise.min())
    return np.repeat((noise * 255).astype(np.uint8)[..., None], 3, axis=2)


def shifted(image: np.ndarray, dx: int, dy: int) -> np.ndarray:
    """The crop of ``image`` (its texture) seen by a camera moved by (-dx, -dy): content moves (dx, dy)."""
    return np.ascontiguousarray(image[20 - dy:20 - dy + 120, 20 - dx:20 - dx + 160])


# ----- motion, points, memory ---------------------------------------------------------------------------
def test_a_mask_is_carried_along_the_motion():
    scene = textured()
    before, after = shifted(scene, 0, 0), shifted(scene, 6, 4)
    mask = np.zeros((120, 160), bool)
    mask[40:80, 50:100] = True
    moved = np.roll(np.roll(mask, 4, axis=0), 6, axis=1)
    carried = carry_mask(mask, dense_flow(gray(before), gray(after)))
    assert carried.dtype == np.float32 and carried.min() >= 0 and carried.max() <= 1
    assert iou(carried >= 0.5, moved) > 0.9 and iou(mask, moved) < 0.8


def test_points_are_followed_and_lost_ones_dropped():
    scene = textured(seed=1)
    before, after = gray(shifted(scene, 0, 0)), gray(shifted(scene, 5, -3))
    points = np.array([[40.0, 60.0], [100.0, 30.0], [157.0, 60.0]])  # the last one leaves the frame
    moved, kept = track_points(before, after, points, max_error=1.0)
    np.testing.assert_array_equal(kept, [True, True, False])
    np.testing.assert_allclose(moved[:2], points[:2] + [5.0, -3.0], atol=0.5)
    empty, none_kept = track_points(before, after, np.zeros((0, 2)), 1.0)
    assert empty.shape == (0, 2) and none_kept.shape == (0,)


def test_memory_keeps_the_first_the_recent_and_every_kth_accepted_frame():
    memory = ClipMemory(recent=2, every=3, size=4)
    for index in range(11):
        memory.add(MemoryFrame(index, np.zeros((2, 2, 1)), np.zeros((2, 2), bool)))
    # periodic: accepted frames 3, 6 and 9; recent: 9 and 10; four in all, so 3 (the oldest periodic) left
    assert [frame.index for frame in memory.frames] == [0, 6, 9, 10]
    assert memory.version == 11  # the held frames changed with every frame written
    periodic = ClipMemory(recent=0, every=3, size=3)
    for index in range(8):
        periodic.add(MemoryFrame(index, np.zeros((2, 2, 1)), np.zeros((2, 2), bool)))
    assert [frame.index for frame in periodic.frames] == [0, 3, 6] and periodic.version == 3
    first_only = ClipMemory(recent=1, every=0, size=1)
    for index in range(3):
        first_only.add(MemoryFrame(index, np.zeros((2, 2, 1)), np.zeros((2, 2), bool)))
    assert [frame.index for frame in first_only.frames] == [0]


def test_carried_prompts_sit_on_the_carried_mask_and_around_it():
    grid = PatchGrid.square(140, 14)  # 10 x 10 patches
    cells = np.zeros(100)
    cells.reshape(10, 10)[3:7, 2:6] = 1.0
    cells.reshape(10, 10)[2, 2:6] = 0.3  # touched, not inside
    settings = PlacementConfig(n_positive=4, n_negative=4)
    # propagated: patch 33 (inside) and 23 (touched only: no positive there); negative 99 (outside) and 44 (inside)
    positive, negative = carried_prompts(cells, grid, settings, np.random.default_rng(0),
                                         (np.array([23, 33]), np.array([99, 44])))
    assert len(positive) == 4 and len(negative) == 4
    assert positive[0] == 33 and 23 not in positive and np.all(cells[positive] >= 0.5)
    assert negative[0] == 99 and np.all(cells[negative] == 0)


def test_the_search_window_grows_and_moves_with_the_object():
    grid = PatchGrid.square(140, 14)
    mask = np.zeros((100, 100), bool)
    mask[40:50, 40:50] = True  # patches (4, 4)
    near = search_window(mask, grid, 1.0).reshape(10, 10)
    assert near[4, 4] and near[3, 4] and not near[2, 4] and near.sum() == 5
    assert search_window(mask, grid, 2.0).sum() > near.sum()
    moved = search_window(mask, grid, 1.0, shift=(30.0, 0.0)).reshape(10, 10)  # 3 patches to the right
    assert moved[4, 7] and not moved[4, 4]
    assert search_window(np.zeros((100, 100), bool), grid, 1.0).all()


# ----- the tracker ------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def predictor() -> GPOAPredictor:
    return GPOAPredictor.from_config(DEMO_CONFIG, device="cpu")


def test_track_follows_the_object_and_leaves_hidden_frames_empty(predictor):
    frames = list(draw_clip(seed=0, frames=FRAMES, hidden=2))
    hidden = [t for t, (_, mask) in enumerate(frames) if not mask.any()]
    assert hidden  # the clip hides the object behind the post for a few frames
    predictions = list(predictor.track((image for image, _ in frames), frames[0][1]))
    assert len(predictions) == FRAMES
    np.testing.assert_array_equal(predictions[0].mask, frames[0][1])  # the first frame's mask is the one given
    before = range(1, hidden[0] - 1)
    assert np.mean([iou(predictions[t].mask, frames[t][1]) for t in before]) > 0.6
    for t in hidden:  # the post does not look like the object: an empty mask, the object called absent
        assert not predictions[t].mask.any() and not predictions[t].present
        assert not predictions[t].track.remembered
    tracked = predictions[1].track
    assert tracked.carried and tracked.remembered and tracked.index == 1


def test_the_agents_yardstick_is_the_gated_carried_region(predictor, monkeypatch):
    frames = list(draw_clip(seed=0, frames=FRAMES, hidden=2))[:2]
    tracker = ClipTracker(predictor, frames[0][0], frames[0][1])
    leak = np.zeros_like(frames[0][1])
    leak[90:118, 110:158] = True  # a corner of background, far from the object: the last mask leaked onto it
    tracker.previous_mask = frames[0][1] | leak
    seen = []
    segment = predictor._segment
    monkeypatch.setattr(predictor, "_segment", lambda *args, **kwargs: seen.append(
        dict(kwargs, initial=args[3])) or segment(*args, **kwargs))
    tracker.step(frames[1][0])
    (given,) = seen
    grid = tracker.grid
    leak_patches = cell_means(leak, (grid.rows, grid.cols)).reshape(-1) >= 0.9
    object_patches = cell_means(frames[1][1], (grid.rows, grid.cols)).reshape(-1) >= 0.5
    # the mask prompt is the whole carried mask, leak included; the agent's yardstick is the region the
    # prompts were placed on: the object's patches, not the leak that looks like none of it
    assert given["mask_prompt"][95:113, 115:153].mean() > 0.5
    prior = given["region_prior"]
    assert leak_patches.any() and prior[leak_patches].max() == 0.0 and prior[object_patches].max() >= 0.5
    initial = given["initial"]
    assert len(initial.positive_indices) and not leak_patches[initial.positive_indices].any()


def test_the_mask_given_out_has_its_edge_refined_and_the_one_carried_has_not(predictor, monkeypatch):
    frames = list(draw_clip(seed=0, frames=FRAMES, hidden=2))[:3]
    tracker = ClipTracker(predictor, frames[0][0], frames[0][1])
    carried = []
    monkeypatch.setattr("gpoa.video.carry_mask", lambda mask, flow: carried.append(mask.copy()) or carry_mask(mask, flow))
    outputs = [tracker.step(image)[0].mask for image, _ in frames[1:]]
    segmenters_mask = carried[1]  # what frame 2 was carried from: frame 1's mask as the segmenter gave it
    assert not np.array_equal(outputs[0], segmenters_mask)
    np.testing.assert_array_equal(outputs[0], predictor.backends.segmenter.refine_edges(frames[1][0], segmenters_mask))
    monkeypatch.setattr(predictor.cfg.track, "refine_edges", False)
    unrefined = ClipTracker(predictor, frames[0][0], frames[0][1]).step(frames[1][0])[0].mask
    np.testing.assert_array_equal(unrefined, segmenters_mask)


def test_track_checks_its_inputs(predictor):
    image, mask = next(draw_clip(seed=1, frames=2, hidden=0))
    with pytest.raises(UsageError, match="no frames"):
        next(predictor.track([], mask))
    with pytest.raises(InputError, match="no foreground"):
        next(predictor.track([image], np.zeros_like(mask)))
    stream = predictor.track([image, image[:60]], mask)
    next(stream)
    with pytest.raises(ValueError, match="clip's frames are 160x120"):
        next(stream)


# ----- gpoa track and the benchmark ------------------------------------------------------------------
@pytest.fixture(scope="module")
def clips(tmp_path_factory) -> Path:
    """Two generated clips with every frame's mask, and one with the first frame's only."""
    root = tmp_path_factory.mktemp("clips")
    write_clip(root / "alpha", seed=0, frames=FRAMES, all_masks=True)
    write_clip(root / "beta", seed=1, frames=6, all_masks=True)
    write_clip(root / "gamma", seed=2, frames=4)
    return root


def snapshot(folder: Path) -> dict:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_gpoa_track_writes_masks_videos_and_tables_and_resumes(clips, tmp_path, capsys):
    before = snapshot(clips)
    out = tmp_path / "out"
    args = ["track", "--config", str(DEMO_CONFIG), "--data", str(clips), "--out", str(out)]
    assert gpoa_main(args) == 0
    assert snapshot(clips) == before  # the clips are read only
    # every frame's mask in DAVIS's layout, at the frame's size
    assert sorted(p.name for p in (out / "alpha").iterdir()) == [f"{i:05d}.png" for i in range(FRAMES)]
    assert read_mask(out / "gamma" / "00003.png").shape == (120, 160)
    video = cv2.VideoCapture(str(out / "alpha.mp4"))
    assert int(video.get(cv2.CAP_PROP_FRAME_COUNT)) == FRAMES
    with open(out / "alpha.csv", newline="") as handle:
        frames = list(csv.DictReader(handle))
    assert [row["frame"] for row in frames] == [f"{i:05d}" for i in range(FRAMES)]
    assert [bool(row["j"]) for row in frames] == [False] + [True] * (FRAMES - 2) + [False]  # first and last not scored
    with open(out / "track.csv", newline="") as handle:
        rows = {row["clip"]: row for row in csv.DictReader(handle)}
    assert list(rows) == ["alpha", "beta", "gamma"]
    assert rows["alpha"]["scored"] == str(FRAMES - 2) and 0 <= float(rows["alpha"]["j_mean"]) <= 1
    assert rows["gamma"]["scored"] == "0" and rows["gamma"]["j_mean"] == "nan"  # no masks beyond the first
    assert "| alpha | 10 | 8 |" in (out / "track.md").read_text()
    capsys.readouterr()
    assert gpoa_main(args) == 0  # resume: every clip is kept
    assert "0 done, 3 kept from an earlier run" in capsys.readouterr().out
    assert gpoa_main(args + ["--set", "track.overlay=gif", "--set", "track.memory_size=2"]) == 0  # new settings
    assert Image.open(out / "alpha.gif").n_frames == FRAMES


def test_gpoa_track_reports_a_bad_frame_and_goes_on(clips, tmp_path, capsys):
    clip = tmp_path / "clip"
    write_clip(clip, seed=3, frames=5)
    (clip / "image" / "00002.png").write_bytes(b"not a png")
    out = tmp_path / "out"
    code = gpoa_main(["track", "--config", str(DEMO_CONFIG), "--data", str(clip), "--out", str(out),
                      "--set", "track.overlay=none"])
    assert code == 1
    assert "clip/00002" in capsys.readouterr().err
    assert sorted(p.name for p in (out / "clip").iterdir()) == ["00000.png", "00001.png", "00003.png", "00004.png"]
    assert not (out / "clip.mp4").exists()


def test_gpoa_track_refuses_frames_out_of_time_order(tmp_path, capsys):
    clip = write_clip(tmp_path / "clip", seed=0, frames=3)
    for index, name in enumerate(("frame_1", "frame_2", "frame_10")):
        (clip / "image" / f"{index:05d}.png").rename(clip / "image" / f"{name}.png")
    (clip / "mask" / "00000.png").rename(clip / "mask" / "frame_1.png")
    assert gpoa_main(["track", "--data", str(clip), "--out", str(tmp_path / "out")]) == 2
    assert "zero-padded" in capsys.readouterr().err


def bench_args(clips: Path, out: Path, *extra: str) -> list:
    return [str(clips), "--out", str(out), "--config", str(DEMO_CONFIG), "--policy", "none", "--device", "cpu",
            "--frames", "5", "--set", "track.overlay=none", *extra]


def read_table(path: Path, drop=("seconds_per_frame", "peak_rss_mb")) -> list:
    with open(path, newline="") as handle:
        return [{k: v for k, v in row.items() if k not in drop} for row in csv.DictReader(handle)]


def test_bench_video_tables_over_two_processes_equal_one_processs(clips, tmp_path, capsys):
    from gpoa.experiments.video import main as bench_video

    assert bench_video(bench_args(clips, tmp_path / "one")) == 0
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert last.startswith("clips=3 j_mean=") and " perframe_j_mean=" in last and " ideal_j_mean=" in last
    assert last.split()[-1].startswith("peak_rss_mb=")
    table = (tmp_path / "one" / "video.md").read_text()
    assert "| OFL (paper) | 68.0 | 63.4 |" in table and "| **MEAN** |" in table
    script = str(ROOT / "benchmarks" / "bench_video.py")
    shards = [subprocess.Popen([sys.executable, script, *bench_args(clips, tmp_path / "two", "--shard", f"{rank}/2")],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for rank in range(2)]
    for shard in shards:  # two processes at once, each its share of the clips
        _, stderr = shard.communicate(timeout=600)
        assert shard.returncode == 0, stderr
    assert read_table(tmp_path / "two" / "video.csv") == read_table(tmp_path / "one" / "video.csv")
    rows = read_table(tmp_path / "one" / "video.csv")
    assert [row["clip"] for row in rows] == ["alpha", "beta", "gamma"]
    assert all(0 <= float(row["ideal_j_mean"]) <= 1 for row in rows[:2])
    stamp = json.loads((tmp_path / "two" / "alpha.json").read_text())
    assert stamp["row"]["frames"] == 5


def test_the_video_table_sets_davis_clips_beside_the_published_methods_on_the_same_clips():
    from gpoa.experiments.video import same_clips

    rows = [{"clip": "camel", "j_mean": 0.60, "f_mean": 0.50}, {"clip": "my-own-clip", "j_mean": 0.9, "f_mean": 0.9},
            {"clip": "bmx-trees", "j_mean": 0.20, "f_mean": 0.30}]
    lines = same_clips(rows)
    assert lines[3] == "| clip | GPOA | OSVOS | OFL | BVS | FCP | JMP |"
    # OFL's published per-clip J: camel 86.7, bmx-trees 14.9 (means of the benchmark's per-frame results)
    assert lines[5].startswith("| camel | 60.0 | 85.1 | 86.7 |") and lines[6].startswith("| bmx-trees | 20.0 |")
    assert not any("my-own-clip" in line for line in lines)
    j_mean, f_mean = lines[7], lines[8]
    assert j_mean.startswith(f"| **J mean** | 40.0 | {(85.1 + 55.5) / 2:.1f} | {(86.7 + 14.9) / 2:.1f} |")
    assert f_mean.startswith("| **F mean** | 40.0 |")
    assert any("ofl_davis.json" in line for line in lines)
    assert same_clips([{"clip": "alpha", "j_mean": 0.5, "f_mean": 0.5}]) == []


def test_track_settings_are_checked():
    with pytest.raises(UsageError, match="track.engine"):
        load_config(None, ["track.engine=cutie"])
    with pytest.raises(UsageError, match="track.memory_size"):
        load_config(None, ["track.memory_size=0"])


# ----- track.engine=sam2_video -----------------------------------------------------------------------------
@pytest.mark.filterwarnings("ignore:cannot import name '_C'")  # SAM 2's CUDA hole filling, off on the CPU
def test_sam2_video_engine_takes_gpoas_points_where_it_disagrees_with_the_reference(tmp_path, one_torch_thread):
    from gpoa.config import Config, with_overrides
    from gpoa.segmenters.sam2_video import Sam2VideoEngine
    from gpoa.segmenters.tiny import TINY_MODEL_TYPES, save_random_segmenter

    cfg = Config(segmenter=save_random_segmenter("sam2", TINY_MODEL_TYPES["sam2"], tmp_path, seed=0))
    clip = list(draw_clip(seed=0, frames=3, hidden=0))
    frames, first = [image for image, _ in clip], clip[0][1]
    # guard 0: SAM 2's own propagation, never corrected
    never = GPOAPredictor(with_overrides(cfg, ["track.engine=sam2_video", "track.guard=0"]))
    propagated = [mask for _, mask, _ in Sam2VideoEngine.from_config(never.cfg).propagate(frames, first)]
    uncorrected = list(never.track(frames, first))
    assert [p.track.corrected for p in uncorrected[1:]] == [False] * 2
    for prediction, mask in zip(uncorrected[1:], propagated[1:]):
        np.testing.assert_array_equal(prediction.mask, mask)
    # guard 1: every frame disagrees with the reference, so GPOA's optimised points go in on each
    always = list(GPOAPredictor(with_overrides(cfg, ["track.engine=sam2_video", "track.guard=1"])).track(frames, first))
    assert [p.track.corrected for p in always[1:]] == [True] * 2
    assert all(len(p.prompts.optimized.labels) for p in always[1:])

    def replay(index, image, mask):  # the same corrections, given to the engine by hand
        return always[index].prompts.optimized.points, always[index].prompts.optimized.labels

    corrected = [mask for _, mask, _ in Sam2VideoEngine.from_config(never.cfg).propagate(frames, first, replay)]
    for prediction, mask in zip(always[1:], corrected[1:]):
        np.testing.assert_array_equal(prediction.mask, mask)
    compared = np.array(propagated[1:] + corrected[1:])
    assert compared.any() and not compared.all()  # masks that say something
    assert any((a != b).any() for a, b in zip(propagated[1:], corrected[1:]))  # the corrections count
