"""The shipped tokenizer and the prompt: every simulator instruction encodes compactly without unknown
tokens, any English/Unicode text round-trips, prompts batch into padded tensors."""

from __future__ import annotations

import pytest
import torch

from lapa.config import ConfigError, to_schema
from lapa.vla import BUILTIN, PromptConfig, format_prompt, load_tokenizer, tokenize_prompts

REBUILD = "rebuild it: .venv/bin/python scripts/build_tokenizer.py"


def _simulator_instructions() -> list[str]:
    pytest.importorskip("pybullet")  # lapa.sim imports it
    from lapa.sim.tasks import all_instructions

    return all_instructions()


@pytest.fixture(scope="module")
def tok():
    return load_tokenizer(BUILTIN)


def test_special_tokens(tok):
    ids = {tok.pad_token_id, tok.bos_token_id, tok.eos_token_id}
    assert len(ids) == 3 and None not in ids
    assert tok.convert_ids_to_tokens([tok.bos_token_id, tok.eos_token_id, tok.pad_token_id]) == ["<s>", "</s>", "<pad>"]
    assert len(tok) == 2048
    assert tok("pick up").input_ids[0] == tok.bos_token_id  # like Llama's tokenizer when asked for specials


def test_covers_every_simulator_instruction(tok):
    instructions = _simulator_instructions()
    assert len(instructions) > 1000  # every template x object x reference x direction
    words = n_tokens = 0
    for text in instructions:
        ids = tok(text, add_special_tokens=False).input_ids
        assert tok.unk_token_id is None or tok.unk_token_id not in ids
        assert tok.decode(ids) == text
        words += len(text.split())
        n_tokens += len(ids)
    # learnt from the templates: the simulator's words are (almost all) single tokens
    assert n_tokens <= 1.1 * words, f"{n_tokens} tokens for {words} words: it misses the templates; {REBUILD}"


@pytest.mark.parametrize("text", [
    "Put the mug on the shelf, then wipe the table!",
    "naïve café — déjà vu; Größe, ÆØÅ, ñ",
    "東京でロボットがブロックを持ち上げる 🤖🦾 — émojis & CJK",
    "tabs\tand\nnewlines  double  spaces ",
    "numbers 3.14159, 1e-9, $42 and <s> literal specials </s>",
])
def test_round_trips_any_text(tok, text):
    ids = tok(text, add_special_tokens=False).input_ids
    assert tok.decode(ids) == text


def test_format_prompt():
    assert format_prompt("Pick up the RED cube.") == "What action should the robot take to pick up the red cube?"
    cfg = PromptConfig(template="In: {instruction}\nOut:", lowercase=False)
    assert format_prompt("  Open   the drawer ", cfg) == "In: Open the drawer\nOut:"
    with pytest.raises(ConfigError, match="exactly once"):
        to_schema({"template": "do it"}, PromptConfig)
    with pytest.raises(ConfigError, match="double other braces"):
        to_schema({"template": "{instruction} {x}"}, PromptConfig)


def test_tokenize_prompts(tok):
    enc = tokenize_prompts(tok, ["pick up the red cube", "lift the blue cylinder off the table please"])
    ids, mask = enc["input_ids"], enc["attention_mask"]
    assert ids.dtype == mask.dtype == torch.long and ids.shape == mask.shape and ids.shape[0] == 2
    assert mask[1].all() and not mask[0].all()  # padded to the longest prompt
    assert tok.bos_token_id not in ids  # the model adds BOS itself, before the image
    first = ids[0][mask[0].bool()].tolist()
    assert tok.decode(first) == "What action should the robot take to pick up the red cube?"
    short = tokenize_prompts(tok, ["lift the blue cylinder off the table please"], PromptConfig(max_tokens=5))
    assert short["input_ids"].shape == (1, 5)
    with pytest.raises(TypeError):
        tokenize_prompts(tok, "pick up the red cube")
