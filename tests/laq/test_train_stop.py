"""`lapa train-laq` stopped by SIGTERM (Slurm's time limit, preemption) and re-run on a folder that holds a
run (issue 10, items 3, 6 and 8): the stop leaves a resumable `last.ckpt` and a non-zero status, a re-run
without `resume=auto` or `overwrite=true` is refused and changes nothing, `resume=auto` finishes the run
with its best checkpoint recorded, and `overwrite=true` starts over without old checkpoints left behind."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from laq_train_fixtures import write_pair_shards

from lapa.cli import main as lapa_main
from lapa.training.stop_signal import EXIT_STOPPED
from stop_run import sigterm_when

FAST = ["data.batch_size=4", "data.shuffle_buffer=8", "data.num_workers=0", "training.log_every_n_steps=1",
        "training.val_check_interval=2", "training.limit_val_batches=2", "training.checkpoint.every_n_steps=2",
        "training.num_vis_rows=2", "training.scheduler.warmup_steps=2", "training.scheduler.total_steps=50"]

pytestmark = pytest.mark.usefixtures("one_thread")


def _snapshot(root: Path) -> dict[str, int]:
    return {str(p.relative_to(root)): p.stat().st_mtime_ns for p in root.rglob("*") if p.is_file()}


def test_sigterm_stops_resumably_and_reruns_need_resume_or_overwrite(tmp_path, capsys):
    write_pair_shards(tmp_path / "train", 24, seed=10)
    write_pair_shards(tmp_path / "val", 8, seed=11)
    out = tmp_path / "run"
    common = ["experiment=laq_debug", f"data.train_shards={tmp_path}/train", f"data.val_shards={tmp_path}/val",
              f"output_dir={out}", *FAST]
    status, printed = sigterm_when(["train-laq", *common, "training.max_steps=1000"],
                                   (out / "checkpoints" / "step_00000002.ckpt").exists)
    # Stopped, not finished: a non-zero status, no final model, and a checkpoint to continue from.
    assert status == EXIT_STOPPED, printed
    assert "stopped by SIGTERM" in printed and "resume=auto" in printed
    # One progress bar over max_steps (not "Epoch 0: 2/1000" for a 6-batch epoch), without Lightning's
    # advertising or its notice on every save.
    assert "Steps (epoch 0)" in printed and "/1000 [" in printed and "Epoch 0:" not in printed
    assert "💡" not in printed and "weights_only" not in printed
    assert not (out / "laq_final.pt").exists() and not (out / "summary.json").exists()
    stopped = torch.load(out / "checkpoints" / "last.ckpt", weights_only=True)["global_step"]
    assert stopped >= 2

    # The same command again, without resume=auto: refused, nothing changed.
    before = _snapshot(out)
    assert lapa_main(["train-laq", *common, "training.max_steps=20"]) == 2
    err = capsys.readouterr().err
    assert "already holds a run" in err and "resume=auto" in err and "overwrite=true" in err
    assert _snapshot(out) == before

    # resume=auto finishes it; the summary records the best checkpoint, never worse than the final one.
    target = stopped + 3
    assert lapa_main(["train-laq", *common, f"training.max_steps={target}", "resume=auto"]) == 0
    capsys.readouterr()
    summary = json.loads((out / "summary.json").read_text())
    assert (summary["steps"], summary["steps_this_run"]) == (target, 3)
    assert summary["best_checkpoint"] == str(out / "checkpoints" / "best.ckpt")
    assert summary["best_val_loss_recon"] <= summary["final_val"]["loss_recon"] + 1e-9

    # overwrite=true starts over: the old run's periodic checkpoints do not stay mixed with the new ones.
    assert lapa_main(["train-laq", *common, "training.max_steps=2", "overwrite=true"]) == 0
    capsys.readouterr()
    steps = sorted(p.name for p in (out / "checkpoints").glob("step_*.ckpt"))
    assert steps == ["step_00000002.ckpt"]
    assert json.loads((out / "summary.json").read_text())["steps"] == 2
