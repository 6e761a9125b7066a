"""The console commands: the pipeline of ``flowrl.experiments``, from any folder.

| command | what it runs | extra |
|---|---|---|
| `flowrl-train` | `flowrl.experiments.train` (Hydra) | `pipeline` |
| `flowrl-enjoy` | `flowrl.experiments.enjoy` | `pipeline`; `video` for MP4 |
| `flowrl-eval` | `flowrl-enjoy` without a window or video | `pipeline` |
| `flowrl-summarize` | `flowrl.experiments.summarize` | `pipeline` |
| `flowrl-generators` | `flowrl.experiments.generators` (Hydra) | `pipeline` |

Each command takes the same arguments as the script of a clone (``flowrl-train
experiment=main`` is ``python experiments/train.py experiment=main``), reads its configs from
the installed package and writes under the current folder (``outputs/…``). Without the
``pipeline`` extra a command stops with the line to install it, instead of a traceback.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from importlib import import_module
from importlib.util import find_spec
from pathlib import Path

__all__ = ["enjoy", "evaluate", "generators", "summarize", "train"]

# What the pipeline imports beyond the library: module -> the extra that brings it.
PIPELINE_MODULES = {"hydra": "pipeline", "omegaconf": "pipeline"}


def missing_extra(modules: dict[str, str] = PIPELINE_MODULES) -> str | None:
    """The install line for the first missing module of ``modules``; None if all import."""
    for module, extra in modules.items():
        if find_spec(module) is None:
            return (
                f"this command needs {module!r}, which the {extra!r} extra installs: "
                f'pip install "flowrl-policies[{extra}]"'
            )
    return None


def _run(module: str, function: str = "main", **kwargs: object) -> Callable[[], int]:
    """A console entry point that checks the pipeline's extra, then calls ``module.function``."""

    def entry() -> int:
        message = missing_extra()
        if message is not None:
            print(f"{_command()}: error: {message}", file=sys.stderr)
            return 2
        result = getattr(import_module(f"flowrl.experiments.{module}"), function)(**kwargs)
        return result if isinstance(result, int) else 0  # Hydra mains return their results

    entry.__name__ = module
    entry.__doc__ = f"The ``flowrl.experiments.{module}`` command."
    return entry


def _command() -> str:
    """The name the command was called by (``flowrl-train``…)."""
    return Path(sys.argv[0]).name if sys.argv and sys.argv[0] else "flowrl"


train = _run("train")
enjoy = _run("enjoy", prog="flowrl-enjoy")
evaluate = _run("enjoy", prog="flowrl-eval", evaluate_only=True)
summarize = _run("summarize")
generators = _run("generators")
