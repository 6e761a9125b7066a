"""MJX tests: skipped without the ``mjx`` extra; share one compiled function per task.

MJX compiles for 10-30 s per task on CPU, so the tests build each task once per session and
turn on JAX's persistent compilation cache (in ``.pytest_cache/jax``), which also serves a
second bridge of the same shape in the same run.
"""

from __future__ import annotations

import functools
import os

import pytest

pytest.importorskip("jax", reason='needs the mjx extra: pip install "flowrl-policies[mjx]"')
pytest.importorskip("mujoco.mjx", reason='needs the mjx extra: pip install "flowrl-policies[mjx]"')

import jax  # noqa: E402

from flowrl.envs.mjx import enable_compile_cache, make_task  # noqa: E402

_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(__file__))))
enable_compile_cache(os.path.join(_ROOT, ".pytest_cache", "jax"))


def pytest_collection_modifyitems(items):
    for item in items:
        if "tests/envs/mjx" in str(item.fspath).replace(os.sep, "/"):
            item.add_marker(pytest.mark.mjx)


@functools.cache
def _compiled(name: str, cone: str | None = None):
    kwargs = {} if cone is None else {"cone": cone}
    task = make_task(name, **kwargs)
    return task, jax.jit(task.state_from), jax.jit(task.step)


@pytest.fixture(scope="session")
def compiled():
    """``compiled(name, cone=None) -> (task, jitted state_from, jitted step)``, built once per
    session."""
    return _compiled
