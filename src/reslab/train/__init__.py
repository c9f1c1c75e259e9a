"""Training: the `Trainer` and its pieces.

loop        `train(cfg, run_dir)`: the short driver (process set-up, run directory, Trainer)
trainer     `Trainer`: owns model, optimizer, EMA, scaler, schedule, data, run log; the loop
resume      the trainer's objects <-> its `Checkpoint`; resuming from the newest one that fits
results     what a finished run writes: summary.json and its weights' metadata
step        `train_step(model, optimizer, batch, settings) -> StepResult`, a pure function
build       `build_data`, `build_model` (and fine-tuning weights) from the resolved config
schedule    learning-rate schedules; `Schedule` binds one run's settings
optim       optimizers, weight-decay groups, the EMA of weights
runlog      metrics.jsonl, TensorBoard and the progress bar
distributed torchrun plumbing; signals: stopping cleanly on SIGINT/SIGTERM
"""
