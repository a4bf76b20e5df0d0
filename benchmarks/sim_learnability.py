"""Can a policy learned from images succeed in the built-in world? The yardstick's certificate.

Trains a small image-based behaviour-cloning policy (plain torch, not the VLA) on N oracle
demonstrations and evaluates it closed loop with `lapa sim eval`'s own code (`lapa.eval.closed_loop`:
same success checks, same eval seeds, Wilson 95% intervals), for N in {20, 50, all}. The policy sees
only what `predict_action` gets: the image and the instruction (plus the frames it saw earlier in the
episode). It is also the cheap baseline that VLA results are read against.

The probe: the last 2 frames stacked in channels (+ 2 coordinate channels), 4 conv layers (16-32
channels), the instruction as word embeddings with their positions (order matters: "put the red cube on
the green cube") that scale and shift (FiLM) the features of the first 3 layers, the 8x8 feature map
flattened (positions kept) into an MLP that predicts a chunk of 4 future actions (translation and
rotation by MSE on normalised actions, the gripper as open/close classification); it executes the
first. Random-shift augmentation. `--head keypoints` swaps the flattened map for a spatial soft-argmax
(learned more slowly here). Demonstrations come from the scripted oracle with the settings of
`lapa sim generate` (the same seeds as `lapa sim generate seed=S episodes=E`).

    python benchmarks/sim_learnability.py [--episodes 1500] [--ns 20,50,all] [--steps 5000]
        [--eval-episodes 15] [--eval-seed 1000000] [--workers 2] [--threads 2] [--out runs/sim_learnability]
        [--json] [sim.key=value | oracle.key=value ...]

Choices (probe and world settings) were made on validation seeds (`--eval-seed 500000`), disjoint from
both the demonstrations (seed 0: 0..episodes) and the reported evaluation seeds (1,000,000 + i).
Measured: docs/benchmarks.md, "Learnability of the simulator".
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch import nn  # noqa: E402

from lapa.config import load  # noqa: E402
from lapa.eval.closed_loop import SimEvalConfig, evaluate, format_table  # noqa: E402
from lapa.policy.base import register  # noqa: E402
from lapa.sim.generate import GenerateConfig, episode_plan  # noqa: E402
from lapa.sim.parallel import process_world, run_episodes  # noqa: E402
from lapa.sim.policies import ScriptedOracle  # noqa: E402
from lapa.sim.rollout import run_episode  # noqa: E402
from lapa.sim.tasks import all_instructions  # noqa: E402

CONTINUOUS = 6  # dx dy dz droll dpitch dyaw; the gripper (7th) is a class


# ---------------------------------------------------------------------------------------------- data
def _demo_one(job: tuple[dict, GenerateConfig]) -> dict:
    """Worker: one oracle episode (frames, actions) as `lapa sim generate` would record it."""
    item, cfg = job
    ep = run_episode(process_world(cfg.sim), item["family"], item["seed"], ScriptedOracle(cfg.oracle),
                     max_steps=cfg.max_steps)
    return {"index": item["index"], "family": item["family"], "success": ep.success,
            "instruction": ep.instruction, "frames": ep.frames, "actions": ep.actions}


def generate_demos(cfg: GenerateConfig, workers: int) -> list[dict]:
    """The successful oracle episodes of `lapa sim generate` with `cfg` (both of its splits), in order."""
    jobs = [(item, cfg) for item in episode_plan(cfg)]
    eps = sorted(run_episodes(_demo_one, jobs, workers, "demos"), key=lambda e: e["index"])
    return [e for e in eps if e["success"]]


class Vocabulary:
    """Word ids (1..V, 0 = padding or unknown) over every instruction the simulator can phrase. Order
    matters: a bag of words cannot tell "put the red cube on the green cube" from its reverse."""

    MAX_WORDS = 16

    def __init__(self) -> None:
        words = sorted({w for text in all_instructions() for w in text.split()})
        self.index = {w: i + 1 for i, w in enumerate(words)}

    def __len__(self) -> int:
        return len(self.index) + 1

    def encode(self, text: str) -> torch.Tensor:
        ids = [self.index.get(w, 0) for w in text.split()][:self.MAX_WORDS]
        return torch.tensor(ids + [0] * (self.MAX_WORDS - len(ids)))


def build_dataset(demos: list[dict], history: int, chunk: int, vocab: Vocabulary) -> dict[str, torch.Tensor]:
    """Per step t of every episode: frames t-history+1..t (repeating frame 0 before the start), the
    instruction's bag of words, and actions t..t+chunk-1 with a mask (zero past the episode's end)."""
    frames, texts, targets, masks, owner = [], [], [], [], []
    offset = 0
    for e in demos:
        f, a = torch.from_numpy(e["frames"]), torch.from_numpy(e["actions"])
        t_steps = len(a)
        frames.append(f[:t_steps])
        texts.append(vocab.encode(e["instruction"]))
        pad = torch.cat([a, a[-1:].repeat(chunk, 1)])
        targets.append(torch.stack([pad[t:t + chunk] for t in range(t_steps)]))
        m = torch.arange(chunk)[None] + torch.arange(t_steps)[:, None] < t_steps
        masks.append(m.float())
        owner.append(torch.stack([torch.full((t_steps,), len(texts) - 1),
                                  torch.arange(t_steps) + offset, torch.arange(t_steps)], 1))
        offset += t_steps
    return {"frames": torch.cat(frames), "texts": torch.stack(texts), "targets": torch.cat(targets),
            "masks": torch.cat(masks), "owner": torch.cat(owner), "history": torch.tensor(history),
            "vocab_size": torch.tensor(len(vocab))}


# --------------------------------------------------------------------------------------------- model
class SpatialSoftArgmax(nn.Module):
    """[B, C, H, W] -> [B, 2C]: the expected (x, y) in [-1, 1] of each channel's softmax over pixels."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        p = F.softmax(x.flatten(2), dim=-1).view(b, c, h, w)
        ys = torch.linspace(-1, 1, h, device=x.device)
        xs = torch.linspace(-1, 1, w, device=x.device)
        return torch.cat([(p.sum(2) * xs).sum(-1), (p.sum(3) * ys).sum(-1)], 1)


class ProbeNet(nn.Module):
    """Frames [B, 3*history, S, S] in [0, 1] + bag of words [B, V] -> (continuous [B, K, 6], grip logits [B, K])."""

    def __init__(self, vocab_size: int, image_size: int = 64, history: int = 2, chunk: int = 4,
                 width: int = 16, head: str = "flatten") -> None:
        super().__init__()
        self.chunk, self.head_kind = chunk, head
        c = width
        stride1 = 2 if image_size <= 64 else 4  # 128 px: one more halving, the same feature grid
        self.conv = nn.ModuleList([
            nn.Conv2d(3 * history + 2, c, 5, stride1, 2), nn.Conv2d(c, 2 * c, 3, 2, 1),
            nn.Conv2d(2 * c, 2 * c, 3, 1, 1), nn.Conv2d(2 * c, 2 * c, 3, 1, 1)])
        self.norm = nn.ModuleList([nn.GroupNorm(8, n.out_channels) for n in self.conv[:3]])
        # words and their positions, flattened: the object named first is the one to move
        self.words = nn.Embedding(vocab_size, 16, padding_idx=0)
        self.positions = nn.Parameter(torch.randn(Vocabulary.MAX_WORDS, 16) * 0.1)
        self.text = nn.Sequential(nn.Linear(Vocabulary.MAX_WORDS * 16, 128), nn.ReLU())
        self.film = nn.ModuleList([nn.Linear(128, 2 * n.out_channels) for n in self.conv[:3]])
        self.keypoints = SpatialSoftArgmax()
        feats = 4 * c + 2 * c if head == "keypoints" else 2 * c * 64  # flatten: the 8x8 map, positions kept
        self.head = nn.Sequential(nn.Linear(feats + 128, 256), nn.ReLU(), nn.Linear(256, 256), nn.ReLU(),
                                  nn.Linear(256, chunk * (CONTINUOUS + 1)))

    def forward(self, frames: torch.Tensor, words: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        b, _, h, w = frames.shape
        ys, xs = torch.meshgrid(torch.linspace(-1, 1, h), torch.linspace(-1, 1, w), indexing="ij")
        x = torch.cat([frames - 0.5, xs.expand(b, 1, h, w), ys.expand(b, 1, h, w)], 1)
        t = self.text((self.words(words) + self.positions).flatten(1))
        for i, conv in enumerate(self.conv):
            x = conv(x)
            if i < 3:
                x = self.norm[i](x)
            if i < 3:  # the instruction selects which object's features survive (colour: from layer 1)
                gamma, beta = self.film[i](t).chunk(2, 1)
                x = x * (1 + gamma[:, :, None, None]) + beta[:, :, None, None]
            x = F.relu(x)
        if self.head_kind == "keypoints":
            feats = torch.cat([self.keypoints(x), x.mean((2, 3)), t], 1)
        else:
            feats = torch.cat([F.adaptive_avg_pool2d(x, 8).flatten(1), t], 1)
        out = self.head(feats).view(b, self.chunk, CONTINUOUS + 1)
        return out[..., :CONTINUOUS], out[..., CONTINUOUS]


def _stack_history(frames: torch.Tensor, index: torch.Tensor, step: torch.Tensor, history: int) -> torch.Tensor:
    """uint8 [B, H, W, 3*history]: frames index-k (clamped at the episode's first frame) for k < history."""
    parts = [frames[index - torch.clamp(step, max=k)] for k in reversed(range(history))]
    return torch.cat(parts, -1)


def _to_input(uint8_hwc: torch.Tensor) -> torch.Tensor:
    return uint8_hwc.permute(0, 3, 1, 2).float() / 255.0


def random_shift(x: torch.Tensor, pad: int = 4) -> torch.Tensor:
    """Shift each image by up to `pad` pixels (replicate padding): DrQ's augmentation."""
    b, _, h, w = x.shape
    x = F.pad(x, (pad,) * 4, mode="replicate")
    ox, oy = torch.randint(0, 2 * pad + 1, (2, b))
    return torch.stack([x[i, :, oy[i]:oy[i] + h, ox[i]:ox[i] + w] for i in range(b)])


def _losses(model: ProbeNet, data: dict, idx: torch.Tensor, mean: torch.Tensor, std: torch.Tensor,
            augment: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """(MSE on normalised continuous actions, BCE of the gripper class: open = >= 0.5), masked."""
    ep, row, t = data["owner"][idx].unbind(1)
    x = _to_input(_stack_history(data["frames"], row, t, int(data["history"])))
    cont, grip = model(random_shift(x) if augment else x, data["texts"][ep])
    m, y = data["masks"][idx], data["targets"][idx]
    mse = (((cont - (y[..., :CONTINUOUS] - mean) / std) ** 2).mean(-1) * m).sum() / m.sum()
    bce = F.binary_cross_entropy_with_logits(grip, (y[..., CONTINUOUS] >= 0.5).float(), reduction="none")
    return mse, (bce * m).sum() / m.sum()


def train_probe(data: dict, steps: int, image_size: int, chunk: int, batch: int = 32, lr: float = 1e-3,
                seed: int = 0, log_every: int = 500, val: dict | None = None,
                head: str = "flatten") -> tuple[ProbeNet, dict]:
    """Behaviour cloning (AdamW, one-cycle schedule); `val`: held-out steps whose losses are logged."""
    torch.manual_seed(seed)
    history = int(data["history"])
    flat = data["targets"][:, 0, :CONTINUOUS]
    mean, std = flat.mean(0), flat.std(0).clamp(min=1e-3)
    model = ProbeNet(int(data["vocab_size"]), image_size, history, chunk, head=head)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    # 5% warm-up, at least 2 steps (OneCycleLR divides by the warm-up length)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps, pct_start=max(0.05, 2.0 / steps))
    model.train()
    for step in range(steps):
        mse, bce = _losses(model, data, torch.randint(0, len(data["targets"]), (batch,)), mean, std, True)
        opt.zero_grad(set_to_none=True)
        (mse + bce).backward()
        opt.step()
        sched.step()
        if log_every and (step + 1) % log_every == 0:
            line = f"  step {step + 1}/{steps}  mse {mse.item():.3f}  bce {bce.item():.3f}"
            if val is not None:
                model.eval()
                with torch.no_grad():
                    vm, vb = _losses(model, val, torch.arange(min(len(val["targets"]), 1024)), mean, std, False)
                model.train()
                line += f"  held-out mse {vm.item():.3f}  bce {vb.item():.3f}"
            print(line, flush=True)
    model.eval()
    return model, {"mean": mean, "std": std, "history": history, "head": head}


class ProbePolicy:
    """The trained probe as a `lapa.policy` Policy: keeps its own frame history; executes the first
    `execute` actions of each predicted chunk before it looks again."""

    def __init__(self, model: ProbeNet, stats: dict, vocab: Vocabulary, execute: int = 1) -> None:
        self.model, self.stats, self.vocab, self.execute = model, stats, vocab, execute
        self.reset()

    def reset(self, **_) -> None:
        self.frames: list[np.ndarray] = []
        self.plan: list[np.ndarray] = []

    @torch.no_grad()
    def predict_action(self, image: np.ndarray, instruction: str) -> np.ndarray:
        history = self.stats["history"]
        self.frames = (self.frames + [image])[-history:]
        if not self.plan:
            frames = [self.frames[0]] * (history - len(self.frames)) + self.frames
            x = _to_input(torch.from_numpy(np.concatenate(frames, -1))[None])
            cont, grip = self.model(x, self.vocab.encode(instruction)[None])
            cont = cont[0] * self.stats["std"] + self.stats["mean"]
            acts = torch.cat([cont, (grip[0] > 0).float()[:, None]], 1).numpy().astype(np.float32)
            self.plan = list(acts[:self.execute])
        return self.plan.pop(0)


# ------------------------------------------------------------------------------------------------ main
def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--episodes", type=int, default=1500, help="oracle episodes attempted (all = the successes)")
    ap.add_argument("--ns", default="20,50,all", help="numbers of demonstrations to train on")
    ap.add_argument("--steps", type=int, default=5000, help="training steps per probe (batch 32)")
    ap.add_argument("--head", default="flatten", choices=["flatten", "keypoints"])
    ap.add_argument("--history", type=int, default=2)
    ap.add_argument("--chunk", type=int, default=4, help="actions predicted per step")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--execute", type=int, default=1, help="actions of each chunk executed before re-planning")
    ap.add_argument("--eval-episodes", type=int, default=15, help="per task family")
    ap.add_argument("--eval-seed", type=int, default=1_000_000)
    ap.add_argument("--seed", type=int, default=0, help="demonstration seed (lapa sim generate seed=)")
    ap.add_argument("--workers", type=int, default=0, help="simulation worker processes (0: in-process)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads")
    ap.add_argument("--out", default="runs/sim_learnability")
    ap.add_argument("--cache", default="", help="npz of the demonstrations: read if present, else written")
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--save", action="store_true", help="write each probe to OUT/probe_nN.pt")
    ap.add_argument("overrides", nargs="*", help="lapa sim generate overrides, e.g. sim.image_size=64")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    t_start = time.perf_counter()
    gen = load("sim_generate", GenerateConfig, [f"output={args.out}", f"episodes={args.episodes}",
                                                  f"seed={args.seed}", *args.overrides])
    t0 = time.perf_counter()
    if args.cache and Path(args.cache).exists():
        demos = list(np.load(args.cache, allow_pickle=True)["demos"])
    else:
        demos = generate_demos(gen, args.workers)
        if args.cache:
            np.savez(args.cache, demos=np.array(demos, dtype=object))
    t_gen = time.perf_counter() - t0
    steps_total = sum(len(e["actions"]) for e in demos)
    print(f"demonstrations: {len(demos)}/{args.episodes} successful oracle episodes, {steps_total} steps, "
          f"{t_gen:.0f} s", flush=True)
    vocab = Vocabulary()
    results: dict = {"episodes_attempted": args.episodes, "demonstrations": len(demos), "steps": steps_total,
                     "generate_seconds": round(t_gen, 1), "args": vars(args), "runs": {}}
    for n_spec in args.ns.split(","):
        n = len(demos) if n_spec == "all" else min(int(n_spec), len(demos))
        t0 = time.perf_counter()
        data = build_dataset(demos[:n], args.history, args.chunk, vocab)
        print(f"N={n}: {len(data['targets'])} steps, training {args.steps} steps", flush=True)
        model, stats = train_probe(data, args.steps, gen.sim.image_size, args.chunk, args.batch, seed=args.seed,
                                   head=args.head)
        t_train = time.perf_counter() - t0
        if args.save:
            Path(args.out).mkdir(parents=True, exist_ok=True)
            torch.save({"model": model.state_dict(), "stats": stats, "chunk": args.chunk,
                        "image_size": gen.sim.image_size}, Path(args.out) / f"probe_n{n}.pt")
        name = f"bc_probe_{n}_{os.getpid()}_{time.monotonic_ns()}"
        register(name, lambda model=model, stats=stats, **_: ProbePolicy(model, stats, vocab, args.execute))
        ev = SimEvalConfig(policy=name, output=str(Path(args.out) / f"n{n}"), episodes=args.eval_episodes,
                           seed=args.eval_seed, workers=0, videos_per_task=1, max_steps=gen.max_steps, sim=gen.sim)
        t0 = time.perf_counter()
        res = evaluate(ev)
        t_eval = time.perf_counter() - t0
        print(format_table(res), flush=True)
        print(f"N={n}: train {t_train:.0f} s, eval {t_eval:.0f} s", flush=True)
        results["runs"][str(n)] = {"families": res["families"], "overall": res["overall"],
                                   "train_seconds": round(t_train, 1), "eval_seconds": round(t_eval, 1)}
    results["seconds"] = round(time.perf_counter() - t_start, 1)
    _print_curve(results)
    if args.json:
        print(json.dumps(results))
    return results


def _print_curve(results: dict) -> None:
    """The learnability curve: success per family and overall vs N, with Wilson 95% intervals."""
    runs = results["runs"]
    families = list(next(iter(runs.values()))["families"]) + ["overall"]
    print("\n| N demos | " + " | ".join(families) + " |")
    print("|---" * (len(families) + 1) + "|")
    for n, r in runs.items():
        cells = []
        for f in families:
            s = r["overall"] if f == "overall" else r["families"][f]
            lo, hi = s["ci95"]
            cells.append(f"{s['successes']}/{s['episodes']} [{100 * lo:.0f}, {100 * hi:.0f}]")
        print(f"| {n} | " + " | ".join(cells) + " |")
    print(f"\n{results['demonstrations']} demonstrations ({results['steps']} steps) generated in "
          f"{results['generate_seconds']:.0f} s; benchmark wall time {results['seconds']:.0f} s")


if __name__ == "__main__":
    main(sys.argv[1:])
