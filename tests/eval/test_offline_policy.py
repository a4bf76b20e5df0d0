"""`lapa eval-policy`: a policy's actions against recorded robot steps, per dimension, raw and normalised,
with episode plots; a missing shards folder is a one-line error."""

from __future__ import annotations

import io
import json
import tarfile

import numpy as np

from lapa.cli import main
from lapa.data.images import decode_jpeg
from lapa.policy.vla_policy import LAPAPolicy
from policy_exports import make_policy_export
from robot_shards import make_robot_shards


def test_errors_per_dimension_match_the_policy_step_by_step(tmp_path, one_thread):
    export = make_policy_export(tmp_path / "export")
    shards = make_robot_shards(tmp_path / "val", [(0, 0), (1, 1), (3, 0)], steps=5, per_shard=6)
    out = tmp_path / "offline"
    assert main(["eval-policy", f"policy={export}", f"shards={shards}", f"output={out}", "batch_size=4",
                 "plot_episodes=2"]) == 0
    m = json.loads((out / "metrics.json").read_text())
    assert m["episodes"] == 3 and m["steps"] == 15 and len(m["plots"]) == 2
    assert all((out / p).is_file() for p in m["plots"]) and "normalised MSE" in (out / "report.md").read_text()
    # by hand, one step at a time, in shard order
    policy = LAPAPolicy.from_pretrained(export)
    pred, true = [], []
    for url in sorted(shards.glob("*.tar")):
        with tarfile.open(url) as tar:
            members = {m.name: tar.extractfile(m).read() for m in tar if m.isfile()}
        for key in sorted({n.split(".")[0] for n in members}):
            image = decode_jpeg(members[f"{key}.jpg"])
            pred.append(policy.predict_action(image, members[f"{key}.txt"].decode()))
            true.append(np.load(io.BytesIO(members[f"{key}.action.npy"])))
    pred, true = np.stack(pred), np.stack(true)
    nsq = (policy.tokenizer.normalize(pred) - policy.tokenizer.normalize(true)) ** 2
    assert abs(m["nmse_all"] - float(nsq.astype(np.float64).mean())) < 1e-6
    assert abs(m["mse"]["x"] - float(((pred[:, 0] - true[:, 0]).astype(np.float64) ** 2).mean())) < 1e-9
    assert m["nmse_mean_action_all"] > 0


def test_no_shards_is_a_one_line_error(tmp_path, capsys):
    export = make_policy_export(tmp_path / "export")
    (tmp_path / "empty").mkdir()
    assert main(["eval-policy", f"policy={export}", f"shards={tmp_path / 'empty'}", f"output={tmp_path / 'o'}"]) == 2
    assert "no .tar shards in this folder" in capsys.readouterr().err
