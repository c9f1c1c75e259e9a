"""What machine this is, for reports, summaries and benchmark headers."""

from __future__ import annotations

import platform
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
    import os
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
