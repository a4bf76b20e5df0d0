"""`lapa label`: output format and range, resume, and the split across ranks."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch

from lapa.config import ConfigError, load
from lapa.data.images import decode_jpeg
from lapa.data.shards import decode_npy
from lapa.laq.label import LabelConfig, assign_shards, check_labels, read_labels, run
from pair_shards import make_pair_shards

pytestmark = pytest.mark.usefixtures("one_thread")


def _members(path: Path) -> dict[str, dict[str, bytes]]:
    """key -> {suffix: bytes} of a tar shard."""
    out: dict[str, dict[str, bytes]] = {}
    with tarfile.open(path) as tar:
        for m in tar:
            key, _, suffix = m.name.partition(".")
            out.setdefault(key, {})[suffix] = tar.extractfile(m).read()
    return out


def _cfg(ckpt: Path, shards: Path, out: Path, *extra: str) -> LabelConfig:
    return load("label", LabelConfig, [f"checkpoint={ckpt}", f"shards={shards}", f"output_dir={out}",
                                       "num_workers=0", "batch_size=3", "device=cpu", *extra])


def test_label_format_range_and_summary(tmp_path: Path, laq_checkpoint: Path) -> None:
    from lapa.laq import load_model

    inputs = make_pair_shards(tmp_path / "pairs", num_shards=2, pairs_per_shard=5)
    out = tmp_path / "latent"
    assert run(_cfg(laq_checkpoint, tmp_path / "pairs", out, "rank=0", "world_size=1")) == 0
    model = load_model(laq_checkpoint)
    for src in inputs:
        dst = out / f"latent-{src.name}"
        pairs, labelled = _members(src), _members(dst)
        assert sorted(labelled) == sorted(pairs)
        for key, parts in labelled.items():
            assert sorted(parts) == ["jpg", "json", "latent.npy", "txt"]
            assert parts["jpg"] == pairs[key]["t.jpg"]  # frame t's bytes unchanged
            assert parts["txt"] == pairs[key]["txt"]
            latent = decode_npy(parts["latent.npy"])
            assert latent.dtype == np.int64 and latent.shape == (4,)
            assert latent.min() >= 0 and latent.max() <= 7
            meta = json.loads(parts["json"])
            assert meta["pair_key"] == key and meta["shard"] == src.name
            assert meta["video_id"] == json.loads(pairs[key]["json"])["video_id"]
            # The label is what the model's inference path gives for this pair.
            frames = torch.stack([torch.from_numpy(decode_jpeg(pairs[key][s])).permute(2, 0, 1)
                                  for s in ("t.jpg", "t1.jpg")], dim=1).float().div(255)
            assert model.quantize(frames[None]).squeeze(0).tolist() == latent.tolist()
    summary = json.loads((out / "label_summary.json").read_text())
    assert summary["pairs_total"] == summary["pairs_labelled"] == 10
    assert summary["shards_labelled"] == 2 and summary["shards_skipped"] == 0
    assert [sum(row) for row in summary["code_histogram"]] == [10] * 4
    labels = np.concatenate([read_labels(out / f"latent-{p.name}") for p in inputs])
    assert summary["distinct_latent_actions"] == len({tuple(r) for r in labels.tolist()})
    assert summary["pairs_per_second"] > 0


def test_resume_skips_finished_shards(tmp_path: Path, laq_checkpoint: Path) -> None:
    make_pair_shards(tmp_path / "pairs", num_shards=3, pairs_per_shard=4)
    out = tmp_path / "latent"
    cfg = _cfg(laq_checkpoint, tmp_path / "pairs", out, "rank=0", "world_size=1")
    run(cfg)
    done = out / "latent-pairs-000000.tar"
    stamp = done.stat().st_mtime_ns
    (out / "latent-pairs-000002.tar").unlink()  # as if the job had been killed before this shard
    run(cfg)
    assert done.stat().st_mtime_ns == stamp  # not relabelled
    assert (out / "latent-pairs-000002.tar").exists()
    summary = json.loads((out / "label_summary.json").read_text())
    assert summary["shards_skipped"] == 2 and summary["shards_labelled"] == 1
    assert summary["pairs_labelled"] == 4 and summary["pairs_total"] == 12
    assert [sum(row) for row in summary["code_histogram"]] == [12] * 4


def test_two_processes_label_disjoint_complete_parts(tmp_path: Path, laq_checkpoint: Path) -> None:
    inputs = make_pair_shards(tmp_path / "pairs", num_shards=3, pairs_per_shard=4)
    out = tmp_path / "latent"
    procs = []
    for rank in range(2):
        env = dict(os.environ, RANK=str(rank), WORLD_SIZE="2", LOCAL_RANK=str(rank), OMP_NUM_THREADS="1")
        cmd = [sys.executable, "-m", "lapa.cli", "label", f"checkpoint={laq_checkpoint}",
               f"shards={tmp_path / 'pairs'}", f"output_dir={out}", "num_workers=0", "device=cpu"]
        procs.append(subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
    for proc in procs:
        text, _ = proc.communicate(timeout=300)
        assert proc.returncode == 0, text
    expected = sorted(k for p in inputs for k in _members(p))
    labelled = [k for p in sorted(out.glob("latent-*.tar")) for k in _members(p)]
    assert sorted(labelled) == expected  # every pair exactly once
    totals = [json.loads((out / f"label_summary_rank{r}.json").read_text()) for r in range(2)]
    assert [t["rank"] for t in totals] == [0, 1]
    assert [t["shards_assigned"] for t in totals] == [2, 1]
    assert sum(t["pairs_total"] for t in totals) == 12


def test_assign_shards_partition() -> None:
    shards = [f"s{i}" for i in range(7)]
    parts = [assign_shards(shards, r, 3) for r in range(3)]
    assert parts[0] == ["s0", "s3", "s6"]
    assert sorted(sum(parts, [])) == shards


def test_check_labels_rejects_out_of_range() -> None:
    assert check_labels(torch.tensor([[0, 7, 1, 2]]), 8, 4, "x").dtype == np.int64
    with pytest.raises(ValueError, match="x: latent label 8 outside 0..7"):
        check_labels(torch.tensor([[0, 8, 1, 2]]), 8, 4, "x")
    with pytest.raises(ValueError, match="latent label -1"):
        check_labels(torch.tensor([[0, -1, 1, 2]]), 8, 4, "x")
    with pytest.raises(ValueError, match=r"expected labels \[B, 4\]"):
        check_labels(torch.zeros(2, 3, dtype=torch.long), 8, 4, "x")


def test_bad_labels_stop_the_job_without_output(tmp_path: Path, laq_checkpoint: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    import lapa.laq
    from lapa.laq import load_model

    def broken(path):
        model = load_model(path)
        model.quantize = lambda frames: torch.full((len(frames), 4), 9, dtype=torch.long)
        return model

    monkeypatch.setattr(lapa.laq, "load_model", broken)
    make_pair_shards(tmp_path / "pairs", num_shards=1, pairs_per_shard=2)
    with pytest.raises(ValueError, match="outside 0..7"):
        run(_cfg(laq_checkpoint, tmp_path / "pairs", tmp_path / "latent", "rank=0", "world_size=1"))
    assert not list((tmp_path / "latent").glob("*.tar"))


def test_config_errors_name_the_key(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="missing value for checkpoint"):
        load("label", LabelConfig, ["shards=x", "output_dir=y"])
    with pytest.raises(ConfigError, match="rank=2: must lie in 0..1"):
        load("label", LabelConfig, ["checkpoint=c", "shards=x", "output_dir=y", "rank=2", "world_size=2"])
    with pytest.raises(ConfigError, match="batch_size=0"):
        load("label", LabelConfig, ["checkpoint=c", "shards=x", "output_dir=y", "batch_size=0"])
    with pytest.raises(ConfigError, match="device='cuda:x'"):
        load("label", LabelConfig, ["checkpoint=c", "shards=x", "output_dir=y", "device=cuda:x"])


def test_env_rank_and_world_size(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "4")
    cfg = load("label", LabelConfig, ["checkpoint=c", "shards=x", "output_dir=y"])
    assert (cfg.resolved_rank(), cfg.resolved_world_size()) == (1, 4)
    monkeypatch.delenv("RANK")
    monkeypatch.delenv("WORLD_SIZE")
    monkeypatch.setenv("SLURM_PROCID", "2")
    monkeypatch.setenv("SLURM_NTASKS", "3")
    cfg = load("label", LabelConfig, ["checkpoint=c", "shards=x", "output_dir=y"])
    assert (cfg.resolved_rank(), cfg.resolved_world_size()) == (2, 3)
