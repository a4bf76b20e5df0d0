"""Reference import: a random reference-layout state dict, converted, must compute what the published
model computes. The TEST ORACLE below is an independent plain-PyTorch re-implementation of the reference
forward pass, written straight from shared/spec/LAQ_REFERENCE.md (einsum softmax attention, an explicit
causal Conv3d PEG fed through the quirky temporal reshape, the reshape-not-transpose after quantisation),
operating directly on the reference-layout state dict."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from einops import rearrange

from lapa.laq import LAQ, LAQConfig, load_model
from lapa.laq.convert import ConvertLAQConfig, convert_reference_state_dict, infer_config, run

# A copy of shared/spec/laq_reference_keys.tsv (the published key layout), kept with the tests so they
# run wherever the repository is cloned.
KEYS_TSV = Path(__file__).parent / "data" / "laq_reference_keys.tsv"

# Tiny oracle sizes; heads * dim_head != dim on purpose, so that a transposed weight cannot pass.
TINY = dict(image=32, patch=4, channels=3, dim=40, heads=2, dim_head=12, quant=6, codes=8,
            spatial=2, temporal=1)


def reference_key_patterns() -> list[tuple[str, tuple[int, ...]]]:
    """(key pattern, paper shape) from laq_reference_keys.tsv; the canonical published layout."""
    rows = []
    for line in KEYS_TSV.read_text().splitlines()[1:]:
        key, shape = line.split("\t")
        rows.append((key, tuple(int(s) for s in re.findall(r"\d+", shape))))
    return rows


def tiny_shape(key: str, s: dict) -> tuple[int, ...]:
    """The shape of a reference key at the tiny sizes of `s` (same roles as the paper shapes)."""
    d, h, dh, q, k = s["dim"], s["heads"], s["dim_head"], s["quant"], s["codes"]
    inner, ff, cpp = h * dh, int(4 * (2 / 3) * d), s["channels"] * s["patch"] ** 2
    rules = [
        (r"net\.0\.0\.weight$", (d, 2)), (r"net\.[01]\.0\.bias$", (d,)), (r"net\.1\.0\.weight$", (d, d)),
        (r"net\.2\.weight$", (h, d)), (r"net\.2\.bias$", (h,)),
        (r"to_patch_emb_first_frame\.1\.", (cpp,)), (r"to_patch_emb_first_frame\.2\.weight", (d, cpp)),
        (r"to_patch_emb_first_frame\.[23]\.", (d,)),
        (r"dsconv\.weight", (d, 1, 3, 3, 3)), (r"dsconv\.bias", (d,)),
        (r"\.1\.null_kv", (h, 0, dh)), (r"\.2\.null_kv", (h, 4, dh)), (r"_scale$", (dh,)),
        (r"norm\.(gamma|beta)$", (d,)), (r"norm_out\.", (d,)),
        (r"to_q\.weight", (inner, d)), (r"to_kv\.weight", (2 * inner, d)), (r"to_out\.weight", (d, inner)),
        (r"\.3\.0\.", (d,)), (r"\.3\.1\.weight", (2 * ff, d)), (r"\.3\.4\.weight", (d, ff)),
        (r"vq\.codebooks", (k, q)), (r"project_in\.weight", (q, d)), (r"project_in\.bias", (q,)),
        (r"project_out\.weight", (d, q)), (r"project_out\.bias", (d,)),
        (r"cnn_encoder\.0\.weight", (q, q, 3, 3)),
        (r"cnn_encoder\.2\.weight", (q, q, s.get("kernel2", 3), s.get("kernel2", 3))),
        (r"cnn_encoder\.[02]\.bias", (q,)),
        (r"to_pixels_first_frame\.0\.weight", (cpp, d)), (r"to_pixels_first_frame\.0\.bias", (cpp,)),
    ]
    for pattern, shape in rules:
        if re.search(pattern, key):
            return shape
    raise AssertionError(f"no tiny shape rule for {key}")


def random_reference_state_dict(s: dict, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    depth = {"enc_spatial": s["spatial"], "enc_temporal": s["temporal"], "dec_spatial": s["spatial"]}
    sd = {}
    for pattern, _ in reference_key_patterns():
        keys = [pattern]
        if "{i}" in pattern:
            keys = [pattern.replace("{i}", str(i)) for i in range(depth[pattern.split("_transformer")[0]])]
        for key in keys:
            shape = tiny_shape(key, s)
            if key.endswith(".beta"):
                sd[key] = torch.zeros(shape)  # LN0's beta: a zero buffer in the reference
            elif key.endswith(("gamma", "_scale")) or re.search(r"(emb_first_frame\.[13]|\.3\.0)\.weight", key):
                sd[key] = 1 + 0.2 * torch.randn(shape, generator=g)
            else:
                sd[key] = 0.3 * torch.randn(shape, generator=g)
    return sd


# ------------------------------------------------------------------------------------------------------
# The oracle: the reference computation, from LAQ_REFERENCE.md, on the raw state dict.
# ------------------------------------------------------------------------------------------------------
def o_ln0(x, sd, p):
    return F.layer_norm(x, x.shape[-1:], sd[p + ".gamma"], sd[p + ".beta"])


def o_ff(x, sd, p):
    x = F.layer_norm(x, x.shape[-1:], sd[p + ".0.weight"], sd[p + ".0.bias"]) @ sd[p + ".1.weight"].t()
    a, gate = x.chunk(2, dim=-1)
    return (F.gelu(gate) * a) @ sd[p + ".4.weight"].t()


def o_attention(x, sd, p, heads, context=None, bias=None):
    q = o_ln0(x, sd, p + ".norm") @ sd[p + ".to_q.weight"].t()
    kv_in = x if context is None else o_ln0(context, sd, p + ".context_norm")  # quirk: raw x for self
    k, v = (kv_in @ sd[p + ".to_kv.weight"].t()).chunk(2, dim=-1)
    q, k, v = (rearrange(t, "b n (h d) -> b h n d", h=heads) for t in (q, k, v))
    null = sd[p + ".null_kv"]  # [h, 2n, d]: null key j at 2j, null value j at 2j+1
    n_null = null.shape[1] // 2
    nk = null[:, 0::2].unsqueeze(0).expand(x.shape[0], -1, -1, -1)
    nv = null[:, 1::2].unsqueeze(0).expand(x.shape[0], -1, -1, -1)
    k, v = torch.cat([nk, k], 2), torch.cat([nv, v], 2)
    q = q / q.norm(dim=-1, keepdim=True).clamp_min(1e-12) * sd[p + ".q_scale"]
    k = k / k.norm(dim=-1, keepdim=True).clamp_min(1e-12) * sd[p + ".k_scale"]
    sim = torch.einsum("bhid,bhjd->bhij", q, k) * 8
    if bias is not None:
        sim = sim + F.pad(bias, (n_null, 0), value=0.0)
    out = torch.einsum("bhij,bhjd->bhid", sim.softmax(dim=-1), v)
    return rearrange(out, "b h n d -> b n (h d)") @ sd[p + ".to_out.weight"].t()


def o_peg(x, sd, p, shape):
    orig = x.shape
    video = rearrange(x.reshape(*shape, -1), "b t h w d -> b d t h w")  # reshape as the reference does
    video = F.pad(video, (1, 1, 1, 1, 2, 0))  # w, h: 1 each side; t: 2 before (causal)
    out = F.conv3d(video, sd[p + ".dsconv.weight"], sd[p + ".dsconv.bias"], groups=video.shape[1])
    return rearrange(out, "b d t h w -> b t h w d").reshape(orig)


def o_transformer(x, sd, p, depth, heads, shape, bias=None, context=None):
    for i in range(depth):
        layer = f"{p}.layers.{i}"
        x = o_peg(x, sd, layer + ".0", shape) + x
        x = o_attention(x, sd, layer + ".1", heads, bias=bias) + x
        if context is not None:
            x = o_attention(x, sd, layer + ".2", heads, context=context) + x
        x = o_ff(x, sd, layer + ".3") + x
    return o_ln0(x, sd, p + ".norm_out")


def o_pos_bias(sd, h, w):
    pos = torch.stack(torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij"), -1).reshape(-1, 2)
    rel = (pos[:, None] - pos[None, :]).float()
    x = torch.sign(rel) * torch.log(rel.abs() + 1)
    net = "spatial_rel_pos_bias.net"
    x = F.leaky_relu(x @ sd[f"{net}.0.0.weight"].t() + sd[f"{net}.0.0.bias"], 0.1)
    x = F.leaky_relu(x @ sd[f"{net}.1.0.weight"].t() + sd[f"{net}.1.0.bias"], 0.1)
    x = x @ sd[f"{net}.2.weight"].t() + sd[f"{net}.2.bias"]
    return rearrange(x, "i j h -> h i j")


def o_patch_embed(frame, sd, p):
    x = rearrange(frame, "b c 1 (h p1) (w p2) -> b 1 h w (c p1 p2)", p1=p, p2=p)
    emb = "to_patch_emb_first_frame"
    x = F.layer_norm(x, x.shape[-1:], sd[f"{emb}.1.weight"], sd[f"{emb}.1.bias"])
    x = x @ sd[f"{emb}.2.weight"].t() + sd[f"{emb}.2.bias"]
    return F.layer_norm(x, x.shape[-1:], sd[f"{emb}.3.weight"], sd[f"{emb}.3.bias"])


def o_vq_in(tokens, sd, grid):
    x = tokens @ sd["vq.project_in.weight"].t() + sd["vq.project_in.bias"]  # [b, hw, q]
    x = rearrange(x, "b (h w) q -> b q h w", h=grid)
    x = F.relu(F.conv2d(x, sd["vq.cnn_encoder.0.weight"], sd["vq.cnn_encoder.0.bias"], stride=2, padding=1))
    x = F.conv2d(x, sd["vq.cnn_encoder.2.weight"], sd["vq.cnn_encoder.2.bias"], stride=1, padding=0)
    return rearrange(x, "b q a1 a2 -> (b a1 a2) q")


def oracle_encode(video, sd, s):
    """-> (patch tokens of frame t [b,1,h,w,d], delta [b*L, q])."""
    p, heads, grid = s["patch"], s["heads"], s["image"] // s["patch"]
    first_tok = o_patch_embed(video[:, :, :1], sd, p)
    tokens = torch.cat([first_tok, o_patch_embed(video[:, :, 1:], sd, p)], dim=1)  # [b, 2, h, w, d]
    b = tokens.shape[0]
    shape = (b, 2, grid, grid)
    bias = o_pos_bias(sd, grid, grid)
    x = rearrange(tokens, "b t h w d -> (b t) (h w) d")
    x = o_transformer(x, sd, "enc_spatial_transformer", s["spatial"], heads, shape, bias=bias)
    x = rearrange(x, "(b t) (h w) d -> (b h w) t d", b=b, h=grid)
    x = o_transformer(x, sd, "enc_temporal_transformer", s["temporal"], heads, shape)  # PEG quirk inside
    x = rearrange(x, "(b h w) t d -> b t (h w) d", b=b, h=grid)
    delta = o_vq_in(x[:, 1], sd, grid) - o_vq_in(x[:, 0], sd, grid)
    return first_tok, delta, bias


def oracle_forward(video, sd, s):
    """Inference path of the published model: (indices [b, L], reconstruction [b, c, H, W])."""
    p, heads, grid = s["patch"], s["heads"], s["image"] // s["patch"]
    first_tok, delta, bias = oracle_encode(video, sd, s)
    b, q = video.shape[0], s["quant"]
    book = sd["vq.codebooks"]
    idx = ((delta[:, None, :] - book[None]) ** 2).sum(-1).argmin(1)  # [b*L]
    n_tok = delta.shape[0] // b
    z = book[idx].reshape(b, q, n_tok).permute(0, 2, 1)  # reshape, not transpose: the reference scramble
    z = z @ sd["vq.project_out.weight"].t() + sd["vq.project_out.bias"]  # [b, L, d]
    x = rearrange(first_tok, "b 1 h w d -> b (h w) d")
    x = o_transformer(x, sd, "dec_spatial_transformer", s["spatial"], heads, (b, 1, grid, grid), bias, z)
    pix = x @ sd["to_pixels_first_frame.0.weight"].t() + sd["to_pixels_first_frame.0.bias"]
    pix = rearrange(pix, "b (h w) (c p1 p2) -> b c (h p1) (w p2)", h=grid, p1=p, p2=p)
    return idx.reshape(b, n_tok), pix


def spread_codebook(sd, video, s, seed=1):
    """Codes near actual deltas, so that the batch uses several different codes."""
    with torch.no_grad():
        delta = oracle_encode(video, sd, s)[1]
    g = torch.Generator().manual_seed(seed)
    rows = torch.randint(delta.shape[0], (s["codes"],), generator=g)
    sd["vq.codebooks"] = delta[rows] + 0.05 * delta.std() * torch.randn(s["codes"], s["quant"], generator=g)


@pytest.mark.parametrize("variant", [dict(), dict(kernel2=4)], ids=["4tokens", "1token"])
def test_converted_model_matches_reference_oracle(variant):
    torch.manual_seed(0)
    s = {**TINY, **variant}
    sd = random_reference_state_dict(s)
    video = torch.rand(6, 3, 2, s["image"], s["image"], generator=torch.Generator().manual_seed(5))
    spread_codebook(sd, video, s)
    model = convert_reference_state_dict(sd, image_size=s["image"])
    cfg = model.cfg
    assert (cfg.dim, cfg.heads, cfg.dim_head, cfg.patch_size, cfg.quant_dim, cfg.codebook_size) == (
        40, 2, 12, 4, 6, 8)
    assert (cfg.spatial_depth, cfg.temporal_depth, cfg.decoder_depth) == (2, 1, 2)
    assert cfg.code_seq_len == (1 if variant else 4) and cfg.pixel_convention == "reference"
    assert not model.training

    with torch.no_grad():
        ref_idx, ref_recon = oracle_forward(video, sd, s)
    assert len(ref_idx.unique()) >= 3  # the comparison exercises several codes
    idx = model.quantize(video)
    recon = model.reconstruct(video)
    assert idx.dtype == torch.long and torch.equal(idx, ref_idx)
    rel = (recon - ref_recon).norm() / ref_recon.norm()
    assert rel < 1e-4, rel
    out = model(video)  # eval forward: same codes and reconstruction; loss in [0, 1] pixel units
    assert torch.equal(out.indices, ref_idx)
    assert torch.allclose(out.recon, recon, rtol=0, atol=1e-6)
    assert torch.allclose(out.loss, F.mse_loss(ref_recon, video[:, :, 1]), rtol=1e-4)
    dec = model.decode(video[:, :, 0], ref_idx)
    assert (dec - ref_recon).norm() / ref_recon.norm() < 1e-4


def test_paper_layout_keys_and_shapes_match_reference():
    with torch.device("meta"):
        model = LAQ(LAQConfig(pixel_convention="reference"))
    ours = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    ref = {}
    for pattern, shape in reference_key_patterns():
        for i in range(8) if "{i}" in pattern else [None]:
            ref[pattern.replace("{i}", str(i)) if i is not None else pattern] = shape
    assert sorted(set(ours) - set(ref)) == ["vq.codebooks_used", "vq.step"]
    assert set(ref) <= set(ours)
    assert {k: ours[k] for k in ref} == ref
    assert sum(p.numel() for p in model.parameters()) == 343_796_080


def test_infer_config_paper_shapes():
    with torch.device("meta"):
        sd = LAQ(LAQConfig(pixel_convention="reference")).state_dict()
    cfg = infer_config(sd)
    assert (cfg.image_size, cfg.patch_size, cfg.dim, cfg.heads, cfg.dim_head, cfg.spatial_depth,
            cfg.temporal_depth, cfg.decoder_depth, cfg.code_seq_len, cfg.codebook_size, cfg.quant_dim) == (
        256, 32, 1024, 16, 64, 8, 8, 8, 4, 8, 32)


def test_module_prefix_is_accepted():
    sd = random_reference_state_dict(TINY)
    plain = convert_reference_state_dict(sd, image_size=32)
    prefixed = convert_reference_state_dict({"module." + k: v for k, v in sd.items()}, image_size=32)
    video = torch.rand(2, 3, 2, 32, 32)
    assert torch.equal(plain.reconstruct(video), prefixed.reconstruct(video))


def test_missing_unexpected_and_misshaped_keys_are_named():
    sd = random_reference_state_dict(TINY)
    missing = dict(sd)
    del missing["dec_spatial_transformer.layers.1.2.to_q.weight"]
    with pytest.raises(ValueError, match=r"missing keys.*dec_spatial_transformer\.layers\.1\.2\.to_q\.weight"):
        convert_reference_state_dict(missing, image_size=32)
    extra = {**sd, "vq.some_new_thing": torch.zeros(3)}
    with pytest.raises(ValueError, match=r"unexpected keys.*vq\.some_new_thing"):
        convert_reference_state_dict(extra, image_size=32)
    bad = dict(sd)
    bad["enc_temporal_transformer.layers.0.3.4.weight"] = torch.zeros(40, 7)
    with pytest.raises(ValueError, match=r"shape mismatches.*enc_temporal_transformer\.layers\.0\.3\.4\.weight"):
        convert_reference_state_dict(bad, image_size=32)
    with pytest.raises(ValueError, match="to_patch_emb_first_frame.2.weight"):
        convert_reference_state_dict({k: v for k, v in sd.items() if "patch_emb" not in k}, image_size=32)
    with pytest.raises(ValueError, match="pixel_convention"):
        convert_reference_state_dict(sd, config=LAQConfig(image_size=32, patch_size=4))


def test_convert_command_writes_a_loadable_checkpoint(tmp_path, capsys):
    sd = random_reference_state_dict(TINY)
    src, dst = tmp_path / "laq_openx.pt", tmp_path / "out" / "laq.pt"
    torch.save({"module." + k: v for k, v in sd.items()}, src)
    assert run(ConvertLAQConfig(src=str(src), dst=str(dst), image_size=32)) == 0
    assert "wrote" in capsys.readouterr().out
    model = load_model(dst)
    assert not model.training and model.cfg.pixel_convention == "reference"
    video = torch.rand(2, 3, 2, 32, 32)
    expected = convert_reference_state_dict(sd, image_size=32).reconstruct(video)
    assert torch.equal(model.reconstruct(video), expected)
    torch.save({k: v for k, v in sd.items() if k != "vq.codebooks"}, src)
    assert run(ConvertLAQConfig(src=str(src), dst=str(tmp_path / "bad.pt"), image_size=32)) == 2
    assert "vq.codebooks" in capsys.readouterr().out and not (tmp_path / "bad.pt").exists()
