"""Transfer from a converted resnet50 checkpoint to a small student on your images
(``configs/transfer/pretrained.py`` documents the fields; variant keys: cpu, transfer_set,
transfer_size, shots, seed).

  python -m launch.transfer --config=configs/transfer/resnet50.py:cpu \\
      --config.model.checkpoint=ckpt/resnet50 --config.task.data_dir=~/my_task \\
      --config.pool.data_dir=~/my_pool --workdir=runs/x
"""

import ml_collections

from taco_jax.configs.transfer import pretrained


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    return pretrained.get_config(",".join(filter(None, ["family=resnet", arg])))
