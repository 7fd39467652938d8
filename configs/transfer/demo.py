"""Task-oriented knowledge transfer on the embedded default: distil the 20-class resnet_mini
generalist, restricted to the five farm species, into a 9x smaller student, with 32 labelled
images per class and 500 transfer images retrieved from a generic pool in which the task's
classes are rare: the embedded train split with only 10% of each farm species' images kept
(4.5% of the pool; BUILD_NOTES.md: with all of them a random subset is already a third
task images and retrieval has little to add).

  python -m launch.transfer --workdir=runs/transfer
  python -m launch.transfer --config=configs/transfer/demo.py:transfer_set=random --workdir=runs/r
  python -m launch.transfer --config=configs/transfer/demo.py:runlocal --workdir=/tmp/smoke

Variant keys: transfer_set (task, pool, random, retrieval), transfer_size, shots, seed, runlocal.
Every field can be overridden on the command line (``--config.model.name=vit_mini`` changes the
teacher, whose ``generalist.steps`` 0 = the model's default, resolved by
``taco_jax.run.transfer.parse``).
"""

import ml_collections

from taco_jax.config_variants import parse_variant
from taco_jax.configs.taco import demo as taco_demo


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    v = parse_variant(arg, {"transfer_set": str, "transfer_size": int, "shots": int, "seed": int,
                            "runlocal": bool})
    taco = taco_demo.get_config("runlocal" if v.get("runlocal") else None)
    c = ml_collections.ConfigDict()
    c.model = taco.model  # the teacher: the TACO demo's shipped generalist
    c.generalist = taco.generalist  # its recipe; steps 0 = the model's default (60: runlocal)
    # The teacher is the shipped seed-0 generalist whatever the transfer seed (few-shot draw,
    # student init, random subset), so seeds compare students of one teacher.
    c.generalist.seed = 0
    c.task = taco.task
    # The dense task teacher's classifier: "auto" restricts the model's to the task's classes
    # when its labels name them all, else fits a linear probe on the labelled few-shot images
    # ("restrict", "linear_probe": configs/taco/demo.py).
    c.adapt = "auto"
    c.seed = v.get("seed", 0)  # the few-shot draw, the student's init, the random subset
    c.cache_dir = ""  # "" = $TACO_JAX_CACHE or ~/.cache/taco_jax (the generalist's cache)
    c.shots = v.get("shots", 32)  # labelled task images per class

    c.pool = ml_collections.ConfigDict()  # generic unlabelled images: every class of the dataset
    # Where the unlabelled pool comes from: "taco_embedded", a prepared tfds dataset or
    # "image_folder" (data_dir/<class>/<image>), as config.task.dataset.
    c.pool.dataset = "taco_embedded"
    c.pool.split = "train"  # the pool dataset's split
    c.pool.data_dir = ""  # the pool's data directory ("" = tfds's default)
    c.pool.skip_bad_files = False  # an image-folder pool's bad files: refused, or left out
    # Share of each task class's pool images kept (seeded): 1 = the whole train split (a third
    # of it task-class images), 0 = none (only related images to find).
    c.pool.task_class_fraction = 0.1

    c.student = "resnet_mini"  # the small model trained from scratch (a registered arch)
    # Its constructor arguments (e.g. narrower widths): the default is resnet_mini at 1/4 width,
    # one block per stage (8.9x fewer parameters than the teacher).
    c.student_overrides = {"widths": (8, 16, 32), "layers": (1, 1, 1)}
    # A converted checkpoint the student starts from instead (python -m launch.convert; its
    # arch and weights, a new task head probed on the few shots; student and
    # student_overrides are then unused); "" = the student above from scratch.
    c.student_checkpoint = ""
    # The images the student is distilled on: "task" (the labelled few shots only), "pool" (the
    # whole unlabelled pool), "random" (transfer_size pool images at random) or "retrieval"
    # (the transfer_size pool images nearest to the few shots in the teacher's embedding).
    c.transfer_set = v.get("transfer_set", "retrieval")
    c.transfer_size = v.get("transfer_size", 500)  # pool images for "random" and "retrieval"
    c.mix_labelled = True  # the labelled images are in the distillation set too
    # Steps of fine-tuning the adapted teacher on the few shots before distilling (the
    # method's "fine-tune the big model on the task"); 0: the teacher as adapted.
    c.teacher_finetune_steps = 0

    c.distill = ml_collections.ConfigDict()  # distillation on the transfer set (KD + CE)
    c.distill.steps = 1000  # optimizer steps of distillation
    c.distill.batch_size = 128  # images per step
    c.distill.learning_rate = 3e-3  # peak AdamW learning rate (cosine decay after warm-up)
    c.distill.weight_decay = 1e-4  # AdamW weight decay
    c.distill.warmup_steps = 50  # linear warm-up steps
    c.distill.kd_weight = 1.0  # weight of the KL to the teacher's softened predictions
    c.distill.ce_weight = 1.0  # weight of cross-entropy on the labelled images
    c.distill.temperature = 4.0  # softmax temperature of the distillation targets
    c.distill.augment = "shift_flip"  # "none", "shift", "shift_flip" (random shifts, flips)
    c.distill.microbatch = 0  # rows per pass (0: the whole batch); see fit.FitConfig

    # Then the student fine-tuned on the labelled few shots (KD + CE), fields as distill's.
    c.finetune = ml_collections.ConfigDict()
    c.finetune.steps = 200  # optimizer steps of the final fine-tune on the few shots
    c.finetune.batch_size = 64  # images per fine-tuning step
    c.finetune.learning_rate = 5e-4  # AdamW learning rate of the fine-tune
    c.finetune.weight_decay = 1e-4  # AdamW weight decay of the fine-tune
    c.finetune.kd_weight = 1.0  # weight of the KL to the teacher in the fine-tune
    c.finetune.ce_weight = 1.0  # weight of cross-entropy in the fine-tune
    c.finetune.temperature = 4.0  # softmax temperature in the fine-tune
    c.finetune.augment = "shift_flip"  # augmentation in the fine-tune
    c.finetune.microbatch = 0  # rows per pass (0: the whole batch); see fit.FitConfig

    # Same budget, other data: "few_shot_only" (the student on the labelled images alone),
    # "task_agnostic" (feature distillation on the pool, no task), "random_pool" (a random
    # subset of the pool of the same size instead of the retrieved one).
    c.baselines = ("few_shot_only", "task_agnostic", "random_pool")
    c.latency_batch = 256  # measured teacher vs student latency at this batch; 0 = skip

    if v.get("runlocal"):
        c.shots = 8
        c.transfer_size = 200
        c.distill.steps = 20
        c.finetune.steps = 10
        c.latency_batch = 16
    return c
