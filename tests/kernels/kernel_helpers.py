"""Shared helpers of the kernel tests (inputs, error metric, tolerances)."""

import torch


def relative_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    """max |actual − expected| / max |expected|, in float64."""
    actual, expected = actual.detach().double(), expected.detach().double()
    diff = (actual - expected).abs().max()
    return float(diff / expected.abs().max().clamp_min(1e-12))


# The tolerances against float64 torch.func.jvp of explicit attention.
TOLERANCE = {torch.float32: 1e-5, torch.float16: 2e-3, torch.float64: 1e-12}


def make_inputs(shape_q, shape_k, dtype, seed=0, masked=False):
    """q, k, v, their tangents (float64 masters and `dtype` copies) and a padding mask.

    The mask (when asked) pads random keys of batch 0 and all but one key of the last batch
    element, so that causal rows before that key see nothing (the empty-row path).
    """
    gen = torch.Generator().manual_seed(seed)
    batch, n_k = shape_k[0], shape_k[2]
    masters = [
        torch.randn(shape, generator=gen, dtype=torch.float64)
        for shape in (shape_q, shape_k, shape_k, shape_q, shape_k, shape_k)
    ]
    mask = None
    if masked:
        mask = torch.rand(batch, n_k, generator=gen) < 0.3
        mask[-1] = True
        mask[-1, n_k // 2] = False
    return masters, [x.to(dtype) for x in masters], mask
