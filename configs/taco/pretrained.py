"""TACO for your own pretrained model and images: a converted checkpoint
(``python -m launch.convert``) and an image folder (or any prepared tfds dataset), with the
family's recovery recipe. Used through the family files, which fix ``family``:

  python -m launch.taco --config=configs/taco/resnet50.py:cpu \\
      --config.model.checkpoint=ckpt/resnet50 --config.task.data_dir=~/my_task --workdir=runs/r50

Variant keys: family (resnet, vit, convnext), cpu (a budget for a 2-core machine: 16 shots, 30
recovery steps in micro-batches of 4, one-shot, the magnitude and task-agnostic baselines), and
the demo's pattern, sparsity, shots, seed. Every field of ``configs/taco/demo.py`` is here,
documented there, and overridable on the command line; ``model.checkpoint`` and
``task.data_dir`` must be given.

The recipes are starting points, not yet tuned on pretrained weights (none can be downloaded
here): AdamW with a small learning rate and warm-up (a ViT recovered at 1e-3 without warm-up
diverged: loss 0.24 -> 311 in two steps), KD from the dense task teacher, flips and shifts.
"""

import ml_collections

from taco_jax.config_variants import parse_variant
from taco_jax.configs.taco import demo

# Recovery learning rate per family: pretrained ViTs and ConvNeXts want smaller steps.
LEARNING_RATE = {"resnet": 1e-4, "vit": 3e-5, "convnext": 3e-5}


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    v = parse_variant(arg, {"family": str, "cpu": bool, "pattern": str, "sparsity": float,
                            "shots": int, "seed": int})
    family = v.get("family", "resnet")
    if family not in LEARNING_RATE:
        raise ValueError(f"unknown family {family!r}; expected one of {sorted(LEARNING_RATE)}")
    c = demo.get_config(",".join(f"{k}={v[k]}" for k in ("pattern", "sparsity", "shots", "seed")
                                 if k in v) or None)
    c.model.name = ""  # no embedded generalist: model.checkpoint is required
    c.task.dataset = "image_folder"
    c.task.classes = ()  # every class folder
    c.adapt = "auto"
    c.prune.sparsity = v.get("sparsity", 0.75)
    c.recover.learning_rate = LEARNING_RATE[family]
    c.recover.warmup_steps = 20
    c.recover.weight_decay = 0.0
    c.recover.batch_size = 32
    c.baselines = ("magnitude", "task_agnostic", "dense_finetune")
    c.latency_batch = 16
    if v.get("cpu"):
        c.shots = v.get("shots", 16)
        c.recover.steps = 30
        c.recover.warmup_steps = 5
        c.recover.batch_size = 16
        c.recover.microbatch = 4  # ResNet-50 at 224: 2.9 vs 4.3 GiB a step, and no slower
        c.schedule = ()
        c.baselines = ("magnitude", "task_agnostic")
        c.latency_batch = 8
    return c
