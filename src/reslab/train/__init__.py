"""Training: the `Trainer` and its pieces.

loop        `train(cfg, run_dir)`: the short driver (process set-up, run directory, Trainer)
trainer     `Trainer`: owns the run's data, plan, training state and run log; the loop
state       `TrainingState`: model, optimizer, EMA, scaler, schedule, position, best so far;
            state_dict() / load_state_dict(), what a `Checkpoint` holds
plan        `RunPlan`: steps, watched part, precision, class weights, decided once at the start
resume      resuming from the newest checkpoint that fits the training state
results     what a finished run writes: summary.json and its weights' metadata
step        `train_step(model, optimizer, batch, settings) -> StepResult`, a pure function
build       `build_data`, `build_model` (and fine-tuning weights) from the resolved config
schedule    learning-rate schedules; `Schedule` binds one run's settings
optim       optimizers, weight-decay groups, the EMA of weights
runlog      metrics.jsonl, TensorBoard and the progress bar
distributed torchrun plumbing; signals: stopping cleanly on SIGINT/SIGTERM
"""
