"""Latent-labelled shards (Stage 2 input, written by `lapa label`; DESIGN.md section 5).

    KEY.jpg          frame t (the same JPEG bytes as the pair's `t.jpg`)
    KEY.txt          the instruction ("" when the video had none)
    KEY.latent.npy   int64 [code_seq_len]: the LAQ's latent action, each in 0..codebook_size-1
    KEY.json         the pair's json plus `pair_key` and `shard`

Batches: {"image": float32 [B, 3, H, W] in [0, 1], "text": list[str], "latent_tokens": int64 [B, L]}.
Never flipped: a mirrored image contradicts its latent action. A label of another length, of a
non-integer type or outside the codebook is skipped and counted ("bad latent").
"""

from __future__ import annotations

from functools import partial

import numpy as np
import torch

from lapa.data.formats import ShardFormat, read_npy, read_text
from lapa.data.skips import has_parts, skip, where

IMAGE, TEXT, LATENT, META = "jpg", "txt", "latent.npy", "json"
REQUIRED = (IMAGE, TEXT, LATENT, META)
CODE_SEQ_LEN, CODEBOOK_SIZE = 4, 8  # the LAQ defaults (`LAQConfig`, spec: 4 tokens of 8 codes)


def read_latent(sample: dict, code_seq_len: int, codebook_size: int) -> np.ndarray | None:
    """int64 [code_seq_len] label; None (counted as "bad latent") if it is not one."""
    value = read_npy(sample, LATENT)
    if value is None:
        return None
    if (value.shape != (code_seq_len,) or value.dtype.kind not in "iu"
            or value.min() < 0 or value.max() >= codebook_size):
        return skip("bad latent", f"{where(sample)}: {value.dtype} {list(value.shape)} {value!r}, expected "
                                  f"{code_seq_len} integers in 0..{codebook_size - 1}")
    return value.astype(np.int64)


def fields(sample: dict, *, code_seq_len: int, codebook_size: int) -> dict | None:
    """Text and latent label of a sample; None (counted) if either is missing or corrupt."""
    if not has_parts(sample, REQUIRED):
        return None
    text, latent = read_text(sample, TEXT), read_latent(sample, code_seq_len, codebook_size)
    if text is None or latent is None:
        return None
    return {"text": text, "latent": latent}


def collate(images: torch.Tensor, rows: list[dict]) -> dict:
    """uint8 images `[B, 3, 1, H, W]` (made float `[B, 3, H, W]` by `FloatBatches`), texts, labels."""
    return {"image": images, "text": [row["text"] for row in rows],
            "latent_tokens": torch.as_tensor(np.stack([row["latent"] for row in rows]))}  # int64 [B, L]


def latent_labelled(code_seq_len: int = CODE_SEQ_LEN, codebook_size: int = CODEBOOK_SIZE) -> ShardFormat:
    """The format for labels of a LAQ with `code_seq_len` tokens of `codebook_size` codes."""
    if code_seq_len < 1 or codebook_size < 2:
        raise ValueError(f"code_seq_len={code_seq_len}, codebook_size={codebook_size}: need >= 1 and >= 2")
    return ShardFormat(name="latent_labelled", required=REQUIRED, optional=(), image_parts=(IMAGE,),
                       image_key="image", flips=False,
                       fields=partial(fields, code_seq_len=code_seq_len, codebook_size=codebook_size),
                       collate=collate)


LATENT_LABELLED = latent_labelled()
