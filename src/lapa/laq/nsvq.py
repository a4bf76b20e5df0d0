"""NSVQ: noise-substitution vector quantisation of the change between two frames' tokens.

Shapes: `B` batch, `hw` patch tokens per frame (grid `g x g`), `D` model dim, `q` quant_dim, `L`
code_seq_len = action tokens (an `a x a` action grid), `K` codebook size.

    first, last [B, hw, D] -project_in-> [B, q, g, g] -cnn_encoder-> [B, q, a, a] -> [B*L, q]
    delta = last - first; index = argmin_k |delta - codebooks[k]|^2      (one codebook for all positions)
    train: delta + (|delta - code| / |r| + eps) * r,  r ~ N(0, I)          (no VQ losses)
    eval:  code
    [B*L, q] -reshape (not transpose)-> [B, q, L] -> [B, L, q] -project_out-> [B, 1, a, a, D]

The reshape-not-transpose step scrambles each sample's `L*q` numbers exactly as the reference does, which
the released weights expect. Dead-code replacement follows the reference schedule; under DDP the usage
counts are all-reduced every training step (so they are identical on all ranks, whatever DDP's buffer
broadcast does) and the replacement is decided on rank 0 and broadcast.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import torch
import torch.distributed as dist
from torch import Tensor, nn

from lapa.laq.metrics import perplexity_of

log = logging.getLogger(__name__)

# Steps at which unused codes are replaced in the published training: 10..90, 100..900, 1000..4500.
REFERENCE_REPLACEMENT_STEPS: tuple[int, ...] = (
    tuple(range(10, 100, 10)) + tuple(range(100, 1000, 100)) + tuple(range(1000, 5000, 500)))

ACTION_TOKENS = (1, 4, 16)


def build_cnn_encoder(quant_dim: int, code_seq_len: int) -> nn.Sequential:
    """The reference's downsampling of the `[B, q, g, g]` token image to the action grid.

    1 token: conv3 s2 p1 -> ReLU -> conv4 s1 p0 (8x8 -> 4x4 -> 1x1); 4 tokens: conv3 s2 p1 -> ReLU ->
    conv3 s1 p0 (8x8 -> 4x4 -> 2x2); 16 tokens: conv3 s2 p1 -> ReLU -> conv3 s2 p1 (16x16 -> 8x8 -> 4x4).
    """
    if code_seq_len not in ACTION_TOKENS:
        raise ValueError(f"code_seq_len={code_seq_len}: must be one of {ACTION_TOKENS}")
    second = {1: dict(kernel_size=4, stride=1, padding=0), 4: dict(kernel_size=3, stride=1, padding=0),
              16: dict(kernel_size=3, stride=2, padding=1)}[code_seq_len]
    return nn.Sequential(nn.Conv2d(quant_dim, quant_dim, 3, stride=2, padding=1), nn.ReLU(),
                         nn.Conv2d(quant_dim, quant_dim, **second))


def cnn_output_side(grid_side: int, code_seq_len: int) -> int:
    """Side of the action grid that `build_cnn_encoder(.., code_seq_len)` makes from a `grid_side` grid."""
    side = (grid_side + 2 - 3) // 2 + 1
    if code_seq_len == 1:
        return side - 4 + 1
    if code_seq_len == 4:
        return side - 3 + 1
    return (side + 2 - 3) // 2 + 1


REPLACEMENT_SOURCES = ("used_codes", "recent_deltas")


def _world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


class NSVQ(nn.Module):
    """Quantises `last - first` (after projection and CNN downsampling) with one shared codebook.

    Args:
        dim: model dim D. quant_dim: q. codebook_size: K. code_seq_len: L in {1, 4, 16}.
        grid_side: patches per image side g (tokens are `g*g` per frame, row-major).
        replacement_steps: training steps (counted by this module) after which unused codes are
            replaced; empty disables replacement. replacement_threshold: a code is unused when
            (steps in which it was chosen) / (batch size) < threshold, as in the reference.
        replacement_source: what an unused code is overwritten with. "used_codes" (the reference): a
            random used code plus `eps` noise; with eps 1e-12 the copy equals its source in float32,
            so the copies never win a nearest-code search and a collapsed codebook stays collapsed.
            "recent_deltas": a random delta of the last training batch (the usual k-means style
            restart), which spreads the codes over the deltas actually seen.
    """

    def __init__(self, dim: int, quant_dim: int, codebook_size: int, code_seq_len: int, grid_side: int,
                 replacement_steps: Sequence[int] = REFERENCE_REPLACEMENT_STEPS,
                 replacement_threshold: float = 0.1, eps: float = 1e-12,
                 replacement_source: str = "used_codes") -> None:
        super().__init__()
        if replacement_source not in REPLACEMENT_SOURCES:
            raise ValueError(f"replacement_source={replacement_source!r}: must be one of {REPLACEMENT_SOURCES}")
        side = cnn_output_side(grid_side, code_seq_len)
        if side * side != code_seq_len:
            raise ValueError(f"grid_side={grid_side}: the reference CNN turns it into a {side}x{side} "
                             f"grid, not the {code_seq_len} action tokens asked for")
        self.quant_dim, self.codebook_size, self.code_seq_len = quant_dim, codebook_size, code_seq_len
        self.grid_side, self.action_side = grid_side, side
        self.replacement_steps = frozenset(int(s) for s in replacement_steps)
        self.replacement_threshold, self.eps = replacement_threshold, eps
        self.replacement_source = replacement_source
        self._recent_deltas: Tensor | None = None  # [B*L, q] of the last training step (detached)
        self.project_in = nn.Linear(dim, quant_dim)
        self.project_out = nn.Linear(quant_dim, dim)
        self.codebooks = nn.Parameter(torch.randn(codebook_size, quant_dim))
        self.cnn_encoder = build_cnn_encoder(quant_dim, code_seq_len)
        # Bookkeeping (not in the reference layout; the converter fills them with zeros): in how many
        # training steps since the last replacement each code was chosen at least once (summed over
        # ranks), and the number of training steps taken. Saved, so that a resumed run continues the
        # replacement schedule where it stopped.
        self.register_buffer("codebooks_used", torch.zeros(codebook_size, dtype=torch.long))
        self.register_buffer("step", torch.zeros((), dtype=torch.long))
        self._host_step: int | None = None
        self.register_load_state_dict_post_hook(NSVQ._forget_host_step)
        # Gradient accumulation: a trainer sets `step_ends = False` for the micro-batches that do not end
        # an optimiser step. Their usage is held in `_pending` ([K] used-at-least-once flags, then the
        # samples seen) and counted with the step's last micro-batch, so the schedule and the batch
        # size of the usage threshold are in optimiser steps, as in the reference.
        self.step_ends = True
        self._pending: Tensor | None = None

    @staticmethod
    def _forget_host_step(module: nn.Module, incompatible_keys: object) -> None:
        module._host_step = None

    def to_action_grid(self, tokens: Tensor) -> Tensor:
        """[B, hw, D] -> [B*L, q]: project, lay out as an image, downsample, flatten row-major."""
        b = tokens.shape[0]
        x = self.project_in(tokens).transpose(1, 2).reshape(b, self.quant_dim, self.grid_side, self.grid_side)
        x = self.cnn_encoder(x)  # [B, q, a, a]
        return x.permute(0, 2, 3, 1).reshape(b * self.code_seq_len, self.quant_dim)

    def delta(self, first: Tensor, last: Tensor) -> Tensor:
        """[B, hw, D] x 2 -> the change to quantise [B*L, q]."""
        return self.to_action_grid(last) - self.to_action_grid(first)

    def nearest(self, delta: Tensor) -> Tensor:
        """Index of the nearest code by squared L2 (the reference's expanded formula): [N, q] -> [N] long."""
        with torch.no_grad():
            codes = self.codebooks.to(delta.dtype)
            dist2 = (delta.square().sum(1, keepdim=True) - 2 * delta @ codes.t()
                     + codes.t().square().sum(0, keepdim=True))
            return dist2.argmin(dim=1)

    def from_codes(self, vectors: Tensor) -> Tensor:
        """[B*L, q] -> [B, 1, a, a, D]: the reference's reshape (not transpose), then project_out."""
        b = vectors.shape[0] // self.code_seq_len
        x = vectors.reshape(b, self.quant_dim, self.code_seq_len).permute(0, 2, 1)
        return self.project_out(x).reshape(b, 1, self.action_side, self.action_side, -1)

    def embed_indices(self, indices: Tensor) -> Tensor:
        """Codes for given indices [B, L] -> action tokens [B, 1, a, a, D] (what `LAQ.decode` uses)."""
        return self.from_codes(self.codebooks[indices.reshape(-1)])

    def forward(self, first: Tensor, last: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """first, last: [B, hw, D] -> (quantized [B, 1, a, a, D], indices [B, L] long, perplexity []).

        Train mode: the noise-substituted delta, usage counting and scheduled replacement; eval mode:
        the codes (`inference`).
        """
        if not self.training:
            return self.inference(first, last)
        delta = self.delta(first, last)
        indices = self.nearest(delta)
        code = self.codebooks[indices]
        noise = torch.randn_like(delta)
        residual = (delta - code).norm(dim=1, keepdim=True)  # gradient path to the chosen codes
        out = delta + (residual / noise.norm(dim=1, keepdim=True) + self.eps) * noise
        if self.replacement_source == "recent_deltas":
            self._recent_deltas = delta.detach()
        self._count_usage(indices, first.shape[0])
        perplexity = perplexity_of(indices, self.codebook_size)
        return self.from_codes(out), indices.reshape(-1, self.code_seq_len), perplexity

    def inference(self, first: Tensor, last: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """The inference path whatever the mode: codes, no noise, no bookkeeping. Same outputs as forward."""
        indices = self.nearest(self.delta(first, last))
        perplexity = perplexity_of(indices, self.codebook_size)
        return self.from_codes(self.codebooks[indices]), indices.reshape(-1, self.code_seq_len), perplexity

    # ------------------------------------------------------------------------------------------------
    # Dead-code replacement
    # ------------------------------------------------------------------------------------------------
    @torch.compiler.disable  # host-side schedule and DDP collectives: run eagerly under torch.compile
    @torch.no_grad()
    def _count_usage(self, indices: Tensor, batch_size: int) -> None:
        """Count this step's usage (at least once per step), replace dead codes on the schedule.

        With gradient accumulation (`step_ends` False) only remember the usage of this micro-batch."""
        used = torch.zeros(self.codebook_size + 1, dtype=torch.long, device=indices.device)
        used[indices] = 1
        used[-1] = batch_size
        if self._pending is not None:  # earlier micro-batches of this optimiser step
            used[:-1] = torch.maximum(used[:-1], self._pending[:-1])
            used[-1] += self._pending[-1]
        if not self.step_ends:
            self._pending = used
            return
        self._pending = None
        if _world_size() > 1:
            dist.all_reduce(used)  # identical counts (and the global batch) on every rank
        self.codebooks_used += used[:-1]
        self.step += 1
        # A host-side mirror of `step` keeps the schedule check free of device->host syncs; it is
        # re-read from the buffer once after a state dict is loaded (resume).
        if self._host_step is None:
            self._host_step = int(self.step) - 1
        self._host_step += 1
        if self._host_step in self.replacement_steps:
            self.replace_unused_codes(int(used[-1]))

    @torch.no_grad()
    def replace_unused_codes(self, batch_size: int) -> int:
        """Overwrite codes with usage/batch_size < threshold by random used codes + eps noise.

        If no code is used, every code gets eps noise. Counters reset. Under DDP rank 0's result is
        broadcast so the codebook stays identical on every rank. Returns the number of replaced codes.
        """
        usage = self.codebooks_used.float() / batch_size
        unused = torch.nonzero(usage < self.replacement_threshold).flatten()
        used = torch.nonzero(usage >= self.replacement_threshold).flatten()
        book = self.codebooks
        if self.replacement_source == "recent_deltas" and self._recent_deltas is not None:
            if unused.numel():
                deltas = self._recent_deltas.to(book.dtype)
                book[unused] = deltas[torch.randint(deltas.shape[0], (unused.numel(),), device=deltas.device)]
        elif used.numel() == 0:
            book.add_(self.eps * torch.randn_like(book))
        elif unused.numel():
            pick = used[torch.randint(used.numel(), (unused.numel(),), device=used.device)]
            book[unused] = book[pick] + self.eps * torch.randn(unused.numel(), book.shape[1],
                                                                device=book.device, dtype=book.dtype)
        if _world_size() > 1:
            dist.broadcast(book.data, src=0)
        self.codebooks_used.zero_()
        log.info("NSVQ step %d: replaced %d unused codes", int(self.step), unused.numel())
        return int(unused.numel())
