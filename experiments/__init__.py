"""The pipeline's entry points, installed as ``flowrl.experiments`` (and as commands).

``train`` (``flowrl-train``: dataset → BC → RL fine-tuning → evaluation, one Hydra config),
``enjoy`` (``flowrl-enjoy`` / ``flowrl-eval``: play, record or evaluate a run), ``summarize``
(``flowrl-summarize``: tables over seeds), ``generators`` (``flowrl-generators``: the few-step
image and video generators), ``demo`` (the 2-D behaviour-cloning demo), and ``pretrain`` (the
dataset and BC stages). The folder ``experiments/`` of the repository is this package
(``package-dir`` in ``pyproject.toml``), so ``python experiments/train.py`` in a clone and
``flowrl-train`` after ``pip install "flowrl-policies[pipeline]"`` run the same code. The
shipped dataset lies in ``datasets/`` (``pkg://flowrl.experiments/datasets/…`` in a config).
"""
