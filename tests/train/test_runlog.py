"""RunLog's TensorBoard events: a resumed run purges what was logged after its checkpoint, so the
curves TensorBoard draws have no doubled stretch; a run killed before its first checkpoint, which
starts again from step 0, purges all of them."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.summary.writer import event_file_writer

from reslab.rundir import RunDir
from reslab.train.runlog import RunLog


class SessionClock:
    """The clock TensorBoard's event files are named by, 10 s later for each new writer. TensorBoard
    reads a folder's files in name order; a name holds the time in seconds, then a per-process
    counter that is not zero-padded ("10" sorts before "9"). Real resumed runs are processes
    seconds apart; writers opened by one test process within a second would not sort in order."""

    def __init__(self) -> None:
        self.offset = -10

    def next_session(self) -> None:
        self.offset += 10

    def time(self) -> float:
        return time.time() + self.offset


@pytest.fixture
def clock(monkeypatch) -> SessionClock:
    clock = SessionClock()
    monkeypatch.setattr(event_file_writer, "time", clock)
    return clock


def error_curve(run: RunDir) -> list[tuple[int, float]]:
    events = EventAccumulator(str(run.tensorboard))
    events.Reload()  # reads every event file of the folder in order, applying purges as TensorBoard does
    return [(e.step, round(e.value, 3)) for e in events.Scalars("test/top1_error")]


def test_a_resumed_run_purges_the_events_after_its_checkpoint(tmp_path: Path, clock: SessionClock) -> None:
    run = RunDir(tmp_path / "run")
    run.path.mkdir()

    def log(start_step: int, resumed: bool, errors: dict[int, float]) -> None:
        clock.next_session()
        writer = RunLog(run, True, 10, start_step, progress=False, synthetic=False, resumed=resumed)
        for step, error in errors.items():
            writer.eval({"step": step, "test_top1_error": error})
        writer.close()

    log(0, False, {1: 0.9, 2: 0.8, 3: 0.7})
    log(0, True, {1: 0.5})  # killed before its first checkpoint: starts again from step 0
    assert error_curve(run) == [(1, 0.5)]
    log(1, True, {2: 0.4, 3: 0.3})  # resumed from a checkpoint at step 1
    assert error_curve(run) == [(1, 0.5), (2, 0.4), (3, 0.3)]
    log(2, True, {3: 0.2})
    assert error_curve(run) == [(1, 0.5), (2, 0.4), (3, 0.2)]
