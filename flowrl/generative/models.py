"""Generator networks: a small DiT for images and videos, and an MLP for 2-D toy data.

Both follow one call signature, ``net(x, t, y) -> same shape as x``: x a batch of samples,
t (B,) a scalar time (the linear path's t for flow-matching teachers; the wrappers in
:mod:`flowrl.generative.consistency` feed TrigFlow angles through the conversions), y (B,)
class labels or None. Class-conditional nets reserve the index ``num_classes`` as the null
class that classifier-free guidance drops labels to.

Built with a guidance input (``DiTConfig.guidance_input`` / ``MLPGenerator(guidance_input=
True)``) a net also takes ``beta`` (B,), the guidance strength of Guidance-Free Training
(GFT, Chen et al. 2025, arXiv 2501.15420): β = 1/w ∈ (0, 1], β = 1 the plain conditional
model, ``beta=None`` meaning β = 1. Its embedding is added to the conditioning and starts at
zero, so :func:`with_guidance_input` turns a trained net into one whose outputs are unchanged
at every β until GFT training moves them. Nets without the input are exactly as before (same
parameters, same checkpoints) and refuse a ``beta``.

Everything here is built from ordinary modules and :func:`flowrl.kernels.jvp_attention`, so
``torch.func.jvp`` runs through a whole network (continuous-time consistency training needs
it) with linear-memory attention.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, replace

import torch
from torch import Tensor, nn

from flowrl.kernels import JVPAttention
from flowrl.nets import SinusoidalEmbedding, VelocityMLP, zero_init_

__all__ = [
    "DiT",
    "DiTConfig",
    "MLPGenerator",
    "has_guidance_input",
    "patchify",
    "unpatchify",
    "with_guidance_input",
]


# ---------------------------------------------------------------------- patches


def patchify(x: Tensor, patch: tuple[int, ...]) -> Tensor:
    """(B, C, *S) → (B, N, C·∏patch) tokens, S = (H, W) or (T, H, W) split into patches.

    Tokens are ordered row-major over the patch grid; :func:`unpatchify` inverts it.
    """
    b, c, *spatial = x.shape
    if len(spatial) != len(patch) or any(s % p for s, p in zip(spatial, patch, strict=True)):
        raise ValueError(f"sample dims {tuple(spatial)} must be divisible by patch {patch}")
    grid = [s // p for s, p in zip(spatial, patch, strict=True)]
    # (B, C, g0, p0, g1, p1, ...) → (B, g0, g1, ..., C, p0, p1, ...)
    split = [b, c] + [d for pair in zip(grid, patch, strict=True) for d in pair]
    x = x.reshape(split)
    n = len(patch)
    order = [0] + [2 + 2 * i for i in range(n)] + [1] + [3 + 2 * i for i in range(n)]
    return x.permute(order).reshape(b, math.prod(grid), c * math.prod(patch))


def unpatchify(
    tokens: Tensor, channels: int, spatial: tuple[int, ...], patch: tuple[int, ...]
) -> Tensor:
    """Inverse of :func:`patchify`: (B, N, C·∏patch) → (B, C, *spatial)."""
    b = tokens.shape[0]
    grid = [s // p for s, p in zip(spatial, patch, strict=True)]
    n = len(patch)
    x = tokens.reshape([b, *grid, channels, *patch])
    # (B, g0, g1, ..., C, p0, p1, ...) → (B, C, g0, p0, g1, p1, ...)
    order = [0, n + 1] + [d for i in range(n) for d in (1 + i, n + 2 + i)]
    return x.permute(order).reshape(b, channels, *spatial)


def sinusoidal_positions(grid: tuple[int, ...], width: int) -> Tensor:
    """Fixed sin/cos embeddings of patch-grid coordinates, shape (∏grid, width).

    The width is split evenly across the axes (T, H, W); each axis uses frequencies
    1/10000^(i/d) as in the original transformer. Leftover channels are zero.
    """
    per_axis = (width // len(grid)) // 2 * 2
    if per_axis < 2:
        raise ValueError(f"width {width} too small for {len(grid)} position axes")
    dtype = torch.get_default_dtype()
    coords = torch.meshgrid(*[torch.arange(g, dtype=dtype) for g in grid], indexing="ij")
    freqs = 1.0 / 10000 ** (torch.arange(per_axis // 2, dtype=dtype) / (per_axis // 2))
    parts = []
    for axis in coords:
        angles = axis.reshape(-1, 1) * freqs
        parts += [torch.sin(angles), torch.cos(angles)]
    emb = torch.cat(parts, dim=1)
    return nn.functional.pad(emb, (0, width - emb.shape[1]))


# ---------------------------------------------------------------------- DiT


@dataclass
class DiTConfig:
    """Architecture of a :class:`DiT`.

    Attributes:
        sample_shape: (C, H, W) for images or (C, T, H, W) for videos.
        patch: Patch size per spatial axis, e.g. (2, 2) or (1, 2, 2) (T, H, W).
        width: Token width.
        depth: Transformer blocks.
        heads: Attention heads.
        mlp_ratio: Hidden width of each block's MLP over ``width``.
        num_classes: Number of classes (0: unconditional); index ``num_classes`` is null.
        time_dim: Width of the sinusoidal time embedding.
        time_max_frequency: Highest angular frequency of the time embedding.
        learned_positions: Learned position embeddings instead of fixed sinusoids.
        attention_backend: ``flowrl.kernels`` backend (``"auto"``, ``"reference"``, …).
        guidance_input: Also take GFT's guidance strength β (B,) in (0, 1] as an input
            (a zero-initialised embedding added to the conditioning); needs classes.
    """

    sample_shape: tuple[int, ...]
    patch: tuple[int, ...] = (2, 2)
    width: int = 128
    depth: int = 4
    heads: int = 4
    mlp_ratio: float = 4.0
    num_classes: int = 0
    time_dim: int = 64
    time_max_frequency: float = 100.0
    learned_positions: bool = False
    attention_backend: str = "auto"
    guidance_input: bool = False

    def __post_init__(self) -> None:
        self.sample_shape, self.patch = tuple(self.sample_shape), tuple(self.patch)
        if len(self.sample_shape) not in (3, 4) or len(self.patch) != len(self.sample_shape) - 1:
            raise ValueError(
                "sample_shape must be (C, H, W) or (C, T, H, W) with one patch size per "
                f"spatial axis; got {self.sample_shape} and patch {self.patch}"
            )
        if any(s % p for s, p in zip(self.sample_shape[1:], self.patch, strict=True)):
            raise ValueError(f"sample dims {self.sample_shape[1:]} not divisible by {self.patch}")
        if self.width % self.heads:
            raise ValueError(f"width {self.width} must be divisible by heads {self.heads}")
        if self.guidance_input and not self.num_classes:
            raise ValueError("guidance_input needs a class-conditional DiT (num_classes > 0)")


class DiTBlock(nn.Module):
    """Transformer block with adaLN-zero modulation by the conditioning vector c."""

    def __init__(self, width: int, heads: int, mlp_ratio: float, backend: str):
        super().__init__()
        self.norm1 = nn.LayerNorm(width, elementwise_affine=False, eps=1e-6)
        self.attn = JVPAttention(width, heads, qk_norm=True, backend=backend)
        self.norm2 = nn.LayerNorm(width, elementwise_affine=False, eps=1e-6)
        hidden = int(width * mlp_ratio)
        self.mlp = nn.Sequential(
            nn.Linear(width, hidden), nn.GELU(approximate="tanh"), nn.Linear(hidden, width)
        )
        # adaLN-zero: the modulation starts at 0, so every block starts as the identity.
        self.modulation = nn.Sequential(nn.SiLU(), zero_init_(nn.Linear(width, 6 * width)))

    def forward(self, x: Tensor, c: Tensor) -> Tensor:
        """Tokens x (B, N, width), conditioning c (B, width) → (B, N, width)."""
        shift1, scale1, gate1, shift2, scale2, gate2 = self.modulation(c)[:, None].chunk(6, dim=-1)
        x = x + gate1 * self.attn(self.norm1(x) * (1 + scale1) + shift1)
        return x + gate2 * self.mlp(self.norm2(x) * (1 + scale2) + shift2)


class DiT(nn.Module):
    """Diffusion transformer over image or video patches, conditioned on time and class.

    Args:
        config: Architecture, see :class:`DiTConfig`.

    Shapes:
        x (B, *sample_shape), t (B,), y (B,) int64 or None, beta (B,) or None (only with
        ``guidance_input``) → (B, *sample_shape).
    """

    def __init__(self, config: DiTConfig):
        super().__init__()
        self.config = config
        channels, *spatial = config.sample_shape
        self.channels, self.spatial = channels, tuple(spatial)
        grid = tuple(s // p for s, p in zip(spatial, config.patch, strict=True))
        patch_dim = channels * math.prod(config.patch)
        self.embed = nn.Linear(patch_dim, config.width)
        positions = sinusoidal_positions(grid, config.width)
        if config.learned_positions:
            self.positions = nn.Parameter(positions.clone())
        else:
            self.register_buffer("positions", positions, persistent=False)
        self.time_embedding = SinusoidalEmbedding(
            config.time_dim, max_frequency=config.time_max_frequency
        )
        self.time_mlp = nn.Sequential(
            nn.Linear(config.time_dim, config.width),
            nn.SiLU(),
            nn.Linear(config.width, config.width),
        )
        self.class_embedding = (
            nn.Embedding(config.num_classes + 1, config.width) if config.num_classes else None
        )
        # GFT's guidance strength β: zero at initialisation (see with_guidance_input).
        self.guidance_embedding = (
            _guidance_embedding(config.time_dim, config.width, config.time_max_frequency)
            if config.guidance_input
            else None
        )
        self.blocks = nn.ModuleList(
            DiTBlock(config.width, config.heads, config.mlp_ratio, config.attention_backend)
            for _ in range(config.depth)
        )
        self.final_norm = nn.LayerNorm(config.width, elementwise_affine=False, eps=1e-6)
        self.final_modulation = nn.Sequential(
            nn.SiLU(), zero_init_(nn.Linear(config.width, 2 * config.width))
        )
        self.output = zero_init_(nn.Linear(config.width, patch_dim))

    @property
    def null_class(self) -> int:
        """The label index meaning "no class" (classifier-free guidance)."""
        return self.config.num_classes

    @property
    def guidance_input(self) -> bool:
        """Whether the net takes GFT's guidance strength β."""
        return self.guidance_embedding is not None

    def condition(self, t: Tensor, y: Tensor | None, beta: Tensor | None = None) -> Tensor:
        """Conditioning vector c (B, width) from times, labels (None = null class) and β."""
        c = self.time_mlp(self.time_embedding(t))
        if self.class_embedding is not None:
            if y is None:
                y = torch.full((t.shape[0],), self.null_class, device=t.device, dtype=torch.long)
            c = c + self.class_embedding(y)
        elif y is not None:
            raise ValueError("this DiT is unconditional (num_classes=0): pass y=None")
        return _add_guidance(self.guidance_embedding, c, beta)

    def forward(
        self, x: Tensor, t: Tensor, y: Tensor | None = None, beta: Tensor | None = None
    ) -> Tensor:
        """Predict the network output (velocity or TrigFlow F) for samples x at times t.

        ``beta`` (B,): GFT's guidance strength, only for nets built with ``guidance_input``
        (None there means β = 1, the conditional model).
        """
        if tuple(x.shape[1:]) != self.config.sample_shape:
            raise ValueError(
                f"x must have shape (B, {self.config.sample_shape}), got {tuple(x.shape)}"
            )
        c = self.condition(t, y, beta)
        tokens = self.embed(patchify(x, self.config.patch)) + self.positions
        for block in self.blocks:
            tokens = block(tokens, c)
        shift, scale = self.final_modulation(c)[:, None].chunk(2, dim=-1)
        tokens = self.output(self.final_norm(tokens) * (1 + scale) + shift)
        return unpatchify(tokens, self.channels, self.spatial, self.config.patch)

    def config_dict(self) -> dict:
        """The constructor arguments, for checkpoints."""
        return asdict(self.config)


# ---------------------------------------------------------------------- MLP (2-D toys)


class MLPGenerator(nn.Module):
    """Residual MLP generator for flat samples (2-D toy data), with the DiT's signature.

    Args:
        dim: Sample width.
        width: Hidden width.
        depth: Residual blocks.
        num_classes: Classes (0: unconditional); index ``num_classes`` is null.
        time_max_frequency: Highest angular frequency of the time embedding.
        guidance_input: Also take GFT's guidance strength β (B,) in (0, 1] (a
            zero-initialised embedding added to the class embedding); needs classes.

    Shapes:
        x (B, dim), t (B,), y (B,) or None, beta (B,) or None → (B, dim).
    """

    def __init__(
        self,
        dim: int = 2,
        width: int = 256,
        depth: int = 3,
        num_classes: int = 0,
        time_max_frequency: float = 32.0,
        guidance_input: bool = False,
    ):
        super().__init__()
        if guidance_input and not num_classes:
            raise ValueError(
                "guidance_input needs a class-conditional MLPGenerator (num_classes > 0)"
            )
        self.dim, self.num_classes = dim, num_classes
        self.arguments = {
            "dim": dim,
            "width": width,
            "depth": depth,
            "num_classes": num_classes,
            "time_max_frequency": time_max_frequency,
            "guidance_input": guidance_input,
        }
        self.class_embedding = nn.Embedding(num_classes + 1, 32) if num_classes else None
        self.guidance_embedding = (
            _guidance_embedding(32, 32, time_max_frequency) if guidance_input else None
        )
        self.net = VelocityMLP(
            dim,
            cond_dim=32 if num_classes else 0,
            width=width,
            depth=depth,
            max_frequency=time_max_frequency,
        )

    @property
    def null_class(self) -> int:
        """The label index meaning "no class"."""
        return self.num_classes

    @property
    def guidance_input(self) -> bool:
        """Whether the net takes GFT's guidance strength β."""
        return self.guidance_embedding is not None

    def forward(
        self, x: Tensor, t: Tensor, y: Tensor | None = None, beta: Tensor | None = None
    ) -> Tensor:
        """Network output for samples x (B, dim) at times t (B,) (β: see :class:`DiT`)."""
        cond = None
        if self.class_embedding is not None:
            if y is None:
                y = torch.full((x.shape[0],), self.null_class, device=x.device, dtype=torch.long)
            cond = _add_guidance(self.guidance_embedding, self.class_embedding(y), beta)
        elif y is not None:
            raise ValueError("this generator is unconditional (num_classes=0): pass y=None")
        elif beta is not None:
            raise ValueError("this generator has no guidance input: pass beta=None")
        return self.net(t, x, cond)


# ---------------------------------------------------------------------- guidance input (GFT)


def _guidance_embedding(embed_dim: int, width: int, max_frequency: float) -> nn.Sequential:
    """β (B,) → (B, width): sinusoids, an MLP, a zero-initialised last layer."""
    return nn.Sequential(
        SinusoidalEmbedding(embed_dim, max_frequency=max_frequency),
        nn.Linear(embed_dim, width),
        nn.SiLU(),
        zero_init_(nn.Linear(width, width)),
    )


def _add_guidance(embedding: nn.Module | None, c: Tensor, beta: Tensor | None) -> Tensor:
    """Add embedding(β) to c (β = 1 when None); a net without the input refuses a β."""
    if embedding is None:
        if beta is not None:
            raise ValueError(
                "this network has no guidance input: pass beta=None, or build it with "
                "guidance_input=True (with_guidance_input converts a trained one)"
            )
        return c
    if beta is None:
        beta = torch.ones(c.shape[0], device=c.device, dtype=c.dtype)
    elif beta.shape != (c.shape[0],):
        raise ValueError(f"beta must have shape ({c.shape[0]},), got {tuple(beta.shape)}")
    return c + embedding(beta.to(c.dtype))


def has_guidance_input(net: nn.Module) -> bool:
    """Whether ``net`` takes GFT's guidance strength β (``net(x, t, y, beta)``)."""
    return bool(getattr(net, "guidance_input", False))


def with_guidance_input(net: nn.Module) -> nn.Module:
    """A copy of a trained :class:`DiT` / :class:`MLPGenerator` with a guidance input.

    The copy has ``net``'s weights and a zero-initialised guidance embedding, so its output
    equals ``net``'s at every β until it is trained (GFT fine-tuning of a CFG model). ``net``
    itself is not modified. A net that already has the input is copied as it is.

    Raises:
        ValueError: If ``net`` is neither kind, or is unconditional.
    """
    if isinstance(net, DiT):
        if not net.config.num_classes:
            raise ValueError("guidance needs a class-conditional DiT (num_classes > 0)")
        new: nn.Module = DiT(replace(net.config, guidance_input=True))
    elif isinstance(net, MLPGenerator):
        if not net.num_classes:
            raise ValueError("guidance needs a class-conditional MLPGenerator (num_classes > 0)")
        new = MLPGenerator(**{**net.arguments, "guidance_input": True})
    else:
        raise ValueError(
            f"with_guidance_input takes a DiT or an MLPGenerator, got {type(net).__name__}"
        )
    param = next(net.parameters())
    new = new.to(device=param.device, dtype=param.dtype)
    if has_guidance_input(net):
        new.load_state_dict(net.state_dict())
        return new
    missing, unexpected = new.load_state_dict(net.state_dict(), strict=False)
    if unexpected or any(not key.startswith("guidance_embedding.") for key in missing):
        raise ValueError(f"weights do not fit: missing {missing}, unexpected {unexpected}")
    return new
