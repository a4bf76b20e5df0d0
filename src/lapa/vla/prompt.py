"""The text the VLA reads: an instruction wrapped in a prompt template, tokenised as a padded batch.

Default template in the spirit of OpenVLA ("What action should the robot take to {instruction}?").
The prompt is tokenised without special tokens: the model adds BOS itself, in front of the image
tokens ([BOS] [IMG x N] [prompt] [ACT x k]).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from lapa.config import require

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase


@dataclass
class PromptConfig:
    template: str = "What action should the robot take to {instruction}?"
    lowercase: bool = True  # OpenVLA lowercases instructions; datasets capitalise inconsistently
    max_tokens: int | None = None  # longer prompts are truncated (bounds memory); None = never

    def __post_init__(self) -> None:
        require(self.template.count("{instruction}") == 1, "prompt.template", self.template,
                "must contain {instruction} exactly once")
        try:
            self.template.format(instruction="")
        except (KeyError, IndexError, ValueError) as err:
            require(False, "prompt.template", self.template, f"must be a str.format template with only "
                    f"{{instruction}} (double other braces): {err!r}")
        require(self.max_tokens is None or self.max_tokens >= 1, "prompt.max_tokens", self.max_tokens, "must be >= 1")


def format_prompt(instruction: str, cfg: PromptConfig | None = None) -> str:
    """'Pick up the red cube.' -> 'What action should the robot take to pick up the red cube?'"""
    cfg = cfg or PromptConfig()
    text = " ".join(instruction.split()).rstrip(".!?")  # one space between words; the template ends the sentence
    return cfg.template.format(instruction=text.lower() if cfg.lowercase else text)


def tokenize_prompts(tokenizer: PreTrainedTokenizerBase, instructions: Sequence[str],
                     cfg: PromptConfig | None = None) -> dict[str, torch.Tensor]:
    """Instructions -> {"input_ids": long [B, L], "attention_mask": long [B, L]}, padded to the longest
    prompt (either padding side works: the model re-aligns sequences by the mask)."""
    cfg = cfg or PromptConfig()
    if isinstance(instructions, str):
        raise TypeError("instructions must be a sequence of strings, not one string")
    texts = [format_prompt(i, cfg) for i in instructions]
    enc = tokenizer(texts, add_special_tokens=False, padding="longest", truncation=cfg.max_tokens is not None,
                    max_length=cfg.max_tokens, return_tensors="pt")
    return {"input_ids": enc["input_ids"].long(), "attention_mask": enc["attention_mask"].long()}
