"""The VLA's text tokenizer: the LM's own (`AutoTokenizer` of the same HF name or directory), or, for
tiny models built from config, the small byte-level BPE that ships in `lapa/vla/assets/tokenizer/`
(rebuilt by `scripts/build_tokenizer.py`, trained on the simulator's instructions and some English;
byte-level, so any Unicode text encodes without unknown tokens and decodes back exactly).

The VLA needs BOS (may be absent: Qwen-style LMs have none) and a pad token; tokenizers without one
(Llama-2's) pad with EOS. Pad ids never reach the LM: the model drops padded positions by the mask.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

BUILTIN = "builtin"  # the name configs use for the shipped tokenizer
BUILTIN_DIR = Path(__file__).resolve().parent / "assets" / "tokenizer"


def load_tokenizer(name_or_path: str | os.PathLike) -> PreTrainedTokenizerBase:
    """`BUILTIN` -> the shipped tokenizer (`PreTrainedTokenizerFast` with <s>, </s>, <pad>); anything
    else -> `AutoTokenizer.from_pretrained(name_or_path)` (hub name or a directory with tokenizer files)."""
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    if str(name_or_path) == BUILTIN:
        tokenizer = PreTrainedTokenizerFast(tokenizer_file=str(BUILTIN_DIR / "tokenizer.json"), bos_token="<s>",
                                            eos_token="</s>", pad_token="<pad>", clean_up_tokenization_spaces=False)
    else:
        tokenizer = AutoTokenizer.from_pretrained(str(name_or_path))
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token if tokenizer.eos_token is not None else tokenizer.unk_token
    if tokenizer.pad_token is None:
        raise ValueError(f"tokenizer {name_or_path!r} has no pad, EOS or UNK token to pad prompts with")
    return tokenizer
