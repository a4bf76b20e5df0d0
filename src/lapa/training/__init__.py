"""What every stage's training shares (DESIGN.md section 4).

- `cluster`: `ClusterConfig` (devices, nodes, precision, strategy), the distributed environment
  (`dist_env`: rank, world size, local rank) and the device a process should use (`resolve_device`).
- `seeding`: `mix_seed`, the one seed mixer of the project (data streams, augmentation, per-batch noise).
- `run_dir`: the output folder of a training run (resume=auto, checkpoint rotation, orphan clean-up,
  summary).
- `loggers`: CSV / TensorBoard / W&B logger construction (Lightning Trainer and Fabric).
- `fabric`: Fabric for a plain loop (strategy by device count, precision), checkpoint suffix, meta-device
  materialisation from rank 0, full state dicts of sharded models, all-reduce.
- `schedule`: the warmup + cosine learning-rate schedule of the plain loops.
- `lightning_callbacks`: Trainer callbacks every Trainer stage shares (per-batch seeding, config in
  checkpoints, atomic checkpoint writes, the run directory's ModelCheckpoints).

Sits below `data`, `laq` and `vla`: it imports nothing of lapa but `config` and `io`.
"""
