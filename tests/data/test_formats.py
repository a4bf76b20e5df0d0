"""The shard formats (`frame_pairs`, `latent_labelled`, `robot_steps`): each corrupt sample is skipped
and counted under its reason; batches have the format's keys, dtypes and shapes; labels are never
flipped."""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from lapa.data import frame_pairs, latent_labelled, robot_steps
from lapa.data.formats import ACTION_DIM
from lapa.data.frame_pairs import FRAME_PAIRS
from lapa.data.images import encode_jpeg
from lapa.data.latent_labelled import LATENT_LABELLED
from lapa.data.loader import train_loader
from lapa.data.robot_steps import ROBOT_STEPS
from lapa.data.shards import encode_value, shard_name, write_shard
from lapa.data.skips import skipped_samples

sys.path.insert(0, str(Path(__file__).parent))
from synth import coded_image, data_cfg, ids_of, make_step_shards  # noqa: E402


def raw(**parts) -> dict:
    """A sample as the tar reader yields it: suffix -> bytes."""
    sample = {"__key__": "k", "__url__": "test.tar"}
    sample.update({suffix.replace("_", "."): encode_value(suffix.replace("_", "."), value)
                   for suffix, value in parts.items()})
    return sample


JPG = encode_jpeg(coded_image(1, 16))
GOOD_LATENT = dict(jpg=JPG, txt="push", latent_npy=np.array([0, 7, 3, 1]), json={"pair_key": "p"})
GOOD_STEP = dict(jpg=JPG, txt="push", action_npy=np.arange(7, dtype=np.float32),
                 json={"episode_id": "e0", "step": 3, "task": "push"})
GOOD_PAIR = dict(t_jpg=JPG, t1_jpg=JPG, json={"video_id": "v"}, txt="go", action_npy=np.ones(7, np.float32))


def without(parts: dict, key: str) -> dict:
    return {k: v for k, v in parts.items() if k != key}


CORRUPT = [  # (format's fields function, sample parts, reason it is skipped under)
    (LATENT_LABELLED.fields, {**GOOD_LATENT, "latent_npy": np.array([0, 7, 3])}, "bad latent"),  # length
    (LATENT_LABELLED.fields, {**GOOD_LATENT, "latent_npy": np.array([0, 8, 3, 1])}, "bad latent"),  # range
    (LATENT_LABELLED.fields, {**GOOD_LATENT, "latent_npy": np.array([0, -1, 3, 1])}, "bad latent"),
    (LATENT_LABELLED.fields, {**GOOD_LATENT, "latent_npy": np.array([0.0, 1, 3, 1])}, "bad latent"),  # float
    (LATENT_LABELLED.fields, {**GOOD_LATENT, "latent_npy": b"\x93NUMPY garbage"}, "bad sample"),
    (LATENT_LABELLED.fields, without(GOOD_LATENT, "txt"), "missing part"),
    (LATENT_LABELLED.fields, without(GOOD_LATENT, "latent_npy"), "missing part"),
    (LATENT_LABELLED.fields, {**GOOD_LATENT, "txt": b"\xff\xfe not utf-8"}, "bad text"),
    (ROBOT_STEPS.fields, {**GOOD_STEP, "action_npy": np.zeros(6, np.float32)}, "bad action"),  # shape
    (ROBOT_STEPS.fields, {**GOOD_STEP, "action_npy": np.zeros((1, 7), np.float32)}, "bad action"),
    (ROBOT_STEPS.fields, {**GOOD_STEP, "action_npy": np.array([0, 0, np.nan, 0, 0, 0, 1], np.float32)},
     "bad action"),
    (ROBOT_STEPS.fields, {**GOOD_STEP, "action_npy": np.array([0, np.inf, 0, 0, 0, 0, 1])}, "bad action"),
    (ROBOT_STEPS.fields, {**GOOD_STEP, "json": {"episode_id": "e0"}}, "bad meta"),  # no step
    (ROBOT_STEPS.fields, {**GOOD_STEP, "json": b"{not json"}, "bad meta"),
    (ROBOT_STEPS.fields, without(GOOD_STEP, "json"), "missing part"),
    (FRAME_PAIRS.fields, without(GOOD_PAIR, "json"), "missing part"),
    (frame_pairs.inference_fields, {**GOOD_PAIR, "json": b"[1, 2]"}, "bad meta"),  # not an object
    (frame_pairs.inference_fields, {**GOOD_PAIR, "action_npy": np.full(7, np.nan, np.float32)}, "bad action"),
    (frame_pairs.inference_fields, {**GOOD_PAIR, "action_npy": np.zeros(8, np.float32)}, "bad action"),
]


@pytest.mark.parametrize("fields, parts, reason", CORRUPT)
def test_corrupt_sample_is_skipped_and_counted(fields, parts, reason):
    before = skipped_samples()
    assert fields(raw(**parts)) is None
    after = skipped_samples()
    assert after.get(reason, 0) - before.get(reason, 0) == 1
    assert sum(after.values()) - sum(before.values()) == 1  # one reason per sample


def test_good_samples_pass_with_their_fields():
    latent = LATENT_LABELLED.fields(raw(**GOOD_LATENT))
    assert latent["text"] == "push" and latent["latent"].dtype == np.int64
    assert latent["latent"].tolist() == [0, 7, 3, 1]
    step = ROBOT_STEPS.fields(raw(**GOOD_STEP, wrist_jpg=JPG))  # optional parts are welcome
    assert step["action"].dtype == np.float32 and (step["episode_id"], step["step"]) == ("e0", 3)
    pair = frame_pairs.inference_fields(raw(**without(GOOD_PAIR, "action_npy")))
    assert pair["action"] is None and pair["meta"] == {"video_id": "v"} and pair["instruction"] == "go"
    wide = latent_labelled.latent_labelled(code_seq_len=16, codebook_size=1024)
    assert wide.fields(raw(**{**GOOD_LATENT, "latent_npy": np.arange(16) * 60})) is not None
    assert wide.fields(raw(**GOOD_LATENT)) is None  # 4 tokens where 16 are expected


def test_formats_declare_their_parts_and_flips():
    assert FRAME_PAIRS.required == ("t.jpg", "t1.jpg", "json") and FRAME_PAIRS.flips
    assert FRAME_PAIRS.image_parts == ("t.jpg", "t1.jpg") and not FRAME_PAIRS.single_image
    assert LATENT_LABELLED.required == ("jpg", "txt", "latent.npy", "json") and not LATENT_LABELLED.flips
    assert ROBOT_STEPS.required == ("jpg", "txt", "action.npy", "json") and not ROBOT_STEPS.flips
    assert set(ROBOT_STEPS.optional) == {"state.npy", "wrist.jpg"} and ROBOT_STEPS.single_image
    assert ACTION_DIM == 7 and robot_steps.ACTION == "action.npy"


def write_steps_with_corrupt(directory: Path, kind: str) -> list[int]:
    """A shard of 8 steps, samples 2 and 5 corrupt in their label; returns the good ids in order."""
    directory.mkdir(parents=True)
    samples = []
    for n in range(8):
        sample = {"__key__": f"{n:06d}", "jpg": encode_jpeg(coded_image(n, 16)), "txt": f"do {n}"}
        if kind == "latent":
            sample["latent.npy"] = np.array([n % 8, 1, 2, 3] if n not in (2, 5) else [9, 1, 2, 3])
            sample["json"] = {"n": n}
        else:
            sample["action.npy"] = np.arange(7, dtype=np.float32) + (n if n != 2 else np.nan)
            sample["json"] = {"episode_id": "e", "step": n} if n != 5 else {"step": n}
        samples.append(sample)
    write_shard(directory / shard_name(kind, 0), samples)
    return [0, 1, 3, 4, 6, 7]


@pytest.mark.parametrize("kind, fmt, reasons", [("latent", LATENT_LABELLED, {"bad latent": 2}),
                                                ("robot", ROBOT_STEPS, {"bad action": 1, "bad meta": 1})])
def test_loader_skips_corrupt_labels_and_keeps_batches_full(tmp_path, kind, fmt, reasons):
    good = write_steps_with_corrupt(tmp_path / kind, kind)
    before = skipped_samples()
    cfg = data_cfg(tmp_path / kind, batch_size=3, shuffle_buffer=0, shard_shuffle=False)
    batches = list(train_loader(cfg, fmt))
    after = skipped_samples()
    assert ids_of(batches, "image") == good  # two full batches of the six good samples
    assert {r: after.get(r, 0) - before.get(r, 0) for r in reasons} == reasons


def test_latent_and_robot_batches_keys_dtypes_shapes_and_no_flips(tmp_path):
    make_step_shards(tmp_path / "lat", 1, 5, "latent")
    make_step_shards(tmp_path / "rob", 1, 5, "robot")
    b = next(iter(train_loader(data_cfg(tmp_path / "lat", shuffle_buffer=0, hflip=True), LATENT_LABELLED)))
    assert set(b) == {"image", "text", "latent_tokens"}
    assert b["image"].shape == (4, 3, 16, 16) and b["image"].dtype == torch.float32
    assert b["latent_tokens"].dtype == torch.int64 and b["latent_tokens"].shape == (4, 4)
    assert b["latent_tokens"].tolist() == [[n % 8, 1, 2, 3] for n in range(4)]
    assert b["text"] == [f"do {n}" for n in range(4)]
    assert (b["image"][:, 2, :, -1] > b["image"][:, 2, :, 0]).all()  # hflip=True ignored: ramp unmirrored
    b = next(iter(train_loader(data_cfg(tmp_path / "rob", shuffle_buffer=0, hflip=True), ROBOT_STEPS)))
    assert set(b) == {"image", "text", "actions", "episode_id", "step"}
    assert b["image"].shape == (4, 3, 16, 16) and b["image"].dtype == torch.float32
    assert b["actions"].shape == (4, 7) and b["actions"].dtype == torch.float32
    assert torch.equal(b["actions"][3], torch.arange(7.0) + 3)
    assert b["episode_id"] == ["ep0", "ep0", "ep0", "ep1"]
    assert b["step"].dtype == torch.int64 and b["step"].tolist() == [0, 1, 2, 0]
    # hflip=True is ignored for robot data: the blue ramp still rises left to right in every image.
    assert (b["image"][:, 2, :, -1] > b["image"][:, 2, :, 0]).all()
    flippable = dataclasses.replace(ROBOT_STEPS, flips=True)  # the same shards in a format that allows flips
    images = next(iter(train_loader(data_cfg(tmp_path / "rob", shuffle_buffer=0, hflip=True, batch_size=5),
                                    flippable)))["image"]
    assert not (images[:, 2, :, -1] > images[:, 2, :, 0]).all()  # ... some come mirrored
