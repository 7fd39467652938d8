"""DC-ViT for a converted vit_b16 checkpoint and your images (``configs/dcvit/pretrained.py``
documents the fields; variant keys: cpu, attn_blocks, mlp_keep, shots, seed).

  python -m launch.dcvit --config=configs/dcvit/vit_b16.py:cpu \\
      --config.model.checkpoint=ckpt/vit_b16 --config.task.data_dir=~/my_task --workdir=runs/x
"""

import ml_collections

from taco_jax.configs.dcvit import pretrained


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    return pretrained.get_config(arg)
