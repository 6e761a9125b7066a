"""flowrl.kernels: attention kernels (installed from the repository's ``kernels/`` folder).

Triton kernels are imported on first use (``pip install "flowrl[kernels]"``); PyTorch
reference implementations serve CPUs and act as the test oracle.
"""

__all__: list[str] = []
