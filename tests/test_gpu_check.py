"""benchmarks/gpu_check.py: the CPU smoke run end to end (JSON rows for every component and stage),
and its pure helpers and failure handling (OOM, refused autocast, usage errors) without a GPU."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "gpu_check.py"
sys.path.insert(0, str(ROOT / "benchmarks"))
import gpu_check  # noqa: E402

STAGES = ["pipeline 1 initial prompts", "pipeline 2 train", "pipeline 3 optimize", "pipeline 4 segmentation"]


def run_check(tmp_path: Path, *extra: str) -> tuple[dict, str]:
    """Run the script on the CPU (small mode, one thread) → (the --out JSON, stdout)."""
    out = tmp_path / "check.json"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    done = subprocess.run([sys.executable, str(SCRIPT), "--device", "cpu", "--threads", "1", "--out", str(out),
                           *extra], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(out.read_text()), done.stdout


def measured(row: dict) -> bool:
    seconds = row["seconds_per_image"]
    return seconds is not None and math.isfinite(seconds) and seconds > 0


def check_model_rows(rows: list) -> None:
    """Features, and each segmenter's embed and decode (batches 1 and 8) in fp32, measured; the bf16
    autocast rows measured or, where this torch refuses bf16 on the CPU, saying so."""
    by_key = {(r["component"], r["precision"], r["batch"]): r for r in rows}
    expected = [("features", 1)] + [(f"{backend} {what}", batch) for backend in ("sam", "sam2", "sam_hq")
                                    for what, batch in (("embed", 1), ("decode", 1), ("decode", 8))]
    for component, batch in expected:
        fp32 = by_key[(component, "fp32", batch)]
        assert measured(fp32), fp32
        assert fp32["peak_memory_bytes"] > 0
    refused = gpu_check.autocast_refusal("cpu", torch.bfloat16)
    for component, batch in expected:
        row = by_key.get((component, "bf16", batch))
        if refused:
            assert any(r["component"] == component and r["precision"] == "bf16" and "not supported" in r["note"]
                       for r in rows)
        else:
            assert row is not None and measured(row), row
    assert not any(r["note"].startswith("error") for r in rows)


def test_cpu_smoke_run_with_the_pipeline(tmp_path):
    report, stdout = run_check(tmp_path, "--train-steps", "8")
    assert report["device"] == "cpu" and report["settings"]["small"] is True
    assert report["settings"]["decode_batches"] == [1, 8] and report["memory_kind"] == "process peak RSS"
    rows = report["rows"]
    check_model_rows(rows)
    assert [r["component"] for r in rows if r["component"].startswith("pipeline")] == STAGES
    for row in (r for r in rows if r["component"].startswith("pipeline")):
        assert measured(row) and row["model"] == "handcrafted + classical", row
        assert row["batch"] == (3 if row["component"] == "pipeline 2 train" else 2)
        assert row["note"].endswith(("s for the stage", "s for the stage, 8 steps"))
    # stdout: the header line, then the Markdown table, one line per row
    lines = stdout.strip().splitlines()
    assert lines[0].startswith(f"gpoa gpu check: torch {torch.__version__} | device cpu")
    assert lines[2].startswith("| component | model | precision | batch | seconds/image | peak memory")
    assert len(lines) == 4 + len(rows) and all(line.startswith("| ") for line in lines[4:])


# ----- helpers and failure handling, in process -------------------------------------------------------
def test_settings_default_to_small_on_the_cpu_and_real_sizes_otherwise():
    small = gpu_check.resolve_settings("cpu")
    assert small.small and small.repeats == 1 and small.decode_batches == (1, 8)
    assert small.segmenter_models == (("sam", "vit_tiny_random"), ("sam2", "hiera_tiny_random"),
                                      ("sam_hq", "vit_tiny_random")) and small.dinov2_size == 112
    assert small.pipeline_segmenters == small.segmenter_models and small.missing == ()
    assert small.dinov2_model == "vit_small_patch14_dinov2"
    real = gpu_check.resolve_settings("cpu", small=False)
    assert real.segmenter_models == (("sam", "vit_l"), ("sam", "vit_h"), ("sam2", "hiera_l"), ("sam2", "hiera_t"),
                                     ("sam_hq", "vit_l"))
    assert real.decode_batches == (1, 8, 32, 128)
    assert real.dinov2_model == "vit_large_patch14_dinov2" and real.dinov2_size == 560 and real.repeats == 5
    # the --real pipeline runs the paper's size of each backend
    assert real.pipeline_segmenters == (("sam", "vit_l"), ("sam2", "hiera_l"), ("sam_hq", "vit_l"))
    only = gpu_check.resolve_settings("cpu", small=False, segmenters=["sam2"])
    assert only.segmenter_models == (("sam2", "hiera_l"), ("sam2", "hiera_t")) and only.segmenters == ("sam2",)
    auto = gpu_check.resolve_settings("auto")
    assert auto.device in ("cuda", "mps", "cpu") and auto.small == (auto.device == "cpu")


def test_usage_errors_exit_2(capsys):
    assert gpu_check.main(["--device", "cpu", "--repeats", "0"]) == 2
    assert "--repeats must be at least 1" in capsys.readouterr().err
    assert gpu_check.main(["--device", "tpu"]) == 2
    assert "unknown device 'tpu'" in capsys.readouterr().err
    assert gpu_check.main(["--device", "cpu", "--segmenters", "sam,sam3"]) == 2
    assert "--segmenters takes a comma-separated list of sam, sam2, sam_hq, got 'sam,sam3'" in capsys.readouterr().err
    if not torch.cuda.is_available():
        assert gpu_check.main(["--device", "cuda"]) == 2


def test_table_and_byte_formatting():
    assert gpu_check.format_bytes(None) == "-" and gpu_check.format_bytes(512) == "512 B"
    assert gpu_check.format_bytes(1536) == "1.50 KiB" and gpu_check.format_bytes(3 * 1024 ** 4) == "3072.00 GiB"
    rows = [gpu_check.Row("sam decode", "sam vit_h", "bf16", 128, 0.0123456, 2 * 1024 ** 3),
            gpu_check.Row("sam embed", "sam vit_h", "fp32", 1, None, None, "OOM | really")]
    table = gpu_check.format_table(rows, "cuda max allocated").splitlines()
    assert table[0] == ("| component | model | precision | batch | seconds/image | peak memory (cuda max allocated) "
                        "| note |")
    assert table[1] == "|---|---|---|---:|---:|---:|---|"
    assert table[2] == "| sam decode | sam vit_h | bf16 | 128 | 0.01235 | 2.00 GiB |  |"
    assert table[3] == "| sam embed | sam vit_h | fp32 | 1 | - | - | OOM / really |"


def test_autocast_helpers_on_the_cpu():
    assert gpu_check.autocast_dtype("cpu") == torch.bfloat16
    assert gpu_check.precision_name(torch.float16) == "fp16" and gpu_check.precision_name(torch.float64) == "float64"
    # torch turns an unsupported autocast dtype off with a warning: reported, not raised
    assert "not supported on cpu" in gpu_check.autocast_refusal("cpu", torch.float64)
    with gpu_check.precision_context("cpu", torch.float32):
        assert not torch.is_autocast_enabled("cpu")


@pytest.fixture
def check(tmp_path) -> gpu_check.Check:
    return gpu_check.Check(gpu_check.resolve_settings("cpu"), tmp_path)


def test_out_of_memory_and_errors_become_rows(check, capsys):
    def out_of_memory():
        raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")

    def broken():
        raise ValueError("bad shapes\nsecond line")

    assert not check.measure("sam embed", "sam vit_h", "fp32", 1, out_of_memory)
    assert not check.measure("sam decode", "sam vit_h", "fp32", 8, broken)
    assert check.measure("features", "noop", "fp32", 1, lambda: None)
    oom, error, fine = check.rows
    assert oom.note == "OOM" and oom.seconds_per_image is None and not oom.failed
    assert error.note == "error: ValueError: bad shapes" and error.failed
    assert fine.seconds_per_image is not None and fine.seconds_per_image >= 0 and fine.note == ""
    assert check.load("sam embed", "sam vit_h", out_of_memory) is None
    assert check.rows[-1].note == "OOM while loading the model"
    assert "ValueError: bad shapes" in capsys.readouterr().err
    # the CPU and MPS allocators raise a plain RuntimeError
    assert gpu_check.is_out_of_memory(RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried ..."))
    assert gpu_check.is_out_of_memory(RuntimeError("MPS backend out of memory (MPS allocated: 1 GB)"))
    assert not gpu_check.is_out_of_memory(RuntimeError("mat1 and mat2 shapes cannot be multiplied"))


def test_refused_autocast_gives_rows_not_a_crash(check):
    class NeverCalled:
        def extract(self, image):
            raise AssertionError("a refused precision must not be timed")

        embed = decode = extract

    check.refusal = "bf16 autocast is not supported on cpu: test"
    check.time_features(NeverCalled(), "dinov2", torch.bfloat16)
    check.time_segmenter(NeverCalled(), "sam2", "sam2 hiera_l", torch.bfloat16)
    assert [(r.component, r.precision, r.note) for r in check.rows] == [
        ("features", "bf16", check.refusal), ("sam2 embed", "bf16", check.refusal),
        ("sam2 decode", "bf16", check.refusal)]


def test_a_backend_whose_package_is_missing_gets_a_skipped_row(monkeypatch, tmp_path):
    monkeypatch.setattr(gpu_check, "installed", lambda backend: backend != "sam_hq")
    settings = gpu_check.resolve_settings("cpu", small=False)
    assert settings.missing == ("sam_hq",) and all(b != "sam_hq" for b, _ in settings.segmenter_models)
    check = gpu_check.Check(settings, tmp_path)
    check.not_installed("sam_hq")
    row = check.rows[0]
    assert row.component == "sam_hq embed" and row.seconds_per_image is None and not row.failed
    assert row.note == "skipped: the package 'segment_anything_hq' is not installed (pip install '.[hq]')"
