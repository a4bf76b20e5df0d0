"""The README and the docs as a newcomer reads them (issue 10, items 1 and 7): the README's Python example
runs as written, every `lapa` command of its tour composes a valid config, the presets between the CPU
debug and the 8-GPU paper configuration exist, and no link points outside the repository."""

from __future__ import annotations

import re
import shlex
import shutil
from pathlib import Path

import pytest

from lapa import cli
from lapa.config import load
from lapa.data.ingest import IngestConfig
from lapa.demo import DemoConfig
from lapa.laq.train import TrainLAQConfig
from pair_shards import make_pair_shards

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"


def _blocks(text: str, language: str) -> list[str]:
    return re.findall(rf"^```{language}\n(.*?)^```", text, re.M | re.S)


def _commands(block: str) -> list[list[str]]:
    """The `lapa ...` command lines of a bash block (continuations joined, comments dropped)."""
    joined = re.sub(r"\\\n\s*", " ", block)
    return [shlex.split(line, comments=True) for line in joined.splitlines() if line.startswith("lapa ")]


def test_readme_python_example_runs_as_written(tmp_path, monkeypatch, laq_checkpoint):
    (snippet,) = _blocks(README.read_text(), "python")
    (tmp_path / "runs/laq").mkdir(parents=True)
    shutil.copy(laq_checkpoint, tmp_path / "runs/laq/laq_final.pt")  # the tour's paths, a tiny model
    make_pair_shards(tmp_path / "runs/frames/val", num_shards=1, pairs_per_shard=8)
    monkeypatch.chdir(tmp_path)
    scope: dict = {}
    exec(compile(snippet, "README.md", "exec"), scope)  # noqa: S102 (the README's own example)
    assert scope["indices"].shape == (8, 4) and scope["predicted"].shape == scope["next_frame"].shape


def test_readme_tour_commands_compose(capsys):
    tour = [cmd for block in _blocks(README.read_text(), "bash") for cmd in _commands(block)]
    assert any(cmd[:2] == ["lapa", "train-laq"] for cmd in tour) and len(tour) >= 6
    for cmd in tour:
        assert cli.main([*cmd[1:], "--cfg"]) == 0, cmd
    capsys.readouterr()


def test_tour_recipe_is_the_measured_one():
    """The tour's pairs and episodes are those of the demo, whose evaluation passes (docs/laq.md): 0.3 s
    between the frames of a pair at the simulator's 10 fps is the demo's 3-frame offset."""
    text = README.read_text()
    demo = DemoConfig()
    assert f"episodes={demo.episodes} val_fraction={demo.val_fraction}" in text
    ingest = load("ingest", IngestConfig, ["input=a", "output=b"])
    assert ingest.offset is None and round(ingest.offset_seconds * 10) == demo.frame_offset


def test_presets_between_debug_and_paper():
    one = load("train_laq", TrainLAQConfig, ["experiment=laq_1gpu"])
    assert (one.cluster.num_nodes, one.cluster.devices, one.cluster.accelerator) == (1, 1, "gpu")
    assert one.model.dim == 1024 and one.data.image_size == one.model.image_size == 256
    assert one.cluster.resolved_precision() == "bf16-mixed" and one.training.compile
    full = load("train_laq", TrainLAQConfig, ["experiment=laq_full", "cluster=local_dev"])
    assert full.data.train_shards.startswith("data/")  # below the chosen cluster's data_root
    conf = ROOT / "src/lapa/conf"
    for path in [conf / "experiment/laq_full.yaml", *conf.glob("data/*.yaml")]:
        assert "/dss/" not in path.read_text(), f"{path.name}: storage paths belong in cluster/*.yaml"


@pytest.mark.parametrize("doc", [README, *sorted((ROOT / "docs").glob("*.md"))], ids=lambda p: p.name)
def test_docs_link_nothing_outside_the_repository(doc):
    text = doc.read_text()
    assert "../shared" not in text
    for target in re.findall(r"\]\(([^)#\s]+)", text):
        if re.match(r"[a-z]+://", target):
            continue
        resolved = (doc.parent / target).resolve()
        assert resolved.is_relative_to(ROOT), f"{doc.name}: {target} lies outside the repository"
        assert resolved.exists(), f"{doc.name}: {target} does not exist"
