"""The latent action quantiser (LAQ): spatio-temporal encoder, NSVQ, cross-attention decoder.

Shapes: `B` batch, frames `[B, 3, 2, H, W]` (frame t, frame t+1), patch grid `g x g` with `g = H / p`,
`D` dim, `L` code_seq_len (an `a x a` action grid).

    frames -patch embed-> [B, 2, g, g, D] -spatial T over (B t)(g g)-> -temporal T over (B g g) t->
    first, last [B, g*g, D] -NSVQ-> actions [B, 1, a, a, D], indices [B, L]
    decoder: queries = detached patch embeddings of frame t, cross-attending to the actions
    -> to_pixels -> frame t+1 [B, 3, H, W]

Module attribute names equal the published model's, so its state dict loads as is (`convert.py`); the
only extra keys are NSVQ's bookkeeping buffers. Spec-style components (`LAQEncoder`, `NSVQ`,
`LAQDecoder`) share the code of `LAQ` through the mixins below.

Pixel conventions (`LAQConfig.pixel_convention`); the public API always takes and returns [0, 1]:
- "reference": the model sees [0, 1], a linear output, MSE in [0, 1] (the published model).
- "signed_tanh": the model sees [-1, 1], a tanh output, MSE in [-1, 1] (the spec's Tanh, made consistent).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from einops.layers.torch import Rearrange
from torch import Tensor, nn

from lapa.config import require
from lapa.laq.attention import ContinuousPositionBias
from lapa.laq.nsvq import ACTION_TOKENS, NSVQ, REFERENCE_REPLACEMENT_STEPS, REPLACEMENT_SOURCES, cnn_output_side
from lapa.laq.transformer import Transformer

PIXEL_CONVENTIONS = ("reference", "signed_tanh")


@dataclass
class LAQConfig:
    """Sizes and conventions of an LAQ. Defaults are the paper configuration (343.8 M parameters)."""

    image_size: int = 256  # input frames are image_size x image_size pixels
    patch_size: int = 32  # pixels per patch side: a (image_size / patch_size)^2 token grid
    channels: int = 3  # colour channels of the frames
    dim: int = 1024  # transformer width
    quant_dim: int = 32  # width of the latent action vectors the codebook quantises
    spatial_depth: int = 8  # layers of the spatial transformer (within a frame)
    temporal_depth: int = 8  # layers of the temporal transformer (across the two frames)
    decoder_depth: int = 8  # the reference uses spatial_depth for the decoder
    heads: int = 16  # attention heads
    dim_head: int = 64  # width per head
    codebook_size: int = 8  # codes per latent action token
    code_seq_len: int = 4  # action tokens: 1, 4 or 16
    pixel_convention: str = "signed_tanh"  # "reference" for imported published weights
    dropout: float = 0.0  # attention and feed-forward dropout (0 in the reference)
    # Optimiser steps at which dead codes restart (the reference schedule).
    replacement_steps: list[int] = field(default_factory=lambda: list(REFERENCE_REPLACEMENT_STEPS))
    replacement_threshold: float = 0.1  # codes used less than this share of the average are replaced
    # "used_codes": the reference (copies of used codes); "recent_deltas": restart at recent deltas.
    replacement_source: str = "used_codes"

    def __post_init__(self) -> None:
        for key in ("image_size", "patch_size", "channels", "dim", "quant_dim", "spatial_depth",
                    "temporal_depth", "decoder_depth", "heads", "dim_head"):
            value = getattr(self, key)
            require(isinstance(value, int) and value >= 1, f"model.{key}", value, "must be an integer >= 1")
        require(self.image_size % self.patch_size == 0, "model.image_size", self.image_size,
                f"must be a multiple of model.patch_size={self.patch_size}")
        require(self.codebook_size >= 2, "model.codebook_size", self.codebook_size, "must be >= 2")
        require(self.code_seq_len in ACTION_TOKENS, "model.code_seq_len", self.code_seq_len,
                f"must be one of {ACTION_TOKENS}")
        side = cnn_output_side(self.grid_side, self.code_seq_len)
        require(side * side == self.code_seq_len, "model.code_seq_len", self.code_seq_len,
                f"the reference CNN turns the {self.grid_side}x{self.grid_side} patch grid "
                f"(image_size/patch_size) into {max(side, 0)}x{max(side, 0)} tokens; use an 8x8 grid "
                "for 1 or 4 tokens and a 16x16 grid for 16")
        require(self.pixel_convention in PIXEL_CONVENTIONS, "model.pixel_convention",
                self.pixel_convention, f"must be one of {PIXEL_CONVENTIONS}")
        require(0.0 <= self.dropout < 1.0, "model.dropout", self.dropout, "must be in [0, 1)")
        require(all(int(s) >= 1 for s in self.replacement_steps), "model.replacement_steps",
                self.replacement_steps, "must be positive step numbers (empty disables replacement)")
        require(self.replacement_source in REPLACEMENT_SOURCES, "model.replacement_source",
                self.replacement_source, f"must be one of {REPLACEMENT_SOURCES}")
        require(0.0 <= self.replacement_threshold, "model.replacement_threshold",
                self.replacement_threshold, "must be >= 0")

    @property
    def grid_side(self) -> int:
        return self.image_size // self.patch_size


@dataclass
class LAQOutput:
    """loss: MSE in the model's pixel space (scalar); recon: frame t+1 [B, 3, H, W] in [0, 1] units (not
    clamped); indices: [B, L] long; perplexity: scalar tensor."""

    loss: Tensor
    recon: Tensor
    indices: Tensor
    perplexity: Tensor


def to_model_pixels(x: Tensor, convention: str) -> Tensor:
    """[0, 1] pixels -> the model's pixel space."""
    return x * 2 - 1 if convention == "signed_tanh" else x


def from_model_pixels(x: Tensor, convention: str) -> Tensor:
    """The model's pixel space -> [0, 1] units."""
    return (x + 1) / 2 if convention == "signed_tanh" else x


class _EncoderParts:
    """Patch embedding, 2-D position bias and the spatial + temporal transformers (reference names)."""

    cfg: LAQConfig

    def _build_encoder(self, cfg: LAQConfig) -> None:
        p, c, dim = cfg.patch_size, cfg.channels, cfg.dim
        self.spatial_rel_pos_bias = ContinuousPositionBias(dim, cfg.heads)
        # One module embeds both frames (shared weights, as the reference's "first frame" embedding).
        self.to_patch_emb_first_frame = nn.Sequential(
            Rearrange("b c t (h p1) (w p2) -> b t h w (c p1 p2)", p1=p, p2=p),  # channel-major packing
            nn.LayerNorm(c * p * p), nn.Linear(c * p * p, dim), nn.LayerNorm(dim))
        kw = dict(heads=cfg.heads, dim_head=cfg.dim_head, attn_dropout=cfg.dropout, ff_dropout=cfg.dropout)
        self.enc_spatial_transformer = Transformer(dim, cfg.spatial_depth, **kw)
        self.enc_temporal_transformer = Transformer(dim, cfg.temporal_depth, **kw)

    def position_bias(self) -> Tensor:
        """[heads, g*g, g*g], computed once per forward and shared by the encoder and the decoder."""
        g = self.cfg.grid_side
        return self.spatial_rel_pos_bias(g, g)

    def patch_embed(self, frames: Tensor) -> Tensor:
        """frames [B, C, T, H, W] in model pixel space -> tokens [B, T, g, g, D]."""
        return self.to_patch_emb_first_frame(frames)

    def encode_tokens(self, tokens: Tensor, attn_bias: Tensor) -> tuple[Tensor, Tensor]:
        """tokens [B, 2, g, g, D] -> (first, last) [B, g*g, D]."""
        b, t, h, w, d = tokens.shape
        shape = (b, t, h, w)
        x = self.enc_spatial_transformer(tokens.reshape(b * t, h * w, d), shape, attn_bias)
        # (b t) (h w) d -> (b h w) t d; the temporal PEG still reads it as (b, t, h, w): reference quirk.
        x = x.reshape(b, t, h * w, d).transpose(1, 2).reshape(b * h * w, t, d)
        x = self.enc_temporal_transformer(x, shape)
        x = x.reshape(b, h * w, t, d)
        return x[:, :, 0], x[:, :, 1]


class _DecoderParts:
    """Cross-attention spatial transformer and the linear patch-to-pixel head (reference names)."""

    cfg: LAQConfig

    def _build_decoder(self, cfg: LAQConfig) -> None:
        p, c, dim = cfg.patch_size, cfg.channels, cfg.dim
        self.dec_spatial_transformer = Transformer(
            dim, cfg.decoder_depth, cfg.heads, cfg.dim_head, cross_attn=True, dim_context=dim,
            num_null_kv=2, attn_dropout=cfg.dropout, ff_dropout=cfg.dropout)
        self.to_pixels_first_frame = nn.Sequential(
            nn.Linear(dim, c * p * p), Rearrange("b 1 h w (c p1 p2) -> b c 1 (h p1) (w p2)", p1=p, p2=p))

    def decode_tokens(self, queries: Tensor, actions: Tensor, attn_bias: Tensor | None) -> Tensor:
        """queries [B, g*g, D] (frame t), actions [B, L, D] -> frame t+1 [B, C, 1, H, W], model space."""
        b, n, d = queries.shape
        g = self.cfg.grid_side
        x = self.dec_spatial_transformer(queries, (b, 1, g, g), attn_bias, context=actions)
        out = self.to_pixels_first_frame(x.reshape(b, 1, g, g, d))
        return torch.tanh(out) if self.cfg.pixel_convention == "signed_tanh" else out


def _check_frames(frames: Tensor, cfg: LAQConfig, t: int = 2) -> None:
    expected = (cfg.channels, t, cfg.image_size, cfg.image_size)
    if frames.ndim != 5 or tuple(frames.shape[1:]) != expected:
        raise ValueError(f"frames must be [B, {', '.join(map(str, expected))}] with pixels in [0, 1]; "
                         f"got {list(frames.shape)}")


def _check_pixels(frames: Tensor) -> None:
    """The public inference methods take float pixels in [0, 1]: 0..255 values (uint8 images not divided
    by 255) would give confident nonsense. One host sync per call; `forward` (training) skips it."""
    if not frames.is_floating_point():
        raise ValueError(f"frames must be float pixels in [0, 1], got {frames.dtype} (divide by 255)")
    if frames.numel():
        lo, hi = (float(v) for v in torch.aminmax(frames.detach()))
        if lo < -1e-3 or hi > 1 + 1e-3:
            hint = " (0..255 pixels? divide by 255)" if hi > 2 else ""
            raise ValueError(f"frames must be pixels in [0, 1], got values in [{lo:.3g}, {hi:.3g}]{hint}")


class LAQEncoder(_EncoderParts, nn.Module):
    """Spec component: frames [B, C, 2, H, W] in model pixel space -> (first, last) [B, g*g, D]."""

    def __init__(self, cfg: LAQConfig) -> None:
        nn.Module.__init__(self)
        self.cfg = cfg
        self._build_encoder(cfg)

    def forward(self, frames: Tensor) -> tuple[Tensor, Tensor]:
        _check_frames(frames, self.cfg)
        return self.encode_tokens(self.patch_embed(frames), self.position_bias())


class LAQDecoder(_DecoderParts, nn.Module):
    """Spec component: context [B, (1,) g*g, D] and actions [B, 1, L, D] or [B, 1, a, a, D] ->
    frame t+1 [B, C, 1, H, W] in model pixel space (tanh-bounded for "signed_tanh")."""

    def __init__(self, cfg: LAQConfig) -> None:
        nn.Module.__init__(self)
        self.cfg = cfg
        self.spatial_rel_pos_bias = ContinuousPositionBias(cfg.dim, cfg.heads)
        self._build_decoder(cfg)

    def forward(self, context: Tensor, actions: Tensor) -> Tensor:
        b, d = context.shape[0], context.shape[-1]
        g = self.cfg.grid_side
        bias = self.spatial_rel_pos_bias(g, g)
        return self.decode_tokens(context.reshape(b, -1, d), actions.reshape(b, -1, d), bias)


class LAQ(_EncoderParts, _DecoderParts, nn.Module):
    """The latent action quantiser. `model(frames)` -> `LAQOutput`; see the module docstring."""

    def __init__(self, cfg: LAQConfig) -> None:
        nn.Module.__init__(self)
        self.cfg = cfg
        self._build_encoder(cfg)
        self.vq = NSVQ(cfg.dim, cfg.quant_dim, cfg.codebook_size, cfg.code_seq_len, cfg.grid_side,
                       replacement_steps=cfg.replacement_steps,
                       replacement_threshold=cfg.replacement_threshold,
                       replacement_source=cfg.replacement_source)
        self._build_decoder(cfg)

    def _run(self, frames: Tensor, train_vq: bool) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """frames [B, C, 2, H, W] in [0, 1] -> (pred model-space [B, C, H, W], target model-space,
        indices [B, L], perplexity)."""
        _check_frames(frames, self.cfg)
        x = to_model_pixels(frames, self.cfg.pixel_convention)
        tokens = self.patch_embed(x)  # [B, 2, g, g, D]
        bias = self.position_bias()
        first, last = self.encode_tokens(tokens, bias)
        if train_vq:
            actions, indices, perplexity = self.vq(first, last)
        else:
            actions, indices, perplexity = self.vq.inference(first, last)
        b, _, g, _, d = tokens.shape
        queries = tokens[:, 0].reshape(b, g * g, d).detach()  # patch embeddings of frame t
        pred = self.decode_tokens(queries, actions.reshape(b, -1, d), bias)[:, :, 0]
        return pred, x[:, :, 1], indices, perplexity

    def forward(self, frames: Tensor) -> LAQOutput:
        """frames [B, C, 2, H, W] in [0, 1]. Train mode: noise substitution and dead-code bookkeeping;
        eval mode: the codes themselves."""
        pred, target, indices, perplexity = self._run(frames, train_vq=self.training)
        loss = F.mse_loss(pred, target)
        return LAQOutput(loss, from_model_pixels(pred, self.cfg.pixel_convention), indices, perplexity)

    def compile_layers(self, **compile_kwargs) -> None:
        """`torch.compile` each transformer layer in place ("regional compilation"): the layers of one
        stack share their compiled code, so this compiles in a fraction of the time a whole-model
        compile takes (which did not finish in 180 s at the paper size on an H100) and fuses the same
        elementwise work; NSVQ, the position bias and the loss stay eager. Parameter names do not
        change. `compile_kwargs` go to `nn.Module.compile` (e.g. `mode="max-autotune"`)."""
        # One code object (Layer.forward) serves every layer, and it needs a graph per stack x (train,
        # eval) x (input requires grad or not): 8 on the CPU tiny model, exactly dynamo's default limit,
        # beyond which it would silently run eagerly.
        torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, 64)
        for stack in (self.enc_spatial_transformer, self.enc_temporal_transformer, self.dec_spatial_transformer):
            for layer in stack.layers:
                layer.compile(**compile_kwargs)

    @torch.no_grad()
    def quantize(self, frames: Tensor) -> Tensor:
        """frames [B, C, 2, H, W] in [0, 1] -> latent action indices [B, L] (long)."""
        _check_frames(frames, self.cfg)
        _check_pixels(frames)
        x = to_model_pixels(frames, self.cfg.pixel_convention)
        first, last = self.encode_tokens(self.patch_embed(x), self.position_bias())
        return self.vq.nearest(self.vq.delta(first, last)).reshape(-1, self.cfg.code_seq_len)

    @torch.no_grad()
    def reconstruct(self, frames: Tensor) -> Tensor:
        """frames [B, C, 2, H, W] in [0, 1] -> predicted frame t+1 [B, C, H, W] in [0, 1] units."""
        _check_pixels(frames)
        pred = self._run(frames, train_vq=False)[0]
        return from_model_pixels(pred, self.cfg.pixel_convention)

    @torch.no_grad()
    def decode(self, first_frame: Tensor, indices: Tensor) -> Tensor:
        """first_frame [B, C, H, W] in [0, 1], indices [B, L] -> frame t+1 [B, C, H, W] in [0, 1] units."""
        _check_frames(first_frame.unsqueeze(2), self.cfg, t=1)
        _check_pixels(first_frame)
        if indices.shape != (first_frame.shape[0], self.cfg.code_seq_len):
            raise ValueError(f"indices must be [B, {self.cfg.code_seq_len}]; got {list(indices.shape)}")
        if indices.min() < 0 or indices.max() >= self.cfg.codebook_size:
            raise ValueError(f"indices must lie in 0..{self.cfg.codebook_size - 1}")
        x = to_model_pixels(first_frame.unsqueeze(2), self.cfg.pixel_convention)
        tokens = self.patch_embed(x)
        b, _, g, _, d = tokens.shape
        actions = self.vq.embed_indices(indices.long()).reshape(b, -1, d)
        pred = self.decode_tokens(tokens.reshape(b, g * g, d), actions, self.position_bias())[:, :, 0]
        return from_model_pixels(pred, self.cfg.pixel_convention)


def count_parameters(model: nn.Module, trainable_only: bool = False) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


def build_model(cfg: LAQConfig | dict | Sequence) -> LAQ:
    """An `LAQ` from a config dataclass or a plain dict (e.g. the one stored in a checkpoint)."""
    if isinstance(cfg, LAQConfig):
        return LAQ(cfg)
    return LAQ(LAQConfig(**dict(cfg)))  # type: ignore[arg-type]
