"""Validation of Stage 2 (latent action prediction) and its floor.

Metrics of the model on the validation shards (every sample once):
    loss            mean cross-entropy per token
    acc_top1        a token's label is the arg-max of its logits (mean over samples and positions)
    acc_top3        the label is among the 3 largest logits
    acc_pos{i}      top-1 accuracy at position i (0..k-1)
    exact_match     all k tokens of a sample right

The floor, reported beside them under the same names: always predict the most frequent label of each
position (and its 3 most frequent labels for acc_top3), and, for the loss, the cross-entropy of the
training labels' per-position frequencies (add-one smoothed). The frequencies are counted by
`LabelCounts` over the training batches the run has consumed so far (every rank, every step since step
0, carried across resumes in the checkpoint): what the model itself was shown, known at no extra cost
(counting the whole training set first would cost a pass over the shards).

Under several ranks every rank reads its own validation shards (`rank::world`), and the sums are
reduced over ranks. The model is sharded (FSDP2), so every rank must run the same number of forward
passes: ranks that have run out of batches run a dummy one whose result is dropped
(`data.lockstep`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch
import torch.nn.functional as F

from lapa.data.lockstep import lockstep
from lapa.training.fabric import all_reduce_

TOPK = 3


class LabelCounts:
    """Per-position histogram [M, C] of the training labels consumed so far, over all ranks.

    `update` counts this rank's batch on its device (no host sync); `sync` adds every rank's pending
    counts to the shared total (a collective: call it on every rank, before validating or saving)."""

    def __init__(self, num_outputs: int, num_classes: int, device: torch.device | str = "cpu") -> None:
        self.total = torch.zeros(num_outputs, num_classes, dtype=torch.long, device=device)  # all ranks, synced
        self.pending = torch.zeros_like(self.total)  # this rank, since the last sync

    def update(self, labels: torch.Tensor) -> None:
        """labels int [B, M] in 0..C-1."""
        self.pending += F.one_hot(labels.long(), self.total.shape[1]).sum(0)

    def sync(self) -> None:
        self.total += all_reduce_(self.pending)
        self.pending.zero_()

    def state_dict(self) -> dict[str, Any]:
        return {"counts": self.total.tolist()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        counts = torch.as_tensor(state["counts"], dtype=torch.long)
        if counts.shape != self.total.shape:
            raise ValueError(f"label counts of shape {tuple(counts.shape)} in the checkpoint, the model predicts "
                             f"{tuple(self.total.shape)} (positions, classes)")
        self.total.copy_(counts)
        self.pending.zero_()

    def floor(self) -> dict[str, torch.Tensor]:
        """{"top": [M, min(3, C)] most frequent labels per position, most frequent first; "log_prob":
        [M, C] log of the smoothed frequencies}."""
        counts = self.total.double()
        k = min(TOPK, counts.shape[1])
        # ties go to the smaller label (a stable, documented choice): sort by count, then by label
        order = torch.sort(-counts, dim=1, stable=True).indices[:, :k]
        return {"top": order, "log_prob": torch.log((counts + 1) / (counts + 1).sum(1, keepdim=True))}


class LatentMetrics:
    """Sums of the validation metrics of the model and of the floor; `reduce` sums them over ranks."""

    def __init__(self, num_outputs: int, device: torch.device | str = "cpu") -> None:
        self.M = num_outputs
        # [n, loss, top1 x M, top3 x M, exact, floor: loss, top1 x M, top3 x M, exact]
        self.sums = torch.zeros(3 + 4 * num_outputs + 2, dtype=torch.float64, device=device)

    def update(self, logits: torch.Tensor, labels: torch.Tensor, floor: dict[str, torch.Tensor]) -> None:
        """logits [B, M, C], labels [B, M]; `floor` from `LabelCounts.floor()` (on the same device)."""
        M, labels = self.M, labels.long()
        logits = logits.float()
        k = min(TOPK, logits.shape[-1])
        loss = F.cross_entropy(logits.flatten(0, 1), labels.flatten(), reduction="sum") / M  # summed per sample
        top = logits.topk(k, dim=-1).indices  # [B, M, k]
        top1 = top[..., 0] == labels  # [B, M]
        topk = (top == labels.unsqueeze(-1)).any(-1)
        f_top = floor["top"].unsqueeze(0)  # [1, M, k]
        f_top1 = f_top[..., 0] == labels
        f_topk = (f_top == labels.unsqueeze(-1)).any(-1)
        f_loss = -floor["log_prob"].gather(1, labels.T).T.sum() / M  # [M, B] gathered, summed per sample
        row = torch.cat([labels.new_tensor([labels.shape[0]]).double(), loss.double().view(1),
                         top1.sum(0).double(), topk.sum(0).double(), top1.all(1).sum().double().view(1),
                         f_loss.double().view(1), f_top1.sum(0).double(), f_topk.sum(0).double(),
                         f_top1.all(1).sum().double().view(1)])
        self.sums += row

    def reduce(self) -> None:
        all_reduce_(self.sums)

    def compute(self) -> dict[str, dict[str, float]]:
        """{"model": {...}, "floor": {...}} with loss, acc_top1, acc_top3, acc_pos{i}, exact_match, samples;
        empty dicts when nothing was validated."""
        s, M = self.sums.tolist(), self.M
        n = s[0]
        if n == 0:
            return {"model": {}, "floor": {}}

        def block(at: int) -> dict[str, float]:
            loss, top1, topk, exact = s[at], s[at + 1:at + 1 + M], s[at + 1 + M:at + 1 + 2 * M], s[at + 1 + 2 * M]
            out = {"loss": loss / n, "acc_top1": sum(top1) / (n * M), "acc_top3": sum(topk) / (n * M),
                   "exact_match": exact / n}
            out.update({f"acc_pos{i}": top1[i] / n for i in range(M)})
            return out

        return {"model": {**block(1), "samples": int(n)}, "floor": block(3 + 2 * M)}


@torch.no_grad()
def validate(forward: Callable[[dict], tuple[torch.Tensor, torch.Tensor]], batches: Iterable[dict],
             counts: LabelCounts, *, dummy: Callable[[], dict], limit: int | None = None, world: int = 1,
             device: torch.device | str = "cpu") -> dict[str, dict[str, float]]:
    """Run `forward(batch) -> (logits [B, M, C], labels [B, M])` over `batches` (at most `limit` per
    rank) and return `LatentMetrics.compute()` reduced over ranks. Collective: call on every rank
    (after `counts.sync()`)."""
    metrics = LatentMetrics(counts.total.shape[0], device)
    floor = {k: v.to(device) for k, v in counts.floor().items()}
    for batch, real in lockstep(batches, dummy, limit, world):
        logits, labels = forward(batch)
        if real:
            metrics.update(logits, labels, floor)
    metrics.reduce()
    return metrics.compute()
