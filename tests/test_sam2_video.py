"""SAM 2's video path (gpoa.segmenters.sam2_video) with the tiny random SAM 2.1 (gpoa.segmenters.tiny)
on the CPU: the engine's masks and logits against SAM 2's official video predictor driven by hand
with the same frames, first-frame mask and correction; its errors."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from sam2.build_sam import build_sam2_video_predictor

from gpoa.config import Config, SegmenterConfig
from gpoa.errors import InputError, UsageError
from gpoa.segmenters.sam2_video import Sam2VideoEngine, check_correction
from gpoa.segmenters.tiny import TINY_MODEL_TYPES, TINY_SAM2, save_random_segmenter

HEIGHT, WIDTH, FRAMES = 40, 56, 4
CORRECTED = 2
#: the correction on frame CORRECTED: two positives and a negative, (x, y) pixels
POINTS = np.array([[12.0, 30.0], [45.0, 8.0], [30.0, 20.0]], np.float32)
LABELS = np.array([1, 1, 0], np.int32)

pytestmark = [pytest.mark.usefixtures("one_torch_thread"),
              # SAM 2's hole filling needs its CUDA extension: on the CPU it warns and skips it
              pytest.mark.filterwarnings("ignore:cannot import name '_C'")]


@pytest.fixture(scope="module")
def segmenter_config(tmp_path_factory) -> SegmenterConfig:
    return save_random_segmenter("sam2", TINY_MODEL_TYPES["sam2"], tmp_path_factory.mktemp("sam2"), seed=0)


def clip() -> tuple:
    """FRAMES frames of a bright square moving right over noise, and frame 0's mask of the square."""
    rng = np.random.default_rng(0)
    frames = []
    for t in range(FRAMES):
        frame = rng.integers(0, 256, (HEIGHT, WIDTH, 3), dtype=np.uint8)
        frame[10:28, 8 + 4 * t:26 + 4 * t] = (230, 200, 40)
        frames.append(frame)
    mask = np.zeros((HEIGHT, WIDTH), bool)
    mask[10:28, 8:26] = True
    return frames, mask


def official_run(segmenter_config: SegmenterConfig, folder: Path, first_mask: np.ndarray) -> tuple:
    """SAM 2's video predictor by hand: built by the official builder from the checkpoint, the mask
    on frame 0, propagation up to CORRECTED, the points there, propagation from the next frame.
    Returns ({frame: logits (H, W)}, the logits propagated on CORRECTED before the correction)."""
    predictor = build_sam2_video_predictor(TINY_SAM2.config, ckpt_path=segmenter_config.checkpoint, device="cpu",
                                           hydra_overrides_extra=list(TINY_SAM2.overrides))
    state = predictor.init_state(str(folder))
    predictor.add_new_mask(state, frame_idx=0, obj_id=1, mask=first_mask)
    logits = {}
    for frame, _, scores in predictor.propagate_in_video(state):
        logits[frame] = scores[0, 0].numpy()
        if frame == CORRECTED:
            break
    propagated = logits[CORRECTED]
    _, _, scores = predictor.add_new_points_or_box(state, frame_idx=CORRECTED, obj_id=1, points=POINTS,
                                                   labels=LABELS)
    logits[CORRECTED] = scores[0, 0].numpy()
    for frame, _, scores in predictor.propagate_in_video(state, start_frame_idx=CORRECTED + 1):
        logits[frame] = scores[0, 0].numpy()
    return logits, propagated


def test_the_engine_equals_the_official_video_predictor(segmenter_config, tmp_path):
    frames, first_mask = clip()
    engine = Sam2VideoEngine.from_config(Config(segmenter=segmenter_config))
    fed = {}  # what the engine's init_state read: the folder and its files
    init_state = engine.predictor.init_state

    def spy(folder, *args, **kwargs):
        fed["folder"] = Path(folder)
        fed["files"] = {p.name: p.read_bytes() for p in sorted(Path(folder).iterdir())}
        return init_state(folder, *args, **kwargs)

    engine.predictor.init_state = spy
    calls = []

    def corrector(frame, image, mask):
        calls.append((frame, image, mask))
        return (POINTS, LABELS) if frame == CORRECTED else None

    results = list(engine.propagate(frames, first_mask, corrector=corrector))

    # SAM 2 read the frames as integer-named JPEGs at quality 100, 4:4:4; the folder is gone
    folder = tmp_path / "frames"
    folder.mkdir()
    for index, frame in enumerate(frames):
        Image.fromarray(frame).save(folder / f"{index:05d}.jpg", quality=100, subsampling=0)
    assert fed["files"] == {p.name: p.read_bytes() for p in sorted(folder.iterdir())}
    assert not fed["folder"].exists()

    expected, propagated = official_run(segmenter_config, folder, first_mask)
    assert [frame for frame, _, _ in results] == list(range(FRAMES))
    for frame, mask, logits in results:
        assert mask.shape == logits.shape == (HEIGHT, WIDTH) and mask.dtype == bool and logits.dtype == np.float32
        np.testing.assert_array_equal(logits, expected[frame], err_msg=f"frame {frame}")
        np.testing.assert_array_equal(mask, logits > 0)
        assert 0 < mask.sum() < mask.size, f"frame {frame}: an empty or full mask compares nothing"
    # the correction changed frame CORRECTED's mask (so frames after it ran from a corrected memory)
    assert ((propagated > 0) != results[CORRECTED][1]).sum() > 0
    # frame 0 is SAM 2's copy of the given mask
    assert (results[0][1] == first_mask).mean() > 0.95
    # the corrector saw every later frame once, its image and the propagated mask
    assert [frame for frame, _, _ in calls] == [1, 2, 3]
    for frame, image, mask in calls:
        np.testing.assert_array_equal(image, frames[frame])
        np.testing.assert_array_equal(mask, (propagated if frame == CORRECTED else expected[frame]) > 0)


def test_errors_name_the_problem_and_the_fix(segmenter_config, tmp_path):
    with pytest.raises(UsageError, match="track.engine=sam2_video .* needs segmenter.backend=sam2 "
                                         r"\(this config has segmenter.backend=classical\)"):
        Sam2VideoEngine.from_config(Config(segmenter=SegmenterConfig(backend="classical")))
    missing = tmp_path / "sam2.1_hiera_large.pt"
    with pytest.raises(UsageError, match=f"checkpoint '{re.escape(str(missing))}' does not exist; download "
                                         r"sam2.1_hiera_large.pt \(model_type hiera_l\)"):
        Sam2VideoEngine.from_config(Config(segmenter=SegmenterConfig(backend="sam2", model_type="hiera_l",
                                                                     checkpoint=str(missing))))
    # a checkpoint without the memory weights the video predictor needs: refused, not half loaded
    state = torch.load(segmenter_config.checkpoint, weights_only=True)["model"]
    partial = tmp_path / "no_memory.pt"
    torch.save({"model": {k: v for k, v in state.items() if not k.startswith("memory_attention.")}}, partial)
    with pytest.raises(UsageError, match=f"checkpoint '{re.escape(str(partial))}' is incompatible with model_type "
                                         r"'hiera_tiny_random': \d+ missing keys \(e.g. memory_attention\."):
        Sam2VideoEngine.from_config(Config(segmenter=SegmenterConfig(backend="sam2", model_type="hiera_tiny_random",
                                                                     checkpoint=str(partial))))


def test_bad_clips_and_corrections_are_refused(segmenter_config):
    engine = Sam2VideoEngine.from_config(Config(segmenter=segmenter_config))
    frames, first_mask = clip()
    with pytest.raises(InputError, match=r"frames\[2\]: is 50x40 pixels but frames\[0\] is 56x40"):
        next(engine.propagate([*frames[:2], frames[2][:, :50], frames[3]], first_mask))
    with pytest.raises(InputError, match="first_mask: has no foreground pixels"):
        next(engine.propagate(frames, np.zeros_like(first_mask)))
    with pytest.raises(InputError, match="first_mask: is 56x39 pixels but its image is 56x40"):
        next(engine.propagate(frames, first_mask[1:]))
    points, labels = check_correction(([[1, 2]], [1]), 3, (WIDTH, HEIGHT))
    assert points.dtype == np.float32 and points.shape == (1, 2) and labels.dtype == np.int32
    assert len(check_correction(([], []), 3, (WIDTH, HEIGHT))[0]) == 0
    for bad in ([[1, 2]], ([[1, 2]], [2]), ([[1, 2], [3, 4]], [1]), ([[60, 2]], [1]), ([[np.nan, 2]], [0])):
        with pytest.raises(ValueError, match="frame 3"):
            check_correction(bad, 3, (WIDTH, HEIGHT))
