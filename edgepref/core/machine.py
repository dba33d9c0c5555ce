"""The machine a figure was measured on, as far as a file of figures records it: the CPU's model
name, which stays the same from run to run on one machine (llama.cpp's kernels round
differently on different CPUs, so a noise floor is a property of the CPU as much as of the
judge)."""

from __future__ import annotations

import platform


def cpu_model() -> str | None:
    """The CPU's model name (/proc/cpuinfo's first "model name", else what `platform` knows),
    or None when the machine does not say."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            for line in fh:
                key, sep, value = line.partition(":")
                if sep and key.strip() == "model name" and value.strip():
                    return value.strip()
    except OSError:
        pass
    return platform.processor().strip() or None
