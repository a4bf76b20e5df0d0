"""Building blocks of the LAQ transformers, with the math (and the parameter names) of the published LAQ.

Parameter names match the reference checkpoint layout (`laq_reference_keys.tsv`) so that a reference
state dict loads without renaming: `LayerNorm.gamma/beta`, `Attention.{null_kv, q_scale, k_scale, norm,
context_norm, to_q, to_kv, to_out}`, `PEG.dsconv`, `ContinuousPositionBias.net`, and FeedForward as an
`nn.Sequential` whose linear layers sit at indices 1 and 4.

Shapes: `b` batch, `n` query tokens, `m` key tokens, `h` heads, `d` dim_head, `D` model dim.
"""

from __future__ import annotations

from contextlib import nullcontext

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.attention import SDPBackend, sdpa_kernel


def l2norm(x: Tensor, eps: float = 1e-12) -> Tensor:
    """`F.normalize(x, dim=-1)` (x / max(|x|, eps)) as a multiply by rsqrt: a cheaper backward."""
    return x * torch.rsqrt(x.square().sum(-1, keepdim=True).clamp_min(eps * eps))


class LayerNorm(nn.Module):
    """Bias-less LayerNorm ("LN0"): learnable `gamma`; `beta` is a zero buffer kept in the state dict."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.gamma = nn.Parameter(torch.ones(dim))
        self.register_buffer("beta", torch.zeros(dim))

    def forward(self, x: Tensor) -> Tensor:
        return F.layer_norm(x, x.shape[-1:], self.gamma, self.beta)


class GEGLU(nn.Module):
    """Split the last axis into halves `(x, gate)` and return `gelu(gate) * x`."""

    def forward(self, x: Tensor) -> Tensor:
        x, gate = x.chunk(2, dim=-1)
        return F.gelu(gate) * x


def ff_inner_dim(dim: int, mult: float = 4.0) -> int:
    """Hidden width of the GEGLU feed-forward, computed exactly as the reference (2730 at dim 1024)."""
    return int(mult * (2 / 3) * dim)


def FeedForward(dim: int, mult: float = 4.0, dropout: float = 0.0) -> nn.Sequential:  # noqa: N802
    """LayerNorm (with bias) -> Linear(D, 2*inner) -> GEGLU -> Dropout -> Linear(inner, D).

    A plain `nn.Sequential` (not a class) so the state-dict keys are `.0`, `.1`, `.4` as in the reference.
    """
    inner = ff_inner_dim(dim, mult)
    return nn.Sequential(
        nn.LayerNorm(dim),
        nn.Linear(dim, inner * 2, bias=False),
        GEGLU(),
        nn.Dropout(dropout),
        nn.Linear(inner, dim, bias=False),
    )


class PEG(nn.Module):
    """Position generator: causal depthwise 3x3x3 conv over a `[b, t, h, w, D]` token video, as a residual.

    The parameter is the reference's `Conv3d(D, D, 3, groups=D)` (`dsconv`), applied with zero padding 1
    on h, w and causal padding (2 before, 0 after) on t. We compute it exactly with 2-D depthwise convs on
    each time slice instead (a depthwise Conv3d is very slow on CPU): output frame t is the sum over
    kernel slices k in {0, 1, 2} of conv2d(x[t - 2 + k], weight[:, :, k]) for the frames that exist, so
    with T = 2 frame 0 only uses slice 2 and frame 1 uses slices 1 and 2.
    """

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.dsconv = nn.Conv3d(dim, dim, 3, groups=dim)

    def forward(self, x: Tensor, shape: tuple[int, int, int, int]) -> Tensor:
        """x: any tensor holding `b*t*h*w*D` numbers; `shape` = (b, t, h, w) is how they are read.

        Returns the conv output (not the residual sum) with the shape of `x`. The temporal transformer
        passes tokens laid out `(b h w) t` with shape (b, t, h, w): the reference's reshape quirk, which
        this reproduces because we only reinterpret memory, exactly like the reference's `reshape`.
        """
        b, t, h, w = shape
        dim = x.shape[-1]
        video = x.reshape(b, t, h, w, dim)
        # [b*t, D, h, w] view with channels-last strides: no copy, and oneDNN's depthwise kernel likes it.
        frames = video.reshape(b * t, h, w, dim).permute(0, 3, 1, 2)
        weight = self.dsconv.weight  # [D, 1, 3, 3, 3] over (t, h, w)
        out = None
        for k in (2, 1, 0):
            shift = 2 - k  # kernel slice k reads frame t - shift
            if shift >= t:
                break
            src = frames if shift == 0 else frames.reshape(b, t, dim, h, w)[:, : t - shift].flatten(0, 1)
            y = F.conv2d(src, weight[:, :, k], self.dsconv.bias if shift == 0 else None,
                         padding=1, groups=dim)  # [b*(t-shift), D, h, w]
            if shift == 0:
                out = y.reshape(b, t, dim, h, w)
            else:  # in place on the conv output (autograd-safe: conv's backward does not need it)
                assert out is not None
                out[:, shift:] += y.reshape(b, t - shift, dim, h, w)
        assert out is not None
        return out.permute(0, 1, 3, 4, 2).reshape(x.shape)


class ContinuousPositionBias(nn.Module):
    """2-D continuous relative position bias: MLP on signed-log relative positions -> `[heads, hw, hw]`.

    The reference runs the MLP on all (hw)^2 pairs (4096 rows for an 8x8 grid, 4.3 GMAC at dim 1024).
    The MLP acts on each relative offset independently and there are only (2h-1)(2w-1) distinct offsets
    (225 for 8x8), so we evaluate it on those and gather: the same numbers at 1/18 of the work.
    """

    def __init__(self, dim: int, heads: int, layers: int = 2) -> None:
        super().__init__()
        self.net = nn.ModuleList([nn.Sequential(nn.Linear(2, dim), nn.LeakyReLU(0.1))])
        for _ in range(layers - 1):
            self.net.append(nn.Sequential(nn.Linear(dim, dim), nn.LeakyReLU(0.1)))
        self.net.append(nn.Linear(dim, heads))

    def forward(self, h: int, w: int) -> Tensor:
        weight = self.net[-1].weight
        dy = torch.arange(-(h - 1), h, device=weight.device)
        dx = torch.arange(-(w - 1), w, device=weight.device)
        # every distinct offset (dy, dx): [(2h-1)(2w-1), 2]
        rel = torch.stack(torch.meshgrid(dy, dx, indexing="ij"), -1).reshape(-1, 2).float()
        table = (torch.sign(rel) * torch.log(rel.abs() + 1)).to(weight.dtype)
        for layer in self.net:
            table = layer(table)  # [(2h-1)(2w-1), heads]
        # Pair (i, j) of the row-major grid has offset pos_i - pos_j; look up its row in the table.
        ys = torch.arange(h, device=weight.device).repeat_interleave(w)
        xs = torch.arange(w, device=weight.device).repeat(h)
        index = (ys[:, None] - ys[None, :] + h - 1) * (2 * w - 1) + (xs[:, None] - xs[None, :] + w - 1)
        # Contiguous: the fused GPU attention kernels need a mask whose last dimension has stride 1.
        return table[index].permute(2, 0, 1).contiguous()  # [heads, hw, hw]


class Attention(nn.Module):
    """Cosine-similarity attention with learned q/k scales, fixed logit scale 8 and optional null k/v.

    logits = (l2n(q) * q_scale) . (l2n(k) * k_scale) * 8 + bias; computed by
    `F.scaled_dot_product_attention(scale=8)` so that fused kernels are used on GPU.
    Self attention (no context) takes keys and values from the un-normalised `x` (reference quirk: only
    the queries see `norm`); cross attention takes them from `context_norm(context)`.
    """

    def __init__(self, dim: int, heads: int, dim_head: int, *, cross: bool = False,
                 dim_context: int | None = None, num_null_kv: int = 0, dropout: float = 0.0,
                 scale: float = 8.0) -> None:
        super().__init__()
        inner = heads * dim_head
        dim_context = dim_context or dim
        self.heads, self.dim_head, self.scale, self.dropout = heads, dim_head, scale, dropout
        self.cross = cross
        self.num_null_kv = num_null_kv
        self.norm = LayerNorm(dim)
        self.context_norm = LayerNorm(dim_context)  # unused by self attention, kept for the layout
        # Interleaved: null key j = null_kv[:, 2j], null value j = null_kv[:, 2j + 1].
        self.null_kv = nn.Parameter(torch.randn(heads, 2 * num_null_kv, dim_head))
        self.to_q = nn.Linear(dim, inner, bias=False)
        self.to_kv = nn.Linear(dim_context, inner * 2, bias=False)
        self.q_scale = nn.Parameter(torch.ones(dim_head))
        self.k_scale = nn.Parameter(torch.ones(dim_head))
        self.to_out = nn.Linear(inner, dim, bias=False)
        # Parameters the computation never uses (self attention's context_norm, an empty null_kv) stay in
        # the state dict for the reference layout but are frozen: DDP would otherwise wait for their
        # gradients forever ("parameters that were not used in producing loss").
        if not cross:
            self.context_norm.gamma.requires_grad_(False)
        if num_null_kv == 0:
            self.null_kv.requires_grad_(False)

    def forward(self, x: Tensor, context: Tensor | None = None, attn_bias: Tensor | None = None) -> Tensor:
        """x: [b, n, D]; context: [b, m, D_ctx] (cross attention only); attn_bias: [heads, n, m] or None
        -> [b, n, D]."""
        b, n, _ = x.shape
        if (context is not None) != self.cross:
            raise ValueError("cross attention needs a context; self attention takes none")
        kv_input = self.context_norm(context) if context is not None else x
        q = self.to_q(self.norm(x)).view(b, n, self.heads, self.dim_head).transpose(1, 2)  # [b, h, n, d]
        k, v = self.to_kv(kv_input).view(b, -1, 2, self.heads, self.dim_head).permute(2, 0, 3, 1, 4)
        if self.num_null_kv:
            null = self.null_kv.view(self.heads, self.num_null_kv, 2, self.dim_head)
            nk = null[:, :, 0].unsqueeze(0).expand(b, -1, -1, -1)
            nv = null[:, :, 1].unsqueeze(0).expand(b, -1, -1, -1)
            k, v = torch.cat((nk, k), dim=2), torch.cat((nv, v), dim=2)
            if attn_bias is not None:  # the null keys get zero bias
                attn_bias = F.pad(attn_bias, (self.num_null_kv, 0), value=0.0)
        # (l2n(q) * q_scale) . (l2n(k) * k_scale) = (l2n(q) * q_scale * k_scale) . l2n(k): folding k_scale
        # into the (smaller or equal) query side saves an elementwise pass over the keys.
        q = l2norm(q) * (self.q_scale * self.k_scale)
        k = l2norm(k)
        if attn_bias is not None:
            attn_bias = attn_bias.to(q.dtype)
        # On CPU the math kernel is the fastest for our sequences (fwd + bwd, 2 threads, 2026-11-27: the
        # 2-token temporal attention 1.6x, the 6-key cross attention 2.5x in bf16 against the CPU flash
        # kernel); calls with a bias that needs a gradient take it anyway. GPUs keep the fused kernels.
        with sdpa_kernel(SDPBackend.MATH) if q.device.type == "cpu" else nullcontext():
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_bias, scale=self.scale,
                                                 dropout_p=self.dropout if self.training else 0.0)
        return self.to_out(out.transpose(1, 2).reshape(b, n, self.heads * self.dim_head))
