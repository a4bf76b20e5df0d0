"""Settings of `lapa experiment` (conf/lapa_experiment.yaml)."""

from __future__ import annotations

from dataclasses import dataclass, field

from lapa.config import require

ARMS = ("scratch", "lapa", "actions", "shuffled")  # finetune init: none, Stage 2 on latents / true actions / shuffled
PRETRAINED = ("lapa", "actions", "shuffled")  # the arms that need a Stage 2 run


@dataclass
class ExperimentConfig:
    output_dir: str = "runs/experiment"
    seed: int = 0  # videos, LAQ and Stage 2 seed; the demonstrations use seed + 1 (scenes the videos never show)
    image_size: int = 64  # rendered and modelled size (the debug LAQ and VLA)
    video_episodes: int = 200  # action-free videos for Stage 1 and Stage 2 (10% held out)
    laq_steps: int = 800  # lapa train-laq steps (laq_debug)
    vla_steps: int = 1000  # lapa train-vla steps (vla_debug), every pretrained arm
    demo_pool: int = 80  # demonstration episodes simulated; N of the training ones are drawn per seed
    demo_seed: int | None = None  # the demonstrations' simulator seed; null: seed + 1 (never the videos')
    ns: list[int] = field(default_factory=lambda: [10, 20, 50])  # demonstrations per finetuning
    arms: list[str] = field(default_factory=lambda: ["scratch", "lapa", "actions"])
    train_seeds: list[int] = field(default_factory=lambda: [0, 1])  # which N demos and the finetune seed
    finetune_steps: int = 400  # lapa finetune steps (finetune_debug), every run
    eval_episodes: int = 10  # closed-loop episodes per task family, every run
    # Evaluation seeds: seed + i. Tune on another range (e.g. eval_seed=2000000), never on the reported one.
    eval_seed: int = 1_000_000
    workers: int = 2  # simulator / evaluation processes
    laq_overrides: list[str] = field(default_factory=list)
    vla_overrides: list[str] = field(default_factory=list)
    finetune_overrides: list[str] = field(default_factory=list)
    sim_overrides: list[str] = field(default_factory=list)  # lapa sim generate and sim eval (sim.*)
    sim_eval_overrides: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        require(bool(self.output_dir), "output_dir", self.output_dir, "must be a directory path")
        require(self.image_size >= 32 and self.image_size % 8 == 0, "image_size", self.image_size,
                "must be a multiple of 8 and >= 32")
        require(self.video_episodes >= 4, "video_episodes", self.video_episodes, "must be >= 4")
        bad = [a for a in self.arms if a not in ARMS]
        require(bool(self.arms) and not bad and len(set(self.arms)) == len(self.arms), "arms", self.arms,
                f"must be distinct names among {list(ARMS)}")
        require(bool(self.ns) and all(n >= 1 for n in self.ns), "ns", self.ns, "must be demonstration counts >= 1")
        # 25% of the pool is held out for validation; N must fit in the rest
        enough = int((max(self.ns) + 2) / 0.75) + 1
        require(max(self.ns) <= int(self.demo_pool * 0.75) - 1, "demo_pool", self.demo_pool,
                f"too small for N = {max(self.ns)} (25% of it is held out): use >= {enough}")
        require(self.demo_seed != self.seed, "demo_seed", self.demo_seed, "must differ from seed (the videos')")
        require(bool(self.train_seeds), "train_seeds", self.train_seeds, "must list at least one seed")
        for key in ("laq_steps", "vla_steps", "finetune_steps", "eval_episodes"):
            require(getattr(self, key) >= 1, key, getattr(self, key), "must be >= 1")
        require(self.workers >= 0, "workers", self.workers, "must be >= 0")

    def runs(self) -> list[tuple[str, int, int]]:
        """Every finetuning: (arm, N, train seed), in the order they run."""
        return [(arm, n, s) for n in self.ns for s in self.train_seeds for arm in self.arms]
