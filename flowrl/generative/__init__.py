"""Few-step image, video and toy generators on the shared flow core (DESIGN.md section 6).

After distillation: reward fine-tuning with DiffusionNFT (arXiv 2509.16117; ``docs/nft.md``):
:class:`RewardFinetuneTrainer` / :class:`RewardFinetuneConfig` (:mod:`.finetune`); BOSS grids
and straightening (``docs/boss.md``): :mod:`.boss`.

Guidance-Free Training (GFT, arXiv 2501.15420; ``docs/gft.md``) is exported here:
:class:`GuidanceFreeTrainer` / :class:`GuidanceFreeConfig`, :func:`gft_loss`,
:func:`gft_sample` and :func:`with_guidance_input`.
"""

from flowrl.generative.consistency import gft_loss, gft_sample, guidance_to_beta
from flowrl.generative.finetune import RewardFinetuneConfig, RewardFinetuneTrainer
from flowrl.generative.models import has_guidance_input, with_guidance_input
from flowrl.generative.trainer import GuidanceFreeConfig, GuidanceFreeTrainer

__all__ = [
    "GuidanceFreeConfig",
    "GuidanceFreeTrainer",
    "RewardFinetuneConfig",
    "RewardFinetuneTrainer",
    "gft_loss",
    "gft_sample",
    "guidance_to_beta",
    "has_guidance_input",
    "with_guidance_input",
]
