"""flowrl.kernels: attention with a forward-mode derivative (installed from ``kernels/``).

* :func:`jvp_attention` / :class:`JVPAttention`: attention that ``torch.func.jvp`` and
  ``backward`` both dispatch to a FlashAttention-style kernel (Triton on CUDA) or its exact
  blockwise PyTorch counterpart (CPU), with memory linear in the number of tokens.
* :mod:`flowrl.kernels.reference`: the explicit-softmax specification and the blockwise
  implementation (the oracle of the tests).

Triton is imported on first use of the Triton backend (``pip install "flowrl-policies[kernels]"``).
"""

from flowrl.kernels.attention import (
    BACKENDS,
    JVPAttention,
    JVPAttentionFunction,
    attention_with_tangent,
    jvp_attention,
)

__all__ = [
    "BACKENDS",
    "JVPAttention",
    "JVPAttentionFunction",
    "attention_with_tangent",
    "jvp_attention",
]
