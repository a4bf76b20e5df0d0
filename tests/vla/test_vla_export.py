"""The export directory: save_pretrained / from_pretrained round trip (offline, without the original
HF paths), its files, atomic replacement, dtype on load."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from vla_tiny import INSTRUCTIONS, images, tiny_config

from lapa.config import to_schema
from lapa.vla import VLA, VLAConfig, read_info


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return VLA(tiny_config()).eval()


def _logits(m: VLA) -> torch.Tensor:
    with torch.no_grad():
        return m(images(3), **m.tokenize(INSTRUCTIONS[:3]))


def test_round_trip_gives_identical_logits(model, tmp_path):
    out = model.save_pretrained(tmp_path / "export", info={"steps": 12, "data": "sim shards"})
    files = {p.name for p in out.iterdir()}
    assert {"config.json", "model.safetensors", "info.json", "tokenizer.json", "tokenizer_config.json"} <= files
    info = read_info(out)
    assert info["kind"] == "lapa-vla" and info["stage"] == 2 and info["format_version"] == 1
    assert info["steps"] == 12 and info["weights_dtype"] == "float32"
    assert info["parameters"] == model.parameter_counts()
    config = json.loads((out / "config.json").read_text())
    assert config["lm"]["hf_config"]["model_type"] == "llama" and config["vision"]["backbones"][0]["image_size"] == 32

    loaded = VLA.from_pretrained(out)
    assert not loaded.training and loaded.tokenizer.bos_token_id == model.tokenizer.bos_token_id
    assert torch.equal(_logits(loaded), _logits(model))
    ours, theirs = model.state_dict(), loaded.state_dict()
    assert ours.keys() == theirs.keys()
    assert all(torch.equal(ours[k], theirs[k]) for k in ours)


def test_export_rebuilds_offline_without_the_original_checkpoints(checkpoints, tmp_path):
    root, *_ = checkpoints
    local = tmp_path / "hf"
    shutil.copytree(root, local)
    cfg = to_schema({
        "vision": {"backbones": [{"family": "siglip", "name_or_path": str(local / "siglip")},
                                 {"family": "dinov2", "name_or_path": str(local / "dinov2"), "image_size": 32}]},
        "lm": {"name_or_path": str(local / "llama")}, "tokenizer": None}, VLAConfig)
    m = VLA(cfg).eval()
    before = _logits(m)
    out = m.save_pretrained(tmp_path / "export")
    shutil.rmtree(local)  # the HF checkpoints are gone: only the export remains
    loaded = VLA.from_pretrained(out)
    assert torch.equal(_logits(loaded), before)
    assert loaded.vision.backbones[1].config.mean == [0.4, 0.5, 0.6]  # from the vanished preprocessor_config


def test_save_replaces_atomically_and_cleans_up(model, tmp_path):
    target = tmp_path / "export"
    model.save_pretrained(target, info={"steps": 1})
    model.save_pretrained(target, info={"steps": 2})
    assert read_info(target)["steps"] == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["export"]  # no temporaries left behind

    class Boom(Exception):
        pass

    def fail(*args, **kwargs):
        raise Boom

    tok_save = model.tokenizer.save_pretrained
    model.tokenizer.save_pretrained = fail  # die half-way through writing
    try:
        with pytest.raises(Boom):
            model.save_pretrained(target, info={"steps": 3})
    finally:
        model.tokenizer.save_pretrained = tok_save
    assert read_info(target)["steps"] == 2  # the old export is untouched
    assert sorted(p.name for p in tmp_path.iterdir()) == ["export"]
    with pytest.raises(ValueError, match="reserved"):
        model.save_pretrained(target, info={"kind": "other"})


def test_load_dtype_and_bad_directories(model, tmp_path):
    out = model.save_pretrained(tmp_path / "export")
    half = VLA.from_pretrained(out, dtype=torch.bfloat16)
    assert half.act_queries.dtype == torch.bfloat16 and half.lm.get_input_embeddings().weight.dtype == torch.bfloat16
    logits = _logits(half)
    assert logits.dtype == torch.bfloat16 and torch.isfinite(logits.float()).all()
    half.save_pretrained(tmp_path / "bf16")
    assert read_info(tmp_path / "bf16")["weights_dtype"] == "bfloat16"
    assert VLA.from_pretrained(tmp_path / "bf16").act_queries.dtype == torch.bfloat16  # as saved
    mixed = VLA.from_pretrained(out)
    mixed.vision.to(torch.bfloat16)  # e.g. frozen backbones kept in bf16
    mixed.save_pretrained(tmp_path / "mixed")
    assert read_info(tmp_path / "mixed")["weights_dtype"] == "mixed"
    assert {p.dtype for p in VLA.from_pretrained(tmp_path / "mixed").parameters()} == {torch.float32}
    with pytest.raises(FileNotFoundError, match="no info.json"):
        VLA.from_pretrained(tmp_path)
    info = json.loads((out / "info.json").read_text())
    (out / "info.json").write_text(json.dumps({**info, "format_version": 99}))
    with pytest.raises(ValueError, match="newer"):
        VLA.from_pretrained(out)
