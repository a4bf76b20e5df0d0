"""`LAPAPolicy`: a Stage 3 export (DESIGN.md section 9) as a policy: camera image + instruction -> 7-DoF action.

    policy = LAPAPolicy.from_pretrained("runs/finetune/export")      # device="auto", dtype="auto"
    action = policy.predict_action(image, "pick up the red cube")    # uint8 [H, W, 3] -> float32 [7]

What one call does (one forward pass of the VLA):
    image uint8 [H, W, 3], any size -> resized as the training frames were (shorter side to the training
    `data.image_size`, centre crop: `lapa.data.transforms.ensure_size`; the backbones then apply their own
    resize and normalisation) -> VLA -> logits [B, 7 K, 256] -> most likely bins -> de-binned by the
    export's `action_stats.json` -> actions float32 [B, K, 7]   (K = the export's action chunk, 1 = spec)

With action chunks (K > 1) `execution` says what `predict_action` returns, step after step of an episode
(`reset()` starts a new one; the simulator calls it before each episode):
    "first"      the chunk's first action; a new forward pass every step
    "open_loop"  the K actions of one chunk over K steps, then a new forward pass (K times fewer passes)
    "ensemble"   temporal ensembling (ACT, Zhao et al. 2023): every step a new chunk, and the action is
                 the weighted mean of every prediction made for this step by the last K chunks, weight
                 exp(-ensemble_decay * i) with i = 0 for the oldest prediction
`predict_actions` (batches, e.g. the server's) is stateless: the first action of each sample's chunk.
`predict_chunks` returns the whole chunks [B, K, 7].

Device "auto": CUDA when available, else CPU; dtype "auto": bf16 on CUDA, float32 on CPU.
The loader is registered for the export kind "lapa-vla" in `lapa.policy` (lazily: importing the registry
does not import the VLA), so `get_policy(DIR)` and `lapa sim eval policy=DIR` build this class.
"""

from __future__ import annotations

import os
from collections import deque
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from lapa.data.transforms import ensure_size
from lapa.training.cluster import resolve_device
from lapa.vla.action_tokenizer import ACTION_NAMES, ActionTokenizer
from lapa.vla.export import read_info
from lapa.vla.finetune_config import ACTION_DIM
from lapa.vla.model import VLA

EXECUTIONS = ("first", "open_loop", "ensemble")


def resolve_dtype(dtype: str | torch.dtype, device: torch.device) -> torch.dtype:
    """"auto" -> bf16 on CUDA, float32 elsewhere; a name ("bfloat16", "float32", ...) or a torch dtype."""
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    value = getattr(torch, str(dtype), None)
    if not isinstance(value, torch.dtype):
        raise ValueError(f"dtype={dtype!r}: not a torch dtype (auto, float32, bfloat16, float16)")
    return value


class LAPAPolicy:
    """A finetuned VLA (Stage 3) and its action tokenizer, as a `lapa.policy.Policy`."""

    def __init__(self, model: VLA, tokenizer: ActionTokenizer, *, image_size: int | None = None,
                 execution: str = "first", ensemble_decay: float = 0.1, info: dict[str, Any] | None = None) -> None:
        head = model.config.head
        if head.num_classes != tokenizer.num_bins or head.num_outputs % ACTION_DIM:
            raise ValueError(f"the model's head predicts {head.num_outputs} x {head.num_classes}: not 7 x K "
                             f"actions in {tokenizer.num_bins} bins (a Stage 2 model? finetune it first)")
        if execution not in EXECUTIONS:
            raise ValueError(f"execution={execution!r}: must be one of {EXECUTIONS}")
        if ensemble_decay < 0:
            raise ValueError(f"ensemble_decay={ensemble_decay}: must be >= 0")
        self.model, self.tokenizer = model.eval(), tokenizer
        self.chunk = head.num_outputs // ACTION_DIM  # K
        # frames are resized to the training data's size; without it (an older export), to the backbone's
        self.image_size = int(image_size or model.vision.backbones[0].image_size)
        self.execution, self.ensemble_decay = execution, float(ensemble_decay)
        self.info_dict = dict(info or {})
        self.device = next(model.parameters()).device
        self.dtype = next(model.parameters()).dtype
        self._queue: deque[np.ndarray] = deque()  # open_loop: the rest of the current chunk
        self._chunks: deque[np.ndarray] = deque(maxlen=self.chunk)  # ensemble: the last K chunks, oldest first

    @classmethod
    def from_pretrained(cls, directory: str | os.PathLike, device: str | torch.device = "auto",
                        dtype: str | torch.dtype = "auto", execution: str = "first", ensemble_decay: float = 0.1,
                        **_: Any) -> LAPAPolicy:
        """Load a Stage 3 export (config, weights, tokenizer, action_stats.json). Options the registry passes
        for other policies (the simulator's `oracle=`, `sim=`) are ignored."""
        directory = Path(directory)
        info = read_info(directory)
        if int(info.get("stage", 3)) != 3:
            raise ValueError(f"{directory}: a Stage {info.get('stage')} export predicts latent actions, not robot "
                             f"actions; finetune it first (lapa finetune init={directory})")
        if not (directory / "action_stats.json").is_file():
            raise FileNotFoundError(f"{directory}: no action_stats.json (the action tokenizer a Stage 3 export "
                                    "carries); was it written by lapa finetune?")
        dev = resolve_device(str(device))  # auto: CUDA when available, else CPU
        if dev.type == "cuda" and not torch.cuda.is_available():
            raise ValueError(f"device={device}: CUDA is not available here (use device=auto or cpu)")
        model = VLA.from_pretrained(directory, device=dev, dtype=resolve_dtype(dtype, dev))
        tokenizer = ActionTokenizer.load(directory)
        image_size = (info.get("training") or {}).get("data", {}).get("image_size")
        return cls(model, tokenizer, image_size=image_size, execution=execution, ensemble_decay=ensemble_decay,
                   info={**info, "directory": str(directory)})

    # ------------------------------------------------------------------------------------ batches
    def preprocess(self, images: Sequence[np.ndarray]) -> torch.Tensor:
        """uint8 images [H, W, 3] (any sizes) -> uint8 [B, S, S, 3] on the model's device, S = image_size."""
        frames = []
        for i, image in enumerate(images):
            image = np.asarray(image)
            if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3 or min(image.shape[:2]) < 1:
                raise ValueError(f"image {i}: expected uint8 [H, W, 3], got {image.dtype} {list(image.shape)}")
            frames.append(ensure_size(np.ascontiguousarray(image), self.image_size))
        return torch.from_numpy(np.stack(frames)).to(self.device)

    @torch.inference_mode()
    def predict_chunks(self, images: Sequence[np.ndarray], instructions: Sequence[str]) -> np.ndarray:
        """float32 [B, K, 7]: each sample's predicted chunk of K actions (one forward pass for the batch)."""
        if len(images) != len(instructions) or not images:
            raise ValueError(f"{len(images)} images and {len(instructions)} instructions: need as many, >= 1")
        for i, text in enumerate(instructions):
            if not isinstance(text, str) or not text.strip():
                raise ValueError(f"instruction {i}: must be a non-empty string, got {text!r}")
        pixels = self.preprocess(images)
        enc = self.model.tokenize(list(instructions))
        logits = self.model(pixels, enc["input_ids"].to(self.device), enc["attention_mask"].to(self.device))
        bins = logits.argmax(-1).reshape(len(images), self.chunk, ACTION_DIM)  # [B, K, 7]
        return self.tokenizer.decode(bins.cpu().numpy()).astype(np.float32)

    def predict_actions(self, images: Sequence[np.ndarray], instructions: Sequence[str]) -> np.ndarray:
        """float32 [B, 7]: the first action of each sample's chunk (stateless)."""
        return self.predict_chunks(images, instructions)[:, 0]

    # ------------------------------------------------------------------------------------ episodes
    def reset(self, **_: Any) -> None:
        """Start a new episode: forget the chunks of the last one."""
        self._queue.clear()
        self._chunks.clear()

    def predict_action(self, image: np.ndarray, instruction: str) -> np.ndarray:
        """uint8 [H, W, 3] + instruction -> float32 [7], by `execution` (see the module docstring)."""
        if self.execution == "open_loop" and self._queue:
            return self._queue.popleft()
        chunk = self.predict_chunks([image], [instruction])[0]  # [K, 7]
        if self.execution == "first" or self.chunk == 1:
            return chunk[0]
        if self.execution == "open_loop":
            self._queue.extend(chunk[1:])
            return chunk[0]
        self._chunks.append(chunk)
        # the chunk predicted j steps ago (j = 0 newest) predicted this step at its index j
        n = len(self._chunks)
        preds = np.stack([self._chunks[i][n - 1 - i] for i in range(n)])  # [n, 7], oldest first
        weights = np.exp(-self.ensemble_decay * np.arange(n))  # oldest first, as ACT weighs them
        return (weights[:, None] * preds).sum(0).astype(np.float32) / np.float32(weights.sum())

    # ------------------------------------------------------------------------------------ description
    def info(self) -> dict[str, Any]:
        """What the policy is (JSON-serialisable): for `lapa serve`'s /info and reports."""
        training = self.info_dict.get("training") or {}
        return {"kind": self.info_dict.get("kind"), "stage": self.info_dict.get("stage"),
                "directory": self.info_dict.get("directory"), "parameters": self.info_dict.get("parameters"),
                "action_layout": list(ACTION_NAMES), "action_chunk": self.chunk, "execution": self.execution,
                "image_size": self.image_size, "device": str(self.device), "dtype": str(self.dtype).split(".")[-1],
                "prompt_template": self.model.config.prompt.template,
                "training": {k: training.get(k) for k in ("command", "experiment_name", "init", "steps", "seed")
                             if k in training},
                "action_stats": self.tokenizer.to_dict()}


def load_policy(directory: str, **kwargs: Any) -> LAPAPolicy:
    """The registry's loader for export kind "lapa-vla" (`lapa.policy.register_loader`)."""
    return LAPAPolicy.from_pretrained(directory, **kwargs)
