"""The config tree: defaults, YAML files, --set overrides, type checks, saving, and the shared command line."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch

from gpoa.cli import config_from_args, run_stage, stage_parser
from gpoa.config import Config, load_config, resolve_device, save_config
from gpoa.errors import UsageError
from gpoa.runtime import StageReport, content_seed, stable_seed

REPO = Path(__file__).resolve().parents[1]


def test_defaults():
    cfg = load_config()
    assert cfg == Config()
    assert cfg.features.backend == "handcrafted" and cfg.features.working_size == 560
    assert cfg.features.patch_size == 14
    assert cfg.segmenter.backend == "classical"
    assert cfg.matching.foreground_fraction == 0.5 and cfg.matching.mutual_nearest is False
    assert cfg.device == "auto" and cfg.seed == 0
    assert cfg.env.graph_weights == [5.0, 5.0, 1.0, 1.0, 1.0]
    assert cfg.data == ["data/demo/membrane"] and cfg.workspace == "outputs"
    assert cfg.train.bank_capacity == 0 and cfg.optimize.gates()[0] == 0.0 and cfg.optimize.oracle is False
    # the method as measured: placement prompts, spread candidates, the shield, the prior, the gate
    assert cfg.matching.method == "placement" and cfg.graph.extra_positive == cfg.graph.extra_negative == 16
    assert cfg.env.shield == 0.02 and cfg.env.harm_weight == 2.0 and cfg.agent.agreement_prior == 1.0
    assert cfg.optimize.gates() == (0.0, 0.5) and cfg.train.total_steps == 12000


def test_the_demo_config_sets_no_method_setting_of_its_own():
    # make demo's configuration is the defaults with its data: what was measured is what Config() gives
    demo = load_config(REPO / "configs" / "demo.yaml")
    assert demo.data == ["data/demo/membrane", "data/demo/objects"]
    assert dataclasses.replace(demo, data=Config().data) == Config()


def test_defaults_are_not_shared_between_configs():
    first, second = load_config(), load_config()
    first.env.graph_weights.append(9.0)
    first.dqn.batch_size = 1
    assert second.env.graph_weights == [5.0, 5.0, 1.0, 1.0, 1.0] and second.dqn.batch_size == 128


def test_yaml_file(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("data: /data/cells\nseed: 3\nfeatures:\n  backend: dinov2\n  working_size: 448\n"
                    "matching:\n  mutual_nearest: true\n  foreground_fraction: 1\n"
                    "env:\n  graph_weights: [1, 2, 3, 4, 5]\n")
    cfg = load_config(path)
    assert cfg.data == ["/data/cells"] and cfg.seed == 3  # one folder is a list of one
    assert cfg.features.backend == "dinov2" and cfg.features.working_size == 448
    assert cfg.features.patch_size == 14  # untouched keys keep their defaults
    assert cfg.matching.mutual_nearest is True
    assert cfg.matching.foreground_fraction == 1.0 and isinstance(cfg.matching.foreground_fraction, float)
    assert cfg.env.graph_weights == [1, 2, 3, 4, 5]


def test_empty_yaml_file_gives_defaults(tmp_path):
    path = tmp_path / "empty.yaml"
    path.write_text("# nothing set\n")
    assert load_config(path) == Config()


@pytest.mark.parametrize("name", ["demo.yaml", "sam_dinov2.yaml"])
def test_shipped_configs_load(name):
    cfg = load_config(REPO / "configs" / name)
    assert cfg.features.working_size % cfg.features.patch_size == 0


def test_set_overrides_of_every_type():
    cfg = load_config(overrides=[
        "dqn.batch_size=64",  # int
        "dqn.learning_rate=3e-4",  # float
        "segmenter.beta=8",  # int accepted for a float
        "matching.mutual_nearest=true",  # bool
        "segmentation.overlays=off",
        "segmenter.backend=sam",  # str
        "segmentation.prompts=a_indices,b_indices",  # list, comma separated
        "env.graph_weights=[1.5, 2, 0, 0, 1]",  # list, YAML flow syntax
        "data=/tmp/x=y",  # only the first '=' separates key and value
        "seed=7",
    ])
    assert cfg.dqn.batch_size == 64 and isinstance(cfg.dqn.batch_size, int)
    assert cfg.dqn.learning_rate == pytest.approx(3e-4)
    assert cfg.segmenter.beta == 8.0 and isinstance(cfg.segmenter.beta, float)
    assert cfg.matching.mutual_nearest is True
    assert cfg.segmentation.overlays is False
    assert cfg.segmenter.backend == "sam"
    assert cfg.segmentation.prompts == ["a_indices", "b_indices"]
    assert cfg.env.graph_weights == [1.5, 2, 0, 0, 1]
    assert cfg.data == ["/tmp/x=y"]
    assert cfg.seed == 7


@pytest.mark.parametrize("value", ["010", "yes", "off", "null", "2024-01-01", "1e3", "[a]"])
def test_set_string_keys_keep_the_text_as_typed(value):
    # a run name or path that YAML would read as a number, bool, null or date stays the same text
    assert load_config(overrides=[f"train.run={value}"]).train.run == value


def test_set_empty_values():
    cfg = load_config(overrides=["train.run=", "segmentation.prompts="])
    assert cfg.train.run == "" and cfg.segmentation.prompts == []


def test_yaml_then_set_order(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("seed: 3\ndqn:\n  batch_size: 32\n")
    cfg = load_config(path, ["dqn.batch_size=16", "dqn.batch_size=8"])
    assert cfg.seed == 3 and cfg.dqn.batch_size == 8  # the last --set wins


@pytest.mark.parametrize("override, key", [
    ("nonsense=1", "nonsense"),
    ("dqn.batchsize=1", "dqn.batchsize"),
    ("features.backend.name=x", "features.backend"),
])
def test_unknown_or_misplaced_key_names_it(override, key):
    with pytest.raises(UsageError, match=key.replace(".", r"\.")):
        load_config(overrides=[override])


def test_unknown_key_in_yaml_names_it(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("matching:\n  mutual_neighbours: true\n")
    with pytest.raises(UsageError, match=r"unknown config key 'matching\.mutual_neighbours'"):
        load_config(path)


@pytest.mark.parametrize("override, words", [
    ("dqn.batch_size=abc", "expects an integer"),
    ("dqn.batch_size=1.5", "expects an integer"),
    ("env.max_nodes=true", "expects an integer"),
    ("dqn.learning_rate=fast", "expects a number"),
    ("matching.mutual_nearest=maybe", "expects true or false"),
    ("features=dinov2", "must be a mapping"),
    ("env.graph_weights=[1, 2", "expects a list"),
    ("no_equals_sign", "key=value"),
])
def test_wrong_type_is_a_usage_error(override, words):
    with pytest.raises(UsageError, match=words) as info:
        load_config(overrides=[override])
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("text, words", [
    ("dqn:\n  batch_size: true\n", "dqn.batch_size"),
    ("env:\n  max_nodes: 1.5\n", "env.max_nodes"),
    ("segmenter:\n  backend: [sam]\n", "segmenter.backend"),
    ("env:\n  graph_weights: 5\n", "env.graph_weights"),
    ("matching: 3\n", "matching"),
    ("seed: [unclosed\n", "not valid YAML"),
])
def test_wrong_yaml_values_are_usage_errors(tmp_path, text, words):
    path = tmp_path / "c.yaml"
    path.write_text(text)
    with pytest.raises(UsageError, match=words):
        load_config(path)


def test_the_agreement_prior_needs_the_lookahead():
    assert load_config(overrides=["agent.agreement_prior=1.0"]).agent.agreement_prior == 1.0
    with pytest.raises(UsageError, match=r"agent\.agreement_prior.*env\.lookahead"):
        load_config(overrides=["agent.agreement_prior=1.0", "env.lookahead=false"])


def test_missing_config_file_is_a_usage_error(tmp_path):
    with pytest.raises(UsageError, match="does not exist"):
        load_config(tmp_path / "nope.yaml")


def test_save_then_load_round_trip(tmp_path):
    cfg = load_config(overrides=["dqn.learning_rate=3e-4", "segmenter.backend=sam", "train.run=010",
                                 "segmentation.prompts=x,y", "matching.mutual_nearest=yes", "seed=11"])
    path = tmp_path / "out" / "config.yaml"
    save_config(cfg, path)
    assert load_config(path) == cfg
    assert [p.name for p in path.parent.iterdir()] == ["config.yaml"]  # atomic: no temporary files left
    save_config(Config(), path)  # replaces the earlier file
    assert load_config(path) == Config()


# ----- the shared command line -----------------------------------------------------------------


def test_config_from_args():
    parser = stage_parser("stage.py", "test stage")
    args = parser.parse_args(["--data", "data/x", "--set", "dqn.batch_size=32", "--set", "segmenter.backend=sam",
                              "--device", "cpu", "--seed", "5", "--overwrite"])
    cfg = config_from_args(args, ["segmentation.out=results/x"])
    assert cfg.data == ["data/x"] and cfg.device == "cpu" and cfg.seed == 5 and cfg.overwrite is True
    assert cfg.dqn.batch_size == 32 and cfg.segmenter.backend == "sam"
    assert cfg.segmentation.out == "results/x"


def test_data_is_repeatable_and_never_split_at_commas():
    parser = stage_parser("stage.py", "test stage")
    cfg = config_from_args(parser.parse_args(["--data", "data/a", "--data", "data/b,c"]))
    assert cfg.data == ["data/a", "data/b,c"]
    assert config_from_args(parser.parse_args([])).data == Config().data  # the default without --data
    cfg = load_config(overrides=["data=[x, y]", "workspace=/tmp/work", "train.bank_capacity=16",
                                 "optimize.stop_margin=0.05", "optimize.oracle=true"])
    assert cfg.data == ["x", "y"] and cfg.workspace == "/tmp/work" and cfg.train.bank_capacity == 16
    assert cfg.optimize.stop_margin == pytest.approx(0.05) and cfg.optimize.oracle is True


@pytest.mark.parametrize("key", ["train.bank_capacity", "optimize.stop_margin"])
def test_new_keys_must_not_be_negative(key):
    with pytest.raises(UsageError, match=f"'{key}' must not be negative"):
        load_config(overrides=[f"{key}=-1"])


def test_config_from_args_with_config_file_and_no_options(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("seed: 4\ndata: data/from_file\n")
    parser = stage_parser("stage.py", "test stage")
    cfg = config_from_args(parser.parse_args(["--config", str(path)]))
    assert cfg.seed == 4 and cfg.data == ["data/from_file"] and cfg.overwrite is False
    cfg = config_from_args(parser.parse_args(["--config", str(path), "--data", "data/y"]))
    assert cfg.data == ["data/y"]  # the command line overrides the file


def test_run_stage_unknown_key_exits_2_with_one_line(capsys):
    calls = []
    code = run_stage(stage_parser("stage.py", "test stage"), lambda cfg, device: calls.append(cfg),
                     ["--set", "dqn.nonsense=3"])
    assert code == 2 and calls == []
    captured = capsys.readouterr()
    assert captured.out == ""
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1
    assert lines[0].startswith("stage.py: error: ") and "dqn.nonsense" in lines[0]


def test_run_stage_missing_config_file_exits_2(capsys, tmp_path):
    code = run_stage(stage_parser("stage.py", "test stage"), lambda cfg, device: None,
                     ["--config", str(tmp_path / "nope.yaml")])
    assert code == 2
    assert "nope.yaml" in capsys.readouterr().err


def test_run_stage_passes_config_and_device_and_maps_failures_to_exit_1(capsys):
    seen = []

    def stage(cfg, device):
        seen.append((cfg.seed, cfg.data, device))
        report = StageReport("test")
        report.done.append("a")
        return report

    assert run_stage(stage_parser("stage.py", "t"), stage, ["--device", "cpu", "--seed", "9", "--data", "d"]) == 0
    assert seen == [(9, ["d"], "cpu")]
    assert "1 done" in capsys.readouterr().out

    def failing(cfg, device):
        report = StageReport("test")
        report.fail("b.png", "unreadable")
        return report, "other results"

    assert run_stage(stage_parser("stage.py", "t"), failing, ["--device", "cpu"]) == 1
    assert "1 failed" in capsys.readouterr().err


def test_stage_reports_merge_and_seeds_are_stable(capsys):
    first, second = StageReport("stage"), StageReport("stage")
    first.done.append("a/x")
    second.skipped.append(("b/y", "exists"))
    second.fail("b/z", "unreadable")
    assert "FAILED b/z: unreadable" in capsys.readouterr().err
    first.merge(second)
    assert (first.done, first.skipped, first.failed) == (["a/x"], [("b/y", "exists")], [("b/z", "unreadable")])
    assert first.exit_code == 1 and "1 done, 1 kept from an earlier run, 1 failed" in first.summary()
    assert stable_seed(0, "split", "cells") == stable_seed(0, "split", "cells") != stable_seed(0, "split", "dogs")
    assert 0 <= stable_seed("x") < 2 ** 32


def test_content_seeds_follow_the_pixels_not_the_name():
    image = np.arange(2 * 3 * 3, dtype=np.uint8).reshape(2, 3, 3)
    assert content_seed(0, "placement", image) == content_seed(0, "placement", image.copy())
    changed = image.copy()
    changed[0, 0, 0] += 1
    assert content_seed(0, "placement", changed) != content_seed(0, "placement", image)
    assert content_seed(1, "placement", image) != content_seed(0, "placement", image)
    assert content_seed(0, "ideal", image) != content_seed(0, "placement", image)
    assert content_seed(0, "placement", image.reshape(3, 2, 3)) != content_seed(0, "placement", image)


def test_run_stage_raises_a_usage_error_from_the_stage_as_exit_2(capsys):
    def stage(cfg, device):
        raise UsageError("dataset folder 'x' does not exist")

    assert run_stage(stage_parser("stage.py", "t"), stage, ["--device", "cpu"]) == 2
    assert capsys.readouterr().err.strip() == "stage.py: error: dataset folder 'x' does not exist"


# ----- devices ---------------------------------------------------------------------------------------


@pytest.mark.skipif(torch.cuda.is_available(), reason="'auto' picks cuda on a machine with a GPU")
def test_resolve_device_auto_is_cpu_without_accelerator():
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        pytest.skip("'auto' picks mps on this machine")
    assert resolve_device("auto") == "cpu"


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_resolve_device_auto_is_cuda_with_a_gpu():
    assert resolve_device("auto") == "cuda"


def test_resolve_device_explicit_names():
    assert resolve_device("cpu") == "cpu"
    for name in ("tpu", "gpu", "CPU"):
        with pytest.raises(UsageError, match="unknown device"):
            resolve_device(name)


@pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA is available here")
def test_resolve_device_cuda_without_cuda_is_a_usage_error():
    with pytest.raises(UsageError, match="CUDA is not available"):
        resolve_device("cuda:0")
