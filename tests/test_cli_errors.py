"""User mistakes at the command line (issue 10, items 2, 4, 5 and 7): each is one line on stderr naming the
key and the problem, exit status 2, no traceback, and nothing created. The commands run as a user runs
them (`lapa.cli.main` is the console script's body; one test starts the real `lapa` executable)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from lapa import cli
from pair_shards import IMAGE_SIZE, make_pair_shards

LAPA = str(Path(sys.executable).with_name("lapa"))


def _listing(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


@pytest.fixture
def workdir(tmp_path, monkeypatch) -> Path:
    """An empty working directory (default output paths such as runs/... are relative to it)."""
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("pairs")
    make_pair_shards(root, num_shards=1, pairs_per_shard=8)
    return root


def _fails(argv: list[str], capsys, root: Path, *expected: str) -> str:
    """Runs `lapa argv`: status 2, one line on stderr holding every `expected` text, nothing new under `root`."""
    before = _listing(root)
    assert cli.main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert err.startswith(f"lapa {argv[0]}")
    for text in expected:
        assert text in err, (text, err)
    assert "Traceback" not in err and "weights_only" not in err
    assert _listing(root) == before, "a failed command must create nothing"
    return err


def test_unknown_experiment_fails_at_start_listing_the_valid_ones(workdir, capsys):
    err = _fails(["train-laq", "experiment=laq_dbg"], capsys, workdir, "experiment=laq_dbg",
                 "did you mean experiment=laq_debug?", "laq_full")
    assert all(name in err.split("valid options: ")[1] for name in ("laq_debug", "laq_1gpu", "laq_full"))
    _fails(["train-laq", "model=laq_tin"], capsys, workdir, "model=laq_tin", "laq_tiny")
    _fails(["sim", "generate", "sim=hdd", "output=x"], capsys, workdir, "sim=hdd", "randomized")


def test_unknown_key_names_the_nearest_known_key(workdir, capsys):
    for override in ("data.batchsize=4", "+data.batchsize=4"):
        err = _fails(["train-laq", override], capsys, workdir,
                     "unknown key data.batchsize; did you mean data.batch_size?")
        assert "+data" not in err  # never Hydra's advice to append the key
    _fails(["train-laq", "batch_size=4"], capsys, workdir, "unknown key batch_size; did you mean data.batch_size?")
    _fails(["ingest", "input=a", "output=b", "sizee=3"], capsys, workdir, "unknown key sizee; did you mean size?")


def test_missing_required_value_says_which_key_with_an_example(workdir, capsys):
    err = _fails(["ingest", "output=shards"], capsys, workdir, "missing value for input", "input=",
                 "e.g. lapa ingest input=")
    assert "Structured config" not in err and "mandatory" not in err
    _fails(["label", f"shards={workdir}"], capsys, workdir, "missing value for checkpoint",
           "e.g. lapa label checkpoint=")


def test_train_laq_without_data_names_the_key(workdir, capsys):
    _fails(["train-laq", "experiment=laq_debug"], capsys, workdir,
           "data.train_shards=data/frames/train: no such shards", "lapa ingest")


def test_missing_or_wrong_inputs_are_one_line_and_create_nothing(workdir, shards, laq_checkpoint, capsys):
    out = "out/x"
    _fails(["label", "checkpoint=missing.pt", f"shards={shards}", f"output_dir={out}"], capsys, workdir,
           "checkpoint=missing.pt: does not exist")
    _fails(["eval-laq", "checkpoint=missing.pt", f"shards={shards}", f"output_dir={out}"], capsys, workdir,
           "checkpoint=missing.pt: does not exist")
    shard = sorted(shards.glob("*.tar"))[0]
    _fails(["eval-laq", f"checkpoint={shard}", f"shards={shards}", f"output_dir={out}"], capsys, workdir,
           f"checkpoint={shard}: a tar archive")
    _fails(["label", f"checkpoint={laq_checkpoint}", "shards=no/such/folder", f"output_dir={out}"], capsys,
           workdir, "shards=no/such/folder: no such shards")
    _fails(["label", f"checkpoint={laq_checkpoint}", f"shards={workdir}", f"output_dir={out}"], capsys,
           workdir, f"shards={workdir}: no .tar shards in this folder")
    big = 2 * IMAGE_SIZE
    _fails(["eval-laq", f"checkpoint={laq_checkpoint}", f"shards={shards}", f"output_dir={out}",
            f"image_size={big}"], capsys, workdir, f"image_size={big}", f"takes {IMAGE_SIZE}-px frames")
    _fails(["ingest", "input=no/videos", f"output={out}"], capsys, workdir, "input='no/videos': does not exist")
    _fails(["convert-laq", "laq_openx.pt", "converted.pt"], capsys, workdir, "src='laq_openx.pt': does not exist")


def test_the_console_script_exits_2_with_one_line(workdir):
    proc = subprocess.run([LAPA, "label", "checkpoint=missing.pt", "shards=missing", "output_dir=out"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip() == ("lapa label: shards=missing: no such shards; expected a folder, glob or .tar "
                                   "of frame-pair shards (write them with `lapa ingest`)")
    assert not (workdir / "out").exists()


def test_sim_help_lists_its_subcommands(capsys):
    assert cli.main(["sim", "--help"]) == 0
    out = capsys.readouterr().out
    assert "sim generate" in out and "sim eval" in out
    assert cli.main(["sim"]) == 0
    assert cli.main(["sim", "frobnicate"]) == 2


def test_command_help_explains_each_key_in_one_line(capsys):
    assert cli.main(["ingest", "--help"]) == 0
    lines = capsys.readouterr().out.splitlines()
    offset = [ln for ln in lines if ln.strip().startswith("offset_seconds: 0.3")]
    assert len(offset) == 1 and "# time between the two frames" in offset[0]
    assert any(ln.strip().startswith("input: ???") and "#" in ln for ln in lines)
    assert cli.main(["train-laq", "--help"]) == 0
    out = capsys.readouterr().out
    assert "data.batch_size: 32" in out and "overwrite: false" in out


@pytest.mark.parametrize("name", ["ingest", "train-laq", "label", "eval-laq", "convert-laq", "demo"])
def test_every_stage1_key_has_a_description(name):
    from lapa.config import field_docs

    docs = field_docs(cli._resolve(cli.COMMANDS[name].schema))
    leaves = [k for k in docs if not any(other.startswith(k + ".") for other in docs)]
    undocumented = [k for k in leaves if not docs[k] and k != "data.episodes_seed"]  # Stage 3's key
    assert not undocumented, f"lapa {name} --help shows these keys without a description: {undocumented}"
