"""What machine this is, for reports, summaries and benchmark headers."""

from __future__ import annotations

import os
import platform
import time
from pathlib import Path
from typing import Any


def cpu_model() -> str:
    """The CPU's marketing name from /proc/cpuinfo (e.g. "AMD EPYC"), else what platform knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def environment() -> dict[str, Any]:
    """Software and hardware of this process, for run summaries."""
    import sys

    import torch

    from reslab import __version__

    return {
        "reslab": __version__,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "machine": cpu_model(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "cpus": os.cpu_count(),
        "threads": torch.get_num_threads(),
        "cuda": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
        "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
    }


_IMPORTED = time.monotonic()  # when reslab was first imported: the fallback for `process_seconds`


def process_seconds() -> float:
    """Wall seconds since this process started (Linux: from /proc, so the interpreter's start and
    every import count); elsewhere since reslab was imported."""
    try:
        fields = Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()
        started = int(fields[19]) / os.sysconf("SC_CLK_TCK")  # field 22, starttime: ticks after boot
        uptime = float(Path("/proc/uptime").read_text().split()[0])
        return max(0.0, uptime - started)
    except (OSError, ValueError, IndexError):
        return time.monotonic() - _IMPORTED


IMPORT_S = 30.0  # a command entered this long after its process started runs in a longer-lived process
_command_start: float | None = None  # time.monotonic() of the running command's start


def mark_command_start() -> None:
    """Start the clock a time budget counts against (train.budget): the process's own start when
    this command is what the process was started for (its first, within IMPORT_S of the start, so
    the interpreter's start and the imports count), else now (a command called in a longer-lived
    process: tests, a notebook)."""
    global _command_start
    since = process_seconds()
    now = time.monotonic()
    _command_start = now - since if _command_start is None and since < IMPORT_S else now


def command_seconds(fallback_start: float) -> float:
    """Wall seconds since the command started (`mark_command_start`), or since `fallback_start`
    (time.monotonic()) when no command was marked (the Python API)."""
    return time.monotonic() - (_command_start if _command_start is not None else fallback_start)
