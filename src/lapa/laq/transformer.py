"""The LAQ transformer stack: per layer PEG -> self attention -> (cross attention) -> feed-forward.

Each layer is an `nn.ModuleList([peg, self_attn, cross_attn_or_None, ff])` as in the reference, so the
state-dict keys are `layers.{i}.0.dsconv.*`, `layers.{i}.1.*`, `layers.{i}.2.*` (decoder only) and
`layers.{i}.3.*`, plus `norm_out.*`.
"""

from __future__ import annotations

from torch import Tensor, nn

from lapa.laq.attention import PEG, Attention, FeedForward, LayerNorm


class Layer(nn.ModuleList):
    """One residual layer `[peg, self_attn, cross_attn_or_None, ff]`: a ModuleList (keys `0..3` as in the
    reference) with a forward, so that it can be compiled on its own (`LAQ.compile_layers`)."""

    def forward(self, x: Tensor, video_shape: tuple[int, int, int, int] | None = None,
                attn_bias: Tensor | None = None, context: Tensor | None = None) -> Tensor:
        peg, self_attn, cross_attn, ff = self
        if peg is not None:
            if video_shape is None:
                raise ValueError("Transformer with PEG needs video_shape=(b, t, h, w)")
            x = peg(x, video_shape) + x
        x = self_attn(x, attn_bias=attn_bias) + x
        if cross_attn is not None and context is not None:
            x = cross_attn(x, context=context) + x
        return ff(x) + x


class Transformer(nn.Module):
    """`depth` residual layers on tokens `[B, n, D]` and a final bias-less LayerNorm (`norm_out`)."""

    def __init__(self, dim: int, depth: int, heads: int, dim_head: int, *, peg: bool = True,
                 cross_attn: bool = False, dim_context: int | None = None, num_null_kv: int = 2,
                 attn_dropout: float = 0.0, ff_dropout: float = 0.0, ff_mult: float = 4.0) -> None:
        super().__init__()
        self.layers = nn.ModuleList()
        for _ in range(depth):
            self.layers.append(Layer([
                PEG(dim) if peg else None,
                Attention(dim, heads, dim_head, dropout=attn_dropout),
                Attention(dim, heads, dim_head, cross=True, dim_context=dim_context, num_null_kv=num_null_kv,
                          dropout=attn_dropout) if cross_attn else None,
                FeedForward(dim, ff_mult, ff_dropout),
            ]))
        self.norm_out = LayerNorm(dim)

    def forward(self, x: Tensor, video_shape: tuple[int, int, int, int] | None = None,
                attn_bias: Tensor | None = None, context: Tensor | None = None) -> Tensor:
        """x: [B, n, D]; video_shape (b, t, h, w) for the PEG; attn_bias [heads, n, n]; context [B, m, D]."""
        for layer in self.layers:
            x = layer(x, video_shape, attn_bias, context)
        return self.norm_out(x)
