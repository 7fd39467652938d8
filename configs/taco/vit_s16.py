"""TACO for a converted vit_s16 checkpoint and your images (``configs/taco/pretrained.py``
documents the fields; variant keys: cpu, pattern, sparsity, shots, seed).

  python -m launch.taco --config=configs/taco/vit_s16.py:cpu \\
      --config.model.checkpoint=ckpt/vit_s16 --config.task.data_dir=~/my_task --workdir=runs/x
"""

import ml_collections

from taco_jax.configs.taco import pretrained


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    return pretrained.get_config(",".join(filter(None, ["family=vit", arg])))
