"""The VLA: shapes, padding invariance, frozen backbones under training, overfitting a few samples,
other decoder-only LMs (no BOS), configuration errors."""

from __future__ import annotations

import pytest
import torch
from vla_tiny import INSTRUCTIONS, images, tiny_config

from lapa.config import ConfigError
from lapa.vla import VLA, HeadConfig, ProjectorConfig, load_tokenizer


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return VLA(tiny_config())


def test_shapes_through_every_component(model):
    x = images(2)
    enc = model.tokenize(INSTRUCTIONS[:2])  # input_ids, attention_mask [2, L]
    L = enc["input_ids"].shape[1]
    feats = model.vision(x)
    assert feats.shape == (2, 16, 32 + 24)  # [B, N, siglip 32 + dinov2 24]
    assert model.projector(feats).shape == (2, 16, 32)  # [B, N, d]
    emb, lengths = model.embed(x, **enc)
    assert emb.shape == (2, 1 + 16 + L + 4, 32) and lengths.shape == (2,)
    assert model.sequence_length(L) == emb.shape[1] and model.num_vision_tokens == 16
    # right-padded: each row's real tokens first ([BOS] [IMG] [prompt] [ACT]), its pads behind them
    n = enc["attention_mask"].sum(1) + 1 + 16 + 4
    assert lengths.tolist() == n.tolist() and len(set(n.tolist())) == 2  # the two prompts differ in length
    table = model.lm.get_input_embeddings().weight
    for row in range(2):
        real_ids = enc["input_ids"][row][enc["attention_mask"][row].bool()]
        assert torch.equal(emb[row, 1 + 16:n[row] - 4], table[real_ids])
        assert torch.equal(emb[row, n[row] - 4:n[row]], model.act_queries)
    logits = model(x, **enc)
    assert logits.shape == (2, 4, 8) and logits.dtype == torch.float32
    loss = model.loss(logits, torch.randint(0, 8, (2, 4)))
    assert loss.ndim == 0 and torch.isfinite(loss)
    with pytest.raises(ValueError, match="labels"):
        model.loss(logits, torch.zeros(2, 3, dtype=torch.long))
    assert model.predict(x, INSTRUCTIONS[:2]).shape == (2, 4)


def test_parameter_counts(model):
    counts = model.parameter_counts()
    vision = sum(p.numel() for p in model.vision.parameters())
    assert counts["frozen"] == counts["vision"] == vision > 0
    assert counts["trained"] == sum(p.numel() for n, p in model.named_parameters() if not n.startswith("vision."))
    assert counts["total"] == sum(p.numel() for p in model.parameters())


GPT2 = {"model_type": "gpt2", "n_embd": 32, "n_layer": 2, "n_head": 4, "n_positions": 256}


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
@pytest.mark.parametrize("side", ["left", "right"])
@pytest.mark.parametrize("lm", ["llama", "gpt2"])
def test_padding_does_not_change_any_sample(attn, side, lm):
    """A sample's logits alone equal its logits in a batch with longer and shorter prompts. GPT-2's
    learned absolute positions also check the position ids (Llama's RoPE is shift-invariant)."""
    torch.manual_seed(0)
    overrides = {"lm": {"name_or_path": None, "hf_config": GPT2}} if lm == "gpt2" else {}
    m = VLA(tiny_config(attn_implementation=attn, **overrides)).eval()
    m.tokenizer.padding_side = side
    x = images(len(INSTRUCTIONS))
    with torch.no_grad():
        batch = m(x, **m.tokenize(INSTRUCTIONS))  # [4, 4, 8]
        for i, text in enumerate(INSTRUCTIONS):
            alone = m(x[i:i + 1], **m.tokenize([text]))  # [1, 4, 8], no padding at all
            torch.testing.assert_close(batch[i:i + 1], alone, rtol=0, atol=1e-5)


def test_frozen_backbones_stay_bit_identical_under_training(model):
    before = {k: v.clone() for k, v in model.vision.state_dict().items()}
    trained_before = model.projector.net[1].weight.clone()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.1)  # all parameters, frozen ones too
    model.train()
    assert not any(m.training for m in model.vision.modules())  # .train() cannot undo eval mode
    assert model.lm.training and model.projector.training
    enc = model.tokenize(INSTRUCTIONS)
    for _ in range(3):
        loss = model.loss(model(images(4), **enc), torch.randint(0, 8, (4, 4)))
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert all(p.grad is None for p in model.vision.parameters())
    assert all(torch.equal(before[k], v) for k, v in model.vision.state_dict().items())
    assert not torch.equal(trained_before, model.projector.net[1].weight)  # the rest did train
    model.eval()


def test_overfits_a_handful_of_samples():
    """8 samples: 2 images x 4 instructions with random labels, so both the image and the text matter."""
    torch.manual_seed(0)
    m = VLA(tiny_config())
    x = images(2, seed=1).repeat_interleave(4, dim=0)  # [8, 40, 40, 3]
    enc = m.tokenize(INSTRUCTIONS * 2)
    labels = torch.randint(0, 8, (8, 4), generator=torch.Generator().manual_seed(2))
    opt = torch.optim.AdamW([p for p in m.parameters() if p.requires_grad], lr=3e-3)
    m.train()
    for step in range(300):  # noqa: B007 (reported below)
        logits = m(x, **enc)
        loss = m.loss(logits, labels)
        accuracy = (logits.argmax(-1) == labels).float().mean().item()
        if accuracy == 1.0 and loss.item() < 0.05:
            break
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert accuracy == 1.0 and loss.item() < 0.05, f"accuracy {accuracy:.2f}, loss {loss.item():.3f} after {step} steps"


def test_any_decoder_only_lm_and_no_bos():
    """A Qwen2-style LM whose tokenizer has no BOS: the sequence starts at the image tokens."""
    from transformers import PreTrainedTokenizerFast

    from lapa.vla.tokenizer import BUILTIN_DIR

    tok = PreTrainedTokenizerFast(tokenizer_file=str(BUILTIN_DIR / "tokenizer.json"), eos_token="</s>",
                                  pad_token="<pad>")
    qwen = {"model_type": "qwen2", "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
            "num_attention_heads": 4, "num_key_value_heads": 2}
    torch.manual_seed(0)
    m = VLA(tiny_config(lm={"name_or_path": None, "hf_config": qwen}), tokenizer=tok).eval()
    assert type(m.lm).__name__ == "Qwen2Model" and m.bos_token_id is None
    enc = m.tokenize(INSTRUCTIONS[:2])
    emb, _ = m.embed(images(2), **enc)
    assert emb.shape[1] == 16 + enc["input_ids"].shape[1] + 4
    with torch.no_grad():
        batch = m(images(2), **enc)
        alone = m(images(2)[1:], **m.tokenize(INSTRUCTIONS[1:2]))
    torch.testing.assert_close(batch[1:], alone, rtol=0, atol=1e-5)


def test_stage3_head_reads_one_act_token():
    torch.manual_seed(0)
    m = VLA(tiny_config(stage=3, head={"num_queries": 1, "outputs_per_query": 7, "num_classes": 256}))
    logits = m(images(2), **m.tokenize(INSTRUCTIONS[:2]))
    assert logits.shape == (2, 7, 256) and m.act_queries.shape == (1, 32)
    assert m.loss(logits, torch.randint(0, 256, (2, 7))).ndim == 0


def test_projector_width_and_configuration_errors():
    m = VLA(tiny_config(projector={"hidden_dim": 48}))
    assert m.projector.net[1].weight.shape == (48, 56) and m.projector.net[3].weight.shape == (32, 48)
    assert ProjectorConfig().hidden_dim is None and HeadConfig().num_outputs == 4
    small_vocab = tiny_config(lm={"name_or_path": None, "hf_config": {**tiny_config().lm.hf_config, "vocab_size": 100}})
    with pytest.raises(ConfigError, match="2048 tokens but the LM embeds only 100"):
        VLA(small_vocab, tokenizer=load_tokenizer("builtin"))
    with pytest.raises(ConfigError, match="tokenizer"):
        tiny_config(tokenizer=None)
    with pytest.raises(ConfigError, match="attn_implementation"):
        tiny_config(attn_implementation="flash")
    with pytest.raises(ConfigError, match="head.num_queries"):
        tiny_config(head={"num_queries": 0})


@pytest.mark.gpu
@pytest.mark.parametrize("dtype,atol", [(torch.float32, 1e-4), (torch.bfloat16, 5e-2)])
def test_cuda_padding_invariance_and_finite_logits(dtype, atol):
    """On CUDA, SDPA kernels and bf16: padded rows must not leak NaN/inf into real tokens."""
    torch.manual_seed(0)
    m = VLA(tiny_config()).to("cuda", dtype).eval()
    x = images(len(INSTRUCTIONS))
    with torch.no_grad():
        enc = {k: v.cuda() for k, v in m.tokenize(INSTRUCTIONS).items()}
        batch = m(x, **enc).float()
        assert torch.isfinite(batch).all()
        for i, text in enumerate(INSTRUCTIONS):
            alone = m(x[i:i + 1], **{k: v.cuda() for k, v in m.tokenize([text]).items()}).float()
            torch.testing.assert_close(batch[i:i + 1], alone, rtol=0, atol=atol)
