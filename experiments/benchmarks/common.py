"""Bookkeeping shared by the benchmark scripts: machine and code descriptions, result files."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import numpy as np
import torch


def package_version(name: str) -> str | None:
    """Installed version of a distribution, or None."""
    try:
        return version(name)
    except PackageNotFoundError:
        return None


def cpu_model() -> str | None:
    """The CPU's model name (``/proc/cpuinfo`` on Linux), or None where it cannot be read."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return None


def machine_info(packages: tuple[str, ...] = ()) -> dict[str, Any]:
    """Platform, CPUs, Python, torch, numpy and the versions of ``packages``.

    ``torch_cpu_capability`` is the vector-unit level torch's CPU kernels dispatch to (e.g.
    AVX2, AVX512): two machines that differ in it round float32 sums differently in the last
    bit, so a seeded run is bit-for-bit reproducible only between machines that share it.
    """
    affinity = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None
    info: dict[str, Any] = {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_model": cpu_model(),
        "torch_cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "python": sys.version.split()[0],
        "cpu_count": os.cpu_count(),
        "cpus_available": affinity,
        "torch": torch.__version__,
        "numpy": np.__version__,
        "cuda_available": torch.cuda.is_available(),
    }
    if torch.cuda.is_available():
        info["cuda_device"] = torch.cuda.get_device_name()
    info.update({name: package_version(name) for name in packages})
    return info


def code_version(paths: tuple[str, ...] = ("flowrl",)) -> dict[str, Any]:
    """Git commit of the checkout and the uncommitted changes under ``paths``."""

    def git(*cmd: str) -> str | None:
        try:
            proc = subprocess.run(
                ["git", *cmd], capture_output=True, text=True, timeout=10, check=True
            )
        except (OSError, subprocess.SubprocessError):
            return None
        return proc.stdout.strip()

    changed = git("status", "--porcelain", "--", *paths)
    return {
        "git_commit": git("rev-parse", "HEAD"),
        "uncommitted_changes": None if changed is None else changed.splitlines(),
    }


def write_results(result: dict[str, Any], table: str, out: Path) -> None:
    """Write ``result`` as JSON to ``out`` and ``table`` next to it with the suffix .md."""
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    out.with_suffix(".md").write_text(table)
