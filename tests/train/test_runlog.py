"""RunLog's TensorBoard events: a resumed run purges what was logged after its checkpoint, so the
curves TensorBoard draws have no doubled stretch; a run killed before its first checkpoint, which
starts again from step 0, purges all of them."""

from __future__ import annotations

from pathlib import Path

from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from reslab.rundir import RunDir
from reslab.train.runlog import RunLog


def error_curve(run: RunDir) -> list[tuple[int, float]]:
    events = EventAccumulator(str(run.tensorboard))
    events.Reload()  # reads every event file of the folder in order, applying purges as TensorBoard does
    return [(e.step, round(e.value, 3)) for e in events.Scalars("test/top1_error")]


def log(run: RunDir, start_step: int, resumed: bool, errors: dict[int, float]) -> None:
    writer = RunLog(run, True, 10, start_step, progress=False, synthetic=False, resumed=resumed)
    for step, error in errors.items():
        writer.eval({"step": step, "test_top1_error": error})
    writer.close()


def test_a_resumed_run_purges_the_events_after_its_checkpoint(tmp_path: Path) -> None:
    run = RunDir(tmp_path / "run")
    run.path.mkdir()
    log(run, 0, False, {1: 0.9, 2: 0.8, 3: 0.7})
    log(run, 0, True, {1: 0.5})  # killed before its first checkpoint: starts again from step 0
    assert error_curve(run) == [(1, 0.5)]
    log(run, 1, True, {2: 0.4, 3: 0.3})  # resumed from a checkpoint at step 1
    assert error_curve(run) == [(1, 0.5), (2, 0.4), (3, 0.3)]
    log(run, 2, True, {3: 0.2})
    assert error_curve(run) == [(1, 0.5), (2, 0.4), (3, 0.2)]
