"""Kernel tests run the Triton kernels in Triton's CPU interpreter.

``TRITON_INTERPRET`` is read when a kernel is defined, i.e. when
``flowrl.kernels.triton_jvp`` is imported; nothing imports it before these tests (the package
loads it lazily), so setting the variable at collection time is early enough.
"""

import os

os.environ.setdefault("TRITON_INTERPRET", "1")
