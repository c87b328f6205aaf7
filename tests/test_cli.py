"""The installed ``gpoa`` command: its subcommands, the scripts that stay as thin wrappers, usage errors."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import DEMO_CONFIG

import Generate_initial_prompts
from gpoa import cli


def test_help_lists_every_command_and_a_wrong_command_is_exit_2(capsys):
    assert cli.main(["--help"]) == 0
    out = capsys.readouterr().out
    for name in ("prompts", "train", "optimize", "segment", "convert", "reproduce", "demo-data", "corpus"):
        assert f"  {name} " in out
    assert cli.main([]) == 2 and "usage: gpoa COMMAND" in capsys.readouterr().err
    assert cli.main(["segmnet"]) == 2
    assert "unknown command 'segmnet'; choose one of prompts, train" in capsys.readouterr().err


@pytest.mark.parametrize("name", list(cli.COMMANDS))
def test_every_command_has_its_help(name, capsys):
    with pytest.raises(SystemExit) as exc:
        cli.main([name, "--help"])
    assert exc.value.code == 0
    assert capsys.readouterr().out.startswith(f"usage: gpoa {name} ")


def test_gpoa_prompts_writes_what_the_stage_script_writes(demo_master, tmp_path, capsys):
    first, second = tmp_path / "a" / "membrane", tmp_path / "b" / "membrane"
    for copy in (first, second):
        shutil.copytree(demo_master / "membrane", copy, ignore=shutil.ignore_patterns("train_*"))
    assert cli.main(["prompts", "--config", str(DEMO_CONFIG), "--data", str(first)]) == 0
    assert Generate_initial_prompts.main(["--config", str(DEMO_CONFIG), "--data", str(second)]) == 0
    written = sorted(p.name for p in (first / "initial_indices").glob("*.json"))
    assert len(written) == 6
    for name in written:
        assert (json.loads((first / "initial_indices" / name).read_text())
                == json.loads((second / "initial_indices" / name).read_text()))
    # a usage error names the command it came from
    capsys.readouterr()
    assert cli.main(["prompts", "--data", str(tmp_path / "nowhere")]) == 2
    assert capsys.readouterr().err.startswith("gpoa prompts: error: data folder")


def test_gpoa_demo_data_writes_a_family(tmp_path, capsys):
    assert cli.main(["demo-data", "--out", str(tmp_path), "--train", "0", "--targets", "1",
                     "--families", "objects"]) == 0
    assert sorted(p.name for p in (tmp_path / "objects" / "target_image").iterdir()) == ["objects_000.png"]
    with pytest.raises(SystemExit) as exc:
        cli.main(["demo-data", "--out", str(tmp_path), "--families", "cells"])
    assert exc.value.code == 2 and "gpoa demo-data: error" in capsys.readouterr().err


def test_the_package_installs_the_command():
    command = shutil.which("gpoa", path=str(Path(sys.executable).parent))
    assert command, "the gpoa command is not installed next to this Python: pip install -e . (make setup does)"
    done = subprocess.run([command, "--version"], capture_output=True, text=True, check=True)
    assert done.stdout.strip().startswith("gpoa ")
