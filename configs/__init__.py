"""The pipeline's Hydra configs, installed as ``flowrl.configs`` (``pkg://flowrl.configs``).

``train.yaml`` (``flowrl-train``), ``generators.yaml`` (``flowrl-generators``), ``demo.yaml``
and their groups (``algo/``, ``env/``, ``policy/``, ``experiment/``, ``recipe/``,
``dataset/``). The folder ``configs/`` of the repository is this package (``package-dir`` in
``pyproject.toml``).
"""
