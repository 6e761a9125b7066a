"""Opt-in ``torch.compile`` of a policy's hot paths, with a clean eager fallback.

A policy names the pure tensor functions that dominate its cost (the rollout step: a K-step
chain, its log-likelihood and the value; the minibatch scoring of stored chains) in
``compiled_methods``; with ``compile`` on, :class:`CompiledPaths` runs them through
``torch.compile`` (inductor: C++ kernels on CPU, Triton on GPU; ``mode="reduce-overhead"``
adds CUDA graphs on GPU where shapes are fixed). Checks of the inputs (shapes, NaN) stay
eager, outside the compiled region, so error messages do not change.

Compilation happens lazily on the first call of each path (seconds to a minute on CPU) and
again for a new input shape (a truncated last minibatch, an evaluation batch). If
``torch.compile`` is unavailable (an unsupported Python, no C++ compiler, a backend error),
the path warns once, naming the reason, and runs eagerly from then on: a run never fails
because compilation did.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any

import torch

__all__ = ["COMPILE_MODES", "CompiledPaths", "check_compile", "compile_unavailable_reason"]

#: ``torch.compile`` modes accepted by ``compile=`` (True means "default").
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")


def check_compile(compile: bool | str | None) -> str | None:  # noqa: A002 (the option's name)
    """The ``torch.compile`` mode that ``compile`` asks for, or None for eager.

    Raises:
        ValueError: For anything but a bool, None or one of :data:`COMPILE_MODES`.
    """
    if compile is None or compile is False:
        return None
    if compile is True:
        return "default"
    if isinstance(compile, str) and compile in COMPILE_MODES:
        return compile
    raise ValueError(
        f"compile must be True, False or a torch.compile mode in {COMPILE_MODES}, got {compile!r}"
    )


def compile_unavailable_reason() -> str | None:
    """Why ``torch.compile`` cannot run here, or None if it can be tried."""
    if not hasattr(torch, "compile"):
        return f"torch {torch.__version__} has no torch.compile"
    try:
        from torch._dynamo import is_dynamo_supported

        supported = is_dynamo_supported()
    except Exception as err:  # pragma: no cover (depends on the torch build)
        return f"TorchDynamo cannot be imported or queried ({type(err).__name__}: {err})"
    if not supported:
        return "TorchDynamo does not support this Python or platform"
    return None


def _compile_errors() -> tuple[type[BaseException], ...]:
    """Exceptions that mean "compilation failed" (not "the computation is wrong")."""
    errors: list[type[BaseException]] = []
    try:
        from torch._dynamo.exc import TorchDynamoException

        errors.append(TorchDynamoException)
    except ImportError:  # pragma: no cover
        pass
    try:
        from torch._inductor.exc import CppCompileError, InductorError

        errors += [InductorError, CppCompileError]
    except ImportError:  # pragma: no cover
        pass
    return tuple(errors)


class CompiledPaths:
    """Compiled versions of an owner's methods, built on first use, eager on failure.

    Args:
        mode: A ``torch.compile`` mode (see :func:`check_compile`), or None: always eager.

    Holds no reference to its owner: the unbound method is compiled and the owner passed as
    its first argument, so a deep copy or a pickle of the owner carries an empty cache
    (:meth:`__deepcopy__`, :meth:`__getstate__`) and compiles again on first use.
    """

    def __init__(self, mode: str | None):
        self.mode = mode
        self.failed: str | None = None
        self._cache: dict[tuple[type, str], Callable[..., Any]] = {}

    @property
    def active(self) -> bool:
        """Whether calls go through ``torch.compile`` (on, and no failure so far)."""
        return self.mode is not None and self.failed is None

    def __call__(self, owner: Any, name: str, *args: Any) -> Any:
        """``owner.<name>(*args)``, compiled when on."""
        method = getattr(type(owner), name)
        if not self.active:
            return method(owner, *args)
        key = (type(owner), name)
        compiled = self._cache.get(key)
        if compiled is None:
            reason = compile_unavailable_reason()
            if reason is not None:
                self._fall_back(name, reason)
                return method(owner, *args)
            compiled = torch.compile(method, mode=self.mode, fullgraph=True)
            self._cache[key] = compiled
        try:
            if self.mode == "reduce-overhead" and hasattr(
                torch.compiler, "cudagraph_mark_step_begin"
            ):
                torch.compiler.cudagraph_mark_step_begin()
            return compiled(owner, *args)
        except _compile_errors() as err:
            lines = str(err).strip().splitlines() or [type(err).__name__]
            self._fall_back(name, f"{type(err).__name__}: {lines[0]}")
            return method(owner, *args)

    def _fall_back(self, name: str, reason: str) -> None:
        self.failed = reason
        self._cache.clear()
        warnings.warn(
            f"compile={self.mode!r}: torch.compile is unavailable for {name} ({reason}); "
            "running eagerly from now on (same results, without the speed-up)",
            RuntimeWarning,
            stacklevel=3,
        )

    def __deepcopy__(self, memo: dict[int, Any]) -> CompiledPaths:
        copy = CompiledPaths(self.mode)
        copy.failed = self.failed
        return copy

    def __getstate__(self) -> dict[str, Any]:
        return {"mode": self.mode, "failed": self.failed, "_cache": {}}
