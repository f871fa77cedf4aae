"""What machine a benchmark ran on, stated in every result (standard library only, so every benchmark,
including bench/inference.py on the GPU machine, can import it as a sibling script module)."""

from __future__ import annotations

import platform
from pathlib import Path


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()
