"""Task-oriented transfer from your own pretrained teacher to a small student, on your images:
a converted teacher checkpoint (``python -m launch.convert``), a task image folder (or any
prepared tfds dataset) and a pool of generic unlabelled images. Used through the family files,
which fix ``family``:

  python -m launch.transfer --config=configs/transfer/resnet50.py:cpu \\
      --config.model.checkpoint=ckpt/resnet50 --config.task.data_dir=~/my_task \\
      --config.pool.data_dir=~/my_pool --config.student_checkpoint=ckpt/resnet18 --workdir=runs/t

Variant keys: family (resnet, vit, convnext), cpu (a budget for a 2-core machine: 16 shots,
96 transfer images, 30 distillation and 10 fine-tuning steps of 16 images in micro-batches of
4, the three baselines), and the demo's transfer_set, transfer_size, shots, seed. Every field
of ``configs/transfer/demo.py`` is here, documented there, and overridable on the command line;
``model.checkpoint``, ``task.data_dir`` and ``pool.data_dir`` must be given.

The student is the family's small model (``STUDENT``): pass ``student_checkpoint`` (converted
like the teacher, at the teacher's input size) to start from its pretrained weights, which is
what the learning rates below are chosen for; without one it is trained from scratch, which
few images and steps cannot do well. A starting point, not yet tuned on pretrained weights
(none can be downloaded here).
"""

import ml_collections

from taco_jax.config_variants import parse_variant
from taco_jax.configs.transfer import demo

# The student's arch and the distillation learning rate per teacher family.
STUDENT = {"resnet": "resnet18", "vit": "vit_tiny_patch16_224", "convnext": "resnet18"}
LEARNING_RATE = {"resnet": 1e-3, "vit": 1e-4, "convnext": 1e-3}


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    v = parse_variant(arg, {"family": str, "cpu": bool, "transfer_set": str,
                            "transfer_size": int, "shots": int, "seed": int})
    family = v.get("family", "resnet")
    if family not in STUDENT:
        raise ValueError(f"unknown family {family!r}; expected one of {sorted(STUDENT)}")
    c = demo.get_config(",".join(f"{k}={v[k]}" for k in ("transfer_set", "transfer_size",
                                                          "shots", "seed") if k in v) or None)
    c.model.name = ""  # no embedded generalist: model.checkpoint is required
    c.task.dataset = "image_folder"
    c.task.classes = ()  # every class folder
    c.pool.dataset = "image_folder"
    c.pool.task_class_fraction = 1.0  # the user's pool as it is
    c.student = STUDENT[family]
    c.student_overrides = {}
    c.distill.learning_rate = LEARNING_RATE[family]
    c.distill.batch_size = 64
    c.distill.warmup_steps = 20
    c.finetune.learning_rate = LEARNING_RATE[family] / 2
    c.finetune.batch_size = 32
    c.latency_batch = 16
    if v.get("cpu"):
        c.shots = v.get("shots", 16)
        c.transfer_size = v.get("transfer_size", 96)
        for stage, steps in ((c.distill, 30), (c.finetune, 10)):
            stage.steps, stage.batch_size, stage.microbatch = steps, 16, 4
        c.distill.warmup_steps = 5
        c.latency_batch = 8
    return c
