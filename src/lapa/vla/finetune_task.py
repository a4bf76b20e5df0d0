"""`ActionFinetuneTask` (spec 2.3.4): the LightningModule of `lapa finetune` (cross-entropy on binned
actions, validation in raw and normalised units, the predicted-vs-true picture), and the chunk targets
(`EpisodeActions`: the next K actions of each step's episode).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch

from lapa.config import to_dict
from lapa.data.episodes import step_actions
from lapa.data.lockstep import is_dummy
from lapa.vla.finetune_config import ACTION_DIM, FinetuneTrainingConfig
from lapa.vla.model import VLA
from lapa.vla.parallelize import ParallelConfig

log = logging.getLogger(__name__)




# ---------------------------------------------------------------------------------------------- targets
class EpisodeActions:
    """The actions of whole episodes by (episode id, step), for action chunks: the next K actions of a
    step, padded with the episode's last action. Read from the `.json` and `.action.npy` members only."""

    def __init__(self, shards: str | Iterable[str], episodes: Iterable[str] | None = None) -> None:
        rows: dict[str, list[tuple[int, np.ndarray]]] = {}
        for episode, step, action in step_actions(shards, episodes):
            rows.setdefault(episode, []).append((step, action))
        self.steps: dict[str, np.ndarray] = {}
        self.actions: dict[str, np.ndarray] = {}
        for episode, items in rows.items():
            items.sort(key=lambda item: item[0])
            self.steps[episode] = np.array([s for s, _ in items], dtype=np.int64)
            self.actions[episode] = np.stack([a for _, a in items])

    def chunks(self, episode_ids: Sequence[str], steps: Sequence[int], k: int) -> np.ndarray:
        """float32 [B, k, 7]: the actions of steps step, step+1, ... (the next k of the episode in step
        order), the last one repeated past the episode's end."""
        out = np.empty((len(episode_ids), k, ACTION_DIM), dtype=np.float32)
        for i, (episode, step) in enumerate(zip(episode_ids, steps, strict=True)):
            if episode not in self.steps:
                raise KeyError(f"episode {episode!r} is not in the action table")
            table = self.actions[episode]
            start = int(np.searchsorted(self.steps[episode], int(step)))
            out[i] = table[np.minimum(np.arange(start, start + k), len(table) - 1)]
        return out


# ---------------------------------------------------------------------------------------------- the task
class ActionFinetuneTask(L.LightningModule):
    """Stage 3 on robot-step batches `{"image", "text", "actions" [B, 7], "episode_id", "step"}` (spec
    2.3.4): cross-entropy on the binned actions (7 x K); validation de-bins the most likely bins and
    reports cross-entropy, token accuracy, and MSE / L1 per dimension, raw and normalised by the
    dimension's range (`ActionTokenizer.normalize`; the spec's target: normalised MSE < 0.05)."""

    def __init__(self, model: VLA, tokenizer: Any, training: FinetuneTrainingConfig | None = None,
                 chunk: int = 1, train_actions: EpisodeActions | None = None,
                 val_actions: EpisodeActions | None = None, parallel: ParallelConfig | None = None,
                 picture_dir: str | Path | None = None) -> None:
        super().__init__()
        self.model, self.tok, self.chunk = model, tokenizer, chunk
        self.training_cfg = training or FinetuneTrainingConfig()
        self.train_actions, self.val_actions = train_actions, val_actions
        self.parallel = parallel
        self.picture_dir = Path(picture_dir) if picture_dir is not None else None
        head = model.config.head
        if head.num_outputs != ACTION_DIM * chunk or head.num_classes != tokenizer.num_bins:
            raise ValueError(f"the model's head predicts {head.num_outputs} x {head.num_classes}, not "
                             f"{ACTION_DIM} x {chunk} x {tokenizer.num_bins} (action_chunk, num_bins)")
        self.save_hyperparameters({"action_chunk": chunk, "action_stats": tokenizer.to_dict(),
                                   "model": to_dict(model.config)})
        self._val: dict[str, torch.Tensor] = {}
        self._val_pairs: list[tuple[torch.Tensor, torch.Tensor]] = []
        self.last_val: dict[str, float] = {}
        self.last_val_step = -1
        self._sharded = False  # whether configure_model has applied FSDP2

    # ------------------------------------------------------------------------------ pieces
    def configure_model(self) -> None:
        """Under ModelParallelStrategy (several devices): FSDP2 by `parallelize_vla`, as in Stage 2. Lightning
        calls this hook again for every `validate`/`test` after `fit`: it shards once (idempotent)."""
        mesh = getattr(self, "device_mesh", None)
        if mesh is not None and self.parallel is not None and not self._sharded:
            from lapa.vla.parallelize import parallelize_vla

            parallelize_vla(self.model, mesh, self.parallel)
            self._sharded = True

    def targets(self, batch: dict, table: EpisodeActions | None) -> torch.Tensor:
        """float32 [B, K, 7] on the device: the step's action, and the next K-1 of its episode."""
        actions = batch["actions"].to(self.device).float()
        if self.chunk == 1:
            return actions.unsqueeze(1)
        if table is None:
            raise RuntimeError("action_chunk > 1 needs the episodes' action table")
        chunk = table.chunks(batch["episode_id"], batch["step"].tolist(), self.chunk)
        return torch.as_tensor(chunk, device=self.device)

    def forward(self, images: torch.Tensor, texts: Sequence[str]) -> torch.Tensor:
        """logits [B, 7K, num_bins]."""
        enc = self.model.tokenize(list(texts))
        return self.model(images, enc["input_ids"].to(self.device), enc["attention_mask"].to(self.device))

    @torch.no_grad()
    def predict_actions(self, images: torch.Tensor, texts: Sequence[str]) -> torch.Tensor:
        """float32 [B, K, 7]: the de-binned most likely bins."""
        bins = self(images, texts).argmax(-1).reshape(len(texts), self.chunk, ACTION_DIM)
        return self.tok.decode(bins)

    # ------------------------------------------------------------------------------ steps
    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        target = self.targets(batch, self.train_actions)  # [B, K, 7]
        bins = self.tok.encode(target).reshape(target.shape[0], -1)  # [B, 7K]
        logits = self(batch["image"], batch["text"])
        loss = self.model.loss(logits, bins)
        bs = bins.shape[0]
        self.log("train/loss", loss, prog_bar=True, batch_size=bs)
        self.log("train/acc", (logits.detach().argmax(-1) == bins).float().mean(), batch_size=bs)
        return loss

    def on_validation_epoch_start(self) -> None:
        z = lambda *shape: torch.zeros(shape, dtype=torch.float64, device=self.device)  # noqa: E731
        self._val = {"loss": z(), "samples": z(), "correct": z(ACTION_DIM), "sq": z(ACTION_DIM),
                     "abs": z(ACTION_DIM), "nsq": z(ACTION_DIM), "nabs": z(ACTION_DIM), "nsq0": z(ACTION_DIM),
                     "nsq_mean": z(ACTION_DIM)}
        self._val_pairs = []

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        if is_dummy(batch):  # lockstep filler on a rank out of batches: the forward's collectives only
            self(batch["image"], batch["text"])
            return
        target = self.targets(batch, self.val_actions)  # [B, K, 7]
        B = target.shape[0]
        bins = self.tok.encode(target).reshape(B, -1)
        logits = self(batch["image"], batch["text"])
        s = self._val
        s["loss"] += self.model.loss(logits, bins).double() * B
        s["samples"] += B
        pred_bins = logits.argmax(-1)
        s["correct"] += (pred_bins == bins).reshape(B, self.chunk, ACTION_DIM).double().sum((0, 1))
        pred = self.tok.decode(pred_bins.reshape(B, self.chunk, ACTION_DIM)).to(target.dtype)
        err = (pred - target).double()
        s["sq"] += err.pow(2).sum((0, 1))
        s["abs"] += err.abs().sum((0, 1))
        nerr = (self.tok.normalize(pred) - self.tok.normalize(target)).double()
        s["nsq"] += nerr.pow(2).sum((0, 1))
        s["nabs"] += nerr.abs().sum((0, 1))
        s["nsq0"] += nerr[:, 0].pow(2).sum(0)
        mean = torch.as_tensor([d.mean for d in self.tok.dims], dtype=target.dtype, device=target.device)
        s["nsq_mean"] += (self.tok.normalize(mean.expand_as(target[:, 0])) -
                          self.tok.normalize(target[:, 0])).double().pow(2).sum(0)
        if sum(len(p) for p, _ in self._val_pairs) < 512:
            self._val_pairs.append((pred[:, 0].detach().cpu(), target[:, 0].detach().cpu()))

    def on_validation_epoch_end(self) -> None:
        if not self._val:
            return
        s = {k: self.trainer.strategy.reduce(v, reduce_op="sum") for k, v in self._val.items()}
        n = float(s["samples"])
        if n == 0:
            return
        per = n * self.chunk
        names = [d.name for d in self.tok.dims]
        metrics: dict[str, float] = {"loss": float(s["loss"]) / n,
                                     "acc": float(s["correct"].sum()) / (per * ACTION_DIM),
                                     "mse": float(s["sq"].sum()) / (per * ACTION_DIM),
                                     "l1": float(s["abs"].sum()) / (per * ACTION_DIM),
                                     "nmse": float(s["nsq"].sum()) / (per * ACTION_DIM),
                                     "nl1": float(s["nabs"].sum()) / (per * ACTION_DIM),
                                     "nmse_step0": float(s["nsq0"].sum()) / (n * ACTION_DIM),
                                     "nmse_mean_action": float(s["nsq_mean"].sum()) / (n * ACTION_DIM),
                                     "samples": n}
        for i, name in enumerate(names):
            metrics[f"acc_{name}"] = float(s["correct"][i]) / per
            metrics[f"mse_{name}"] = float(s["sq"][i]) / per
            metrics[f"l1_{name}"] = float(s["abs"][i]) / per
            metrics[f"nmse_{name}"] = float(s["nsq"][i]) / per
            metrics[f"nl1_{name}"] = float(s["nabs"][i]) / per
        for key, value in metrics.items():
            self.log(f"val/{key}", value, prog_bar=key in ("loss", "nmse"), sync_dist=False)
        if not self.trainer.sanity_checking:
            self.last_val, self.last_val_step = metrics, self.global_step
            if self.picture_dir is not None and self.trainer.is_global_zero and self._val_pairs:
                pred = torch.cat([p for p, _ in self._val_pairs]).numpy()
                true = torch.cat([t for _, t in self._val_pairs]).numpy()
                scatter_picture(pred, true, names, self.picture_dir / f"val_step_{self.global_step:08d}.png")

    # ------------------------------------------------------------------------------ optimisation
    def configure_gradient_clipping(self, optimizer: torch.optim.Optimizer, gradient_clip_val: float | None = None,
                                    gradient_clip_algorithm: str | None = None) -> None:
        """Clip the true (fp32 / bf16, unscaled) gradients directly: Lightning refuses to clip for a fused
        optimiser under mixed precision, where nothing is scaled."""
        if not gradient_clip_val:
            return
        if getattr(self.trainer.precision_plugin, "scaler", None) is not None:
            self.clip_gradients(optimizer, gradient_clip_val, gradient_clip_algorithm)
            return
        params = [p for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
        torch.nn.utils.clip_grad_norm_(params, gradient_clip_val)

    def configure_optimizers(self) -> dict:
        from lapa.training.schedule import build_scheduler
        from lapa.vla.optim import build_optimizer

        t = self.training_cfg
        optimizer = build_optimizer(self.model, t.optimizer)
        scheduler = build_scheduler(optimizer, t.scheduler, t.scheduler.total_steps or t.max_steps)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step", "frequency": 1}}


def scatter_picture(pred: np.ndarray, true: np.ndarray, names: Sequence[str], path: Path, cell: int = 140) -> None:
    """Predicted (y) vs true (x) action per dimension, one panel each (PIL; the diagonal is perfect)."""
    from PIL import Image, ImageDraw

    from lapa.pictures import save_png

    pad, label = 6, 14
    img = Image.new("RGB", (len(names) * (cell + pad) + pad, cell + label + 2 * pad), (255, 255, 255))
    draw = ImageDraw.Draw(img)
    for i, name in enumerate(names):
        x0, y0 = pad + i * (cell + pad), pad + label
        lo = float(min(pred[:, i].min(), true[:, i].min()))
        hi = float(max(pred[:, i].max(), true[:, i].max()))
        span = hi - lo if hi > lo else 1.0
        draw.rectangle([x0, y0, x0 + cell, y0 + cell], outline=(160, 160, 160))
        draw.line([x0, y0 + cell, x0 + cell, y0], fill=(200, 200, 200))
        draw.text((x0 + 2, pad), name, fill=(20, 20, 20))
        for p, t in zip(pred[:, i], true[:, i], strict=True):
            px = x0 + (float(t) - lo) / span * (cell - 4) + 2
            py = y0 + cell - ((float(p) - lo) / span * (cell - 4) + 2)
            draw.ellipse([px - 1.5, py - 1.5, px + 1.5, py + 1.5], fill=(30, 90, 200))
    path.parent.mkdir(parents=True, exist_ok=True)
    save_png(img, path)


