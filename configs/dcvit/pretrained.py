"""DC-ViT for your own pretrained ViT/DeiT and images: a converted checkpoint
(``python -m launch.convert``) and an image folder (or any prepared tfds dataset). Used through
``vit_s16.py`` / ``vit_b16.py``:

  python -m launch.dcvit --config=configs/dcvit/vit_s16.py:cpu \\
      --config.model.checkpoint=ckpt/vit_s16 --config.task.data_dir=~/my_task --workdir=runs/d

Variant keys: cpu (a budget for a 2-core machine: 16
shots per class, 30 recovery steps, no baseline, small timing batch), attn_blocks, mlp_keep,
shots, seed. Every field of ``configs/dcvit/demo.py`` is here, documented there, and
overridable on the command line; ``model.checkpoint`` and ``task.data_dir`` must be given.

A starting point, not yet tuned on pretrained weights (none can be downloaded here): every
block keeps its attention and 3/8 of its MLP neurons, recovered by few-shot feature
distillation with a small learning rate and warm-up.
"""

import ml_collections

from taco_jax.config_variants import parse_variant
from taco_jax.configs.dcvit import demo


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    v = parse_variant(arg, {"cpu": bool, "attn_blocks": int, "mlp_keep": float, "shots": int,
                            "seed": int})
    c = demo.get_config(",".join(f"{k}={v[k]}" for k in ("attn_blocks", "mlp_keep", "shots",
                                                           "seed") if k in v) or None)
    c.model.name = ""  # no embedded generalist: model.checkpoint is required
    c.task.dataset = "image_folder"
    c.task.classes = ()  # every class folder
    c.recover.learning_rate = 3e-5
    c.recover.warmup_steps = 20
    c.latency.batch = 32
    c.latency.repeats = 10
    if v.get("cpu"):
        c.shots = v.get("shots", 16)
        c.recover.steps = 30
        c.recover.warmup_steps = 5
        c.recover.batch_size = 16
        c.recover.microbatch = 4  # a quarter of the activation memory; exact for a ViT
        c.baseline_drop_blocks = 0
        c.latency.batch = 8
        c.latency.repeats = 5
    return c
