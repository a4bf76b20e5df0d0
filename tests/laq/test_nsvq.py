"""NSVQ: shapes for 1/4/16 action tokens, delta quantisation, the noise-substitution estimator, no VQ
losses, perplexity, and dead-code replacement on its schedule."""

from __future__ import annotations

import math

import pytest
import torch

from lapa.laq.nsvq import NSVQ, REFERENCE_REPLACEMENT_STEPS, cnn_output_side


@pytest.mark.parametrize("tokens,grid", [(1, 8), (4, 8), (16, 16)])
def test_nsvq_shapes_and_discreteness(tokens, grid):
    torch.manual_seed(0)
    nsvq = NSVQ(dim=48, quant_dim=8, codebook_size=8, code_seq_len=tokens, grid_side=grid)
    first, last = torch.randn(2, grid * grid, 48), torch.randn(2, grid * grid, 48)
    for train in (True, False):
        nsvq.train(train)
        quantized, indices, perplexity = nsvq(first, last)
        side = int(math.isqrt(tokens))
        assert quantized.shape == (2, 1, side, side, 48)
        assert indices.shape == (2, tokens) and indices.dtype == torch.long
        assert 0 <= int(indices.min()) and int(indices.max()) < 8
        assert perplexity.ndim == 0 and 1.0 - 1e-4 <= float(perplexity) <= 8.0 + 1e-4


def test_grid_that_does_not_fit_the_action_tokens_is_refused():
    assert cnn_output_side(8, 4) == 2 and cnn_output_side(8, 1) == 1 and cnn_output_side(16, 16) == 4
    with pytest.raises(ValueError, match="grid_side=8"):
        NSVQ(dim=16, quant_dim=4, codebook_size=8, code_seq_len=16, grid_side=8)


def test_zero_delta_picks_the_code_nearest_zero():
    torch.manual_seed(1)
    nsvq = NSVQ(dim=32, quant_dim=8, codebook_size=8, code_seq_len=4, grid_side=8).eval()
    first = torch.randn(3, 64, 32)
    quantized, indices, perplexity = nsvq(first, first.clone())
    nearest_zero = int(nsvq.codebooks.norm(dim=1).argmin())
    assert quantized.shape == (3, 1, 2, 2, 32)
    assert torch.all(indices == nearest_zero) and float(perplexity) == pytest.approx(1.0, abs=1e-6)


def _unscramble(quantized: torch.Tensor, tokens: int, q: int) -> torch.Tensor:
    """Invert the reshape-not-transpose layout when project_out is the identity: -> [B*L, q]."""
    b = quantized.shape[0]
    return quantized.reshape(b, tokens, q).permute(0, 2, 1).reshape(b * tokens, q)


def test_noise_substitution_keeps_the_quantisation_error_norm_and_passes_gradients():
    torch.manual_seed(2)
    q = 8
    nsvq = NSVQ(dim=q, quant_dim=q, codebook_size=8, code_seq_len=4, grid_side=8).train()
    with torch.no_grad():  # identity projection out, so the module output is the quantised vector
        nsvq.project_out.weight.copy_(torch.eye(q))
        nsvq.project_out.bias.zero_()
    first = torch.randn(4, 64, q, requires_grad=True)
    last = torch.randn(4, 64, q, requires_grad=True)
    quantized, indices, _ = nsvq(first, last)
    with torch.no_grad():
        delta = nsvq.delta(first, last)
        code = nsvq.codebooks[indices.reshape(-1)]
        out = _unscramble(quantized, 4, q)
    # |q_train - delta| = |delta - code| (+1e-12 |r|): the error has the size of the true VQ error.
    assert torch.allclose((out - delta).norm(dim=1), (delta - code).norm(dim=1), rtol=1e-5, atol=1e-6)
    assert not torch.allclose(out, code)  # training output is not the code itself
    quantized.square().sum().backward()
    assert first.grad is not None and first.grad.abs().sum() > 0
    assert last.grad is not None and last.grad.abs().sum() > 0
    grad_rows = nsvq.codebooks.grad.abs().sum(dim=1) > 0
    chosen = torch.zeros(8, dtype=torch.bool)
    chosen[indices.unique()] = True
    assert torch.equal(grad_rows, chosen)  # gradient reaches exactly the chosen codes
    # Eval mode returns the codes themselves (scrambled by the reference's reshape).
    nsvq.eval()
    with torch.no_grad():
        quantized, indices, _ = nsvq(first, last)
        assert torch.allclose(_unscramble(quantized, 4, q), nsvq.codebooks[indices.reshape(-1)], atol=1e-6)


def test_nsvq_has_no_loss_terms():
    nsvq = NSVQ(dim=16, quant_dim=4, codebook_size=8, code_seq_len=4, grid_side=8).train()
    outputs = nsvq(torch.randn(2, 64, 16), torch.randn(2, 64, 16))
    assert len(outputs) == 3  # quantized, indices, perplexity: no commitment/codebook loss returned
    assert not outputs[2].requires_grad  # perplexity is a metric, not a loss


def test_reference_schedule():
    assert REFERENCE_REPLACEMENT_STEPS[:10] == (10, 20, 30, 40, 50, 60, 70, 80, 90, 100)
    assert REFERENCE_REPLACEMENT_STEPS[-3:] == (3500, 4000, 4500)
    assert len(REFERENCE_REPLACEMENT_STEPS) == 9 + 9 + 8 and 5000 not in REFERENCE_REPLACEMENT_STEPS


def test_dead_code_is_revived_on_schedule():
    torch.manual_seed(3)
    nsvq = NSVQ(dim=16, quant_dim=4, codebook_size=8, code_seq_len=4, grid_side=8,
                replacement_steps=(3,)).train()
    with torch.no_grad():
        nsvq.codebooks[5] = 1e3  # far from every delta: never chosen
    first, last = torch.randn(2, 64, 16), torch.randn(2, 64, 16)
    used_codes = set()
    for step in (1, 2):
        used_codes |= set(nsvq(first, last)[1].flatten().tolist())
        assert int(nsvq.step) == step and float(nsvq.codebooks[5, 0].detach()) == 1e3  # not yet
    assert 5 not in used_codes and int(nsvq.codebooks_used[5]) == 0
    assert sorted(i for i in range(8) if nsvq.codebooks_used[i] > 0) == sorted(used_codes)
    before = nsvq.codebooks.detach().clone()
    nsvq(first, last)  # step 3: replacement
    book = nsvq.codebooks.detach()
    assert int(nsvq.step) == 3 and int(nsvq.codebooks_used.sum()) == 0  # counters reset
    # Code 5 now sits (within the 1e-12 noise) on a used code; used codes are untouched.
    assert min(float((book[5] - before[i]).abs().max()) for i in used_codes) < 1e-6
    for i in used_codes:
        assert torch.equal(book[i], before[i])
    assert float(book[5].abs().max()) < 100  # no longer far from the data: it can be chosen again


def test_gradient_accumulation_counts_optimiser_steps_and_their_whole_batch(monkeypatch):
    """Micro-batches that do not end an optimiser step only add to the step's usage: a code counts once
    per step if any micro-batch chose it, the schedule advances per step, and the usage threshold
    divides by the samples of the whole step."""
    torch.manual_seed(4)
    nsvq = NSVQ(dim=16, quant_dim=4, codebook_size=8, code_seq_len=4, grid_side=8,
                replacement_steps=(2,)).train()
    seen_batch = []
    replace = nsvq.replace_unused_codes
    monkeypatch.setattr(nsvq, "replace_unused_codes", lambda b: seen_batch.append(b) or replace(b))
    xs = [torch.randn(3, 64, 16) for _ in range(4)]
    chosen = []
    for i, x in enumerate(xs):  # 2 optimiser steps of 2 micro-batches (3 samples each)
        nsvq.step_ends = i % 2 == 1
        chosen.append(set(nsvq(x, x + torch.randn_like(x))[1].flatten().tolist()))
        if i == 0:
            assert int(nsvq.step) == 0 and int(nsvq.codebooks_used.sum()) == 0  # held, not counted
        if i == 1:
            assert int(nsvq.step) == 1
            assert {k for k in range(8) if nsvq.codebooks_used[k]} == chosen[0] | chosen[1]
            assert int(nsvq.codebooks_used.max()) == 1  # once per optimiser step, not per micro-batch
    assert int(nsvq.step) == 2 and seen_batch == [6]  # replaced at step 2, threshold over 6 samples


def test_no_used_code_only_jitters_the_codebook():
    nsvq = NSVQ(dim=16, quant_dim=4, codebook_size=8, code_seq_len=4, grid_side=8)
    before = nsvq.codebooks.detach().clone()
    assert nsvq.replace_unused_codes(batch_size=4) == 8
    assert torch.allclose(nsvq.codebooks.detach(), before, atol=1e-9)


def test_replacement_can_be_disabled_and_resume_keeps_the_schedule():
    nsvq = NSVQ(dim=16, quant_dim=4, codebook_size=8, code_seq_len=4, grid_side=8, replacement_steps=())
    x = torch.randn(2, 64, 16)
    for _ in range(12):
        nsvq(x, x + torch.randn_like(x))
    assert int(nsvq.step) == 12 and int(nsvq.codebooks_used.max()) > 0  # never reset
    # A loaded state continues counting from the stored step (the host-side mirror is re-read).
    other = NSVQ(dim=16, quant_dim=4, codebook_size=8, code_seq_len=4, grid_side=8, replacement_steps=(13,))
    other.load_state_dict(nsvq.state_dict())
    other(x, x + torch.randn_like(x))
    assert int(other.step) == 13 and int(other.codebooks_used.sum()) == 0  # replaced at step 13


def test_recent_delta_restart_spreads_a_collapsed_codebook():
    """With replacement_source="recent_deltas", dead codes restart at deltas of the last batch, so a
    codebook in which one code wins everything gets distinct, chosen codes again (the reference's
    copies of the winning code would stay exact duplicates)."""
    torch.manual_seed(4)
    nsvq = NSVQ(dim=16, quant_dim=4, codebook_size=8, code_seq_len=4, grid_side=8,
                replacement_steps=(1,), replacement_source="recent_deltas").train()
    first, last = torch.randn(4, 64, 16), torch.randn(4, 64, 16)
    with torch.no_grad():
        nsvq.codebooks[1:] = 1e3  # only code 0 can win: a collapsed codebook
    _, indices, _ = nsvq(first, last)  # step 1: replacement
    assert set(indices.flatten().tolist()) == {0}
    deltas = nsvq.delta(first, last).detach()
    book = nsvq.codebooks.detach()
    for code in book[1:]:  # every restarted code is one of the batch's deltas
        assert float((deltas - code).abs().amax(dim=1).min()) < 1e-6
    nsvq.eval()
    with torch.no_grad():
        _, after, _ = nsvq(first, last)
    assert len(set(after.flatten().tolist())) >= 4  # the same deltas now spread over many codes


def test_unknown_replacement_source_is_refused():
    with pytest.raises(ValueError, match="replacement_source"):
        NSVQ(dim=16, quant_dim=4, codebook_size=8, code_seq_len=4, grid_side=8, replacement_source="x")
