"""Main job (for now): BC-pretrain flow policies on a 2-D multimodal dataset and plot them.

Run ``make demo`` (or ``python experiments/demo.py``). It trains a plain flow-matching
actor and a shortcut actor on samples of an 8-Gaussian mixture, then writes to
``outputs/demo/``:

* ``samples.png`` — data and samples of both models at 1, 2 and 8 Euler steps;
* ``results.json`` — sliced Wasserstein distance to fresh data (and the data-vs-data
  floor) and per-mode sample counts for every model and step count;
* ``flow_bc.pt``, ``shortcut_bc.pt`` — the EMA actors (``FlowActor.load``);
* ``tb/`` — TensorBoard scalars of both trainings.

``torchrun --standalone --nproc_per_node=2 experiments/demo.py`` trains both actors
data-parallel (``bc.batch_size`` is the global batch, split among the ranks); rank 0 alone
evaluates, plots, prints and writes.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import hydra
import matplotlib
import numpy as np
import torch
from hydra.core.config_store import ConfigStore
from omegaconf import OmegaConf

from flowrl import distributed
from flowrl.algos.bc import BCConfig, FlowBC
from flowrl.data.toy import mixture_centers, mixture_dataset, sample_mixture
from flowrl.data_parallel import rank_zero
from flowrl.metrics import mode_counts, sliced_wasserstein

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (after choosing the headless backend)

# rank_zero: under torchrun only rank 0 writes Hydra's files (configs/demo.yaml).
OmegaConf.register_new_resolver("rank_zero", rank_zero, replace=True)


@dataclass
class DatasetConfig:
    """The toy dataset: ``kind`` is ``"4gaussians"`` or ``"8gaussians"``."""

    kind: str = "8gaussians"
    size: int = 8000
    seed: int = 0


@dataclass
class ActorConfig:
    """Velocity-network size shared by both actors."""

    width: int = 128
    depth: int = 2


@dataclass
class DemoConfig:
    """Everything the demo reads (Hydra validates overrides against these fields)."""

    dataset: DatasetConfig = field(default_factory=DatasetConfig)
    actor: ActorConfig = field(default_factory=ActorConfig)
    bc: BCConfig = field(
        default_factory=lambda: BCConfig(steps=8000, batch_size=256, lr=1e-3, ema_decay=0.995)
    )
    eval_steps: list[int] = field(default_factory=lambda: [1, 2, 8])
    num_samples: int = 2000
    mode_radius: float = 0.16  # 2σ of the mixture components (toy.MIXTURE_STD = 0.08)
    output_dir: str = "outputs/demo"
    progress_bar: bool = True


ConfigStore.instance().store(name="demo_schema", node=DemoConfig)


def _sw(x: np.ndarray | torch.Tensor, y: np.ndarray) -> float:
    return sliced_wasserstein(x, y, generator=torch.Generator().manual_seed(0))


@hydra.main(version_base="1.3", config_path="pkg://flowrl.configs", config_name="demo")
def run(cfg: DemoConfig) -> dict:
    """Train both actors, evaluate them, write the PNG, JSON and checkpoints.

    Under ``torchrun`` every rank trains; rank 0 alone evaluates and writes (the other ranks
    return an empty dict).
    """
    rank0 = distributed.is_main()
    out = Path(cfg.output_dir)
    if rank0:
        out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(cfg.dataset.seed)
    data = mixture_dataset(cfg.dataset.kind, cfg.dataset.size, seed=cfg.dataset.seed)
    centers = mixture_centers(cfg.dataset.kind)
    n = cfg.num_samples
    fresh = sample_mixture(cfg.dataset.kind, n, seed=10_000)
    floor = _sw(sample_mixture(cfg.dataset.kind, n, seed=20_000), fresh)
    data_near = mode_counts(fresh, centers, cfg.mode_radius).sum() / n
    bc_config = BCConfig(**OmegaConf.to_container(cfg.bc))  # type: ignore[arg-type]

    results: dict = {
        "dataset": cfg.dataset.kind,
        "num_samples": n,
        "sw_floor": floor,
        "data_near_mode_fraction": float(data_near),
        "models": {},
    }
    samples: dict[str, dict[int, np.ndarray]] = {}
    for name, shortcut in (("flow", False), ("shortcut", True)):
        start = time.time()
        bc = FlowBC.from_dataset(
            data,
            actor_config={"width": cfg.actor.width, "depth": cfg.actor.depth, "shortcut": shortcut},
            config=bc_config,
        )
        bc.learn(tensorboard_log=out / "tb" / name, progress_bar=cfg.progress_bar)
        if not rank0:
            continue  # rank 0 evaluates and writes
        bc.actor_ema.save(out / f"{name}_bc.pt")
        model: dict = {"train_seconds": round(time.time() - start, 1), "steps": {}}
        samples[name] = {}
        for K in cfg.eval_steps:
            with torch.no_grad():
                x = bc.actor_ema.sample(
                    torch.zeros(n, 1), num_steps=K, generator=torch.Generator().manual_seed(K)
                ).numpy()
            samples[name][K] = x
            counts = mode_counts(x, centers, cfg.mode_radius)
            model["steps"][K] = {
                "sw": _sw(x, fresh),
                "mode_counts": counts.tolist(),
                "near_mode_fraction": float(counts.sum() / n),
            }
            hit = int((counts > 0.25 * n / len(centers)).sum())
            print(
                f"{name:>8} K={K}: sliced W2 {model['steps'][K]['sw']:.4f} "
                f"(data floor {floor:.4f}), modes hit {hit}/{len(centers)}, "
                f"{counts.sum() / n:.0%} of samples within 2σ of a mode "
                f"(data {data_near:.0%})"
            )
        results["models"][name] = model

    if not rank0:
        return {}
    _plot(data.actions, samples, results, out / "samples.png")
    (out / "results.json").write_text(json.dumps(results, indent=2))
    print(f"wrote {out / 'samples.png'} and {out / 'results.json'}")
    return results


def _plot(data: np.ndarray, samples: dict, results: dict, path: Path) -> None:
    """One row per model, one column per step count, plus the data."""
    steps = list(next(iter(samples.values())).keys())
    fig, axes = plt.subplots(
        len(samples), len(steps) + 1, figsize=(3 * (len(steps) + 1), 3 * len(samples))
    )
    for row, (name, by_k) in enumerate(samples.items()):
        axes[row, 0].scatter(data[:2000, 0], data[:2000, 1], s=1, alpha=0.4, c="k")
        axes[row, 0].set_title("data")
        for col, K in enumerate(steps, start=1):
            x = by_k[K]
            sw = results["models"][name]["steps"][K]["sw"]
            axes[row, col].scatter(x[:, 0], x[:, 1], s=1, alpha=0.4)
            axes[row, col].set_title(f"{name}, {K} step{'s' * (K > 1)}\nSW₂ {sw:.3f}")
    for ax in axes.flat:
        ax.set_xlim(-1.1, 1.1)
        ax.set_ylim(-1.1, 1.1)
        ax.set_aspect("equal")
        ax.set_xticks([])
        ax.set_yticks([])
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> dict:
    """The script: under ``torchrun``, join the group (ranks > 0 write no Hydra files)."""
    with distributed.joined():
        return run()


if __name__ == "__main__":
    main()
