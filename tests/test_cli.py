"""The `lapa` command line: dispatch, --help, overrides, and config errors that name the key."""

from __future__ import annotations

import subprocess
import sys

import pytest

from lapa import cli


def test_top_level_help_lists_every_command(capsys):
    assert cli.main(["--help"]) == 0
    out = capsys.readouterr().out
    for name, cmd in cli.COMMANDS.items():
        assert name in out and cmd.summary in out


def test_unknown_command_is_an_error(capsys):
    assert cli.main(["no-such-command"]) == 2
    assert "unknown command 'no-such-command'" in capsys.readouterr().err


@pytest.mark.parametrize("name", sorted(cli.COMMANDS))
def test_every_command_has_help_and_a_valid_default_config(name, capsys):
    argv = name.split()
    assert cli.main([*argv, "--help"]) == 0
    out = capsys.readouterr().out
    assert f"usage: lapa {name}" in out
    assert "Default config" in out
    # Every registered target and schema resolves (a typo here would only show at run time).
    cmd = cli.COMMANDS[name]
    assert callable(cli._resolve(cmd.target))
    assert cli._resolve(cmd.schema).__name__ == cmd.schema.split(":")[1]


def test_cfg_prints_resolved_overrides(capsys):
    assert cli.main(["ingest", "input=/videos", "output=/shards", "size=128", "--cfg"]) == 0
    out = capsys.readouterr().out
    assert "size: 128" in out and "input: /videos" in out


def test_bad_value_names_key_and_value(capsys):
    assert cli.main(["ingest", "input=/videos", "output=/shards", "size=-3"]) == 2
    err = capsys.readouterr().err
    assert "size=-3" in err


def test_unknown_key_is_rejected(capsys):
    assert cli.main(["ingest", "input=/videos", "output=/shards", "sizee=3"]) == 2
    assert "sizee" in capsys.readouterr().err


def test_wrong_type_is_rejected(capsys):
    assert cli.main(["ingest", "input=/videos", "output=/shards", "size=big"]) == 2
    assert "size" in capsys.readouterr().err


def test_unknown_flag_is_rejected(capsys):
    assert cli.main(["ingest", "--frobnicate"]) == 2
    assert "--frobnicate" in capsys.readouterr().err


def test_positional_arguments_fill_declared_keys(capsys):
    assert cli.main(["convert-laq", "in.pt", "out.pt", "--cfg"]) == 0
    out = capsys.readouterr().out
    assert "src: in.pt" in out and "dst: out.pt" in out
    assert cli.main(["ingest", "stray", "--cfg"]) == 2


def test_console_script_runs_in_a_fresh_process():
    result = subprocess.run([sys.executable, "-m", "lapa.cli", "--help"], capture_output=True, text=True,
                            check=False)
    assert result.returncode == 0
    assert "train-laq" in result.stdout
