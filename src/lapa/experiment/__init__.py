"""`lapa experiment`: the LAPA effect, measured (DESIGN.md section 14): the same finetuning from scratch, from
Stage 2 on latent labels (LAPA), and from Stage 2 on the videos' true actions (the upper bound), on N
demonstrations, compared by closed-loop success in the built-in world.

- `config`: `ExperimentConfig` (conf/lapa_experiment.yaml);
- `relabel`: the control arms' Stage 2 labels (binned true actions, shuffled latents);
- `runner`: the stages, each resumable, and `run`;
- `report`: metrics.json, report.md and the success-vs-N picture.
"""
