"""Pictures of samples: 2-D scatter plots, image grids and video frame strips (PNG, TensorBoard).

Shapes decide the picture: (N, 2) points → scatter; (N, C, H, W) images in [−1, 1] → a
grid; (N, C, T, H, W) videos → one row of T frames per video.
"""

from __future__ import annotations

import math
import os
from typing import Any

import torch
from torch import Tensor

__all__ = ["image_grid", "save_comparison", "save_samples", "tensorboard_samples", "video_strips"]


def image_grid(images: Tensor, nrow: int | None = None, pad: int = 1) -> Tensor:
    """Tile images (N, C, H, W) in [−1, 1] into one (C, H', W') image in [0, 1]."""
    n, c, h, w = images.shape
    nrow = nrow or max(1, int(math.ceil(math.sqrt(n))))
    rows = int(math.ceil(n / nrow))
    grid = torch.ones(c, rows * (h + pad) + pad, nrow * (w + pad) + pad)
    pixels = ((images.detach().float().cpu() + 1) / 2).clamp(0, 1)
    for i in range(n):
        r, col = divmod(i, nrow)
        top, left = pad + r * (h + pad), pad + col * (w + pad)
        grid[:, top : top + h, left : left + w] = pixels[i]
    return grid


def video_strips(videos: Tensor, pad: int = 1) -> Tensor:
    """Videos (N, C, T, H, W) → one image (C, H', W') with a row of T frames per video."""
    n, c, t = videos.shape[:3]
    frames = videos.transpose(1, 2).reshape(n * t, c, *videos.shape[3:])
    return image_grid(frames, nrow=t, pad=pad)


def _picture(samples: Tensor) -> Tensor | None:
    if samples.dim() == 4:
        return image_grid(samples)
    if samples.dim() == 5:
        return video_strips(samples)
    return None


def _scatter_figure(points: Tensor) -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(4, 4))
    xy = points.detach().float().cpu().numpy()
    ax.scatter(xy[:, 0], xy[:, 1], s=2, alpha=0.5)
    ax.set_aspect("equal")
    return fig


def save_samples(samples: Tensor, path: str | os.PathLike) -> None:
    """Write a PNG of ``samples`` (scatter, image grid or frame strips by shape)."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    picture = _picture(samples)
    if picture is not None:
        import matplotlib.pyplot as plt

        # Small pictures (8×8 digits) are enlarged with square pixels to stay legible.
        factor = max(1, min(8, 512 // max(picture.shape[1:])))
        picture = picture.repeat_interleave(factor, 1).repeat_interleave(factor, 2)
        array = picture.permute(1, 2, 0).numpy()
        plt.imsave(
            path, array[..., 0] if array.shape[-1] == 1 else array, cmap="gray", vmin=0, vmax=1
        )
        return
    if samples.dim() != 2 or samples.shape[1] != 2:
        raise ValueError(f"cannot draw samples of shape {tuple(samples.shape)}")
    import matplotlib.pyplot as plt

    fig = _scatter_figure(samples)
    fig.savefig(path, dpi=100, bbox_inches="tight")
    plt.close(fig)


def tensorboard_samples(writer: Any, tag: str, samples: Tensor, step: int) -> None:
    """Log ``samples`` to TensorBoard as an image (grids, strips) or a figure (scatter)."""
    picture = _picture(samples)
    if picture is not None:
        writer.add_image(tag, picture, step)
    elif samples.dim() == 2 and samples.shape[1] == 2:
        writer.add_figure(tag, _scatter_figure(samples), step)


def save_comparison(panels: dict[str, Tensor], path: str | os.PathLike) -> None:
    """One PNG with a titled panel per entry (scatter, grid or strips by shape), side by side."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(panels), figsize=(3.2 * len(panels), 3.4), squeeze=False)
    for ax, (title, samples) in zip(axes[0], panels.items(), strict=True):
        picture = _picture(samples)
        if picture is None:
            xy = samples.detach().float().cpu().numpy()
            ax.scatter(xy[:, 0], xy[:, 1], s=1, alpha=0.4)
            ax.set_aspect("equal")
        else:
            ax.imshow(picture.permute(1, 2, 0).squeeze(-1).numpy(), cmap="gray", vmin=0, vmax=1)
            ax.set_xticks([])
            ax.set_yticks([])
        ax.set_title(title, fontsize=9)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
