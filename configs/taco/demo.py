"""TACO on the embedded default: specialise the 20-class generalist (10 animal species + 10
digits) to the five farm species of a camera trap, with 32 images per class.

  python -m launch.taco --workdir=runs/demo
  python -m launch.taco --config=configs/taco/demo.py:model=vit_mini,pattern=2:4 --workdir=runs/x
  python -m launch.taco --config=configs/taco/demo.py:runlocal --workdir=/tmp/smoke   # seconds

  python -m launch.taco --config=configs/taco/demo.py:pool --workdir=runs/pool   # + a pool

Your own model and images (a converted checkpoint; a folder of <class>/<image> files):

  python -m launch.taco --config.model.checkpoint=ckpt/resnet50 \
      --config.task.dataset=image_folder --config.task.data_dir=~/my_task \
      --config.task.classes='()' --workdir=runs/mine

Variant keys: model, pattern, sparsity, shots, seed, pool (recover on the 15 other classes'
images too, unlabelled), runlocal (a tiny smoke-test run).

Configs are data: a variant only sets fields, and every field can be overridden on the command
line (``--config.prune.sparsity=0.5``, ``--config.model.name=vit_mini``,
``--config.prune.pattern=2:4``) with the same effect as the variant key. The fields mean what
the library's ``taco.TacoConfig`` fields do, and this file's values are its defaults (a test
holds them equal): ``schedule="auto"`` and ``prune.allocation="auto"`` are resolved from the
target and the pattern, ``recover.steps`` is the whole recovery budget, "stem" in
``prune.overrides`` is the model's input layer; ``generalist.steps=0`` is the model's default.
"""

import ml_collections

from taco_jax.config_variants import parse_variant

FARM_SPECIES = ("cat", "cow", "dog", "horse", "sheep")
GRADUAL_LEVELS = (0.5, 0.75)  # intermediate sparsities below the target (BUILD_NOTES.md)


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    v = parse_variant(arg, {"model": str, "pattern": str, "sparsity": float, "shots": int,
                            "seed": int, "pool": bool, "runlocal": bool})
    c = ml_collections.ConfigDict()
    c.model = ml_collections.ConfigDict()
    # A converted model directory (python -m launch.convert --out=DIR): its weights, eval
    # recipe (size, resize, crop, interpolation, mean/std: applied to every image of the run)
    # and, when converted with --labels, its class names. "" = the embedded generalist `name`.
    c.model.checkpoint = ""
    # The embedded generalist (trained once on the 20 embedded classes, then cached; the
    # demo's resnet_mini and vit_mini ship with the package), used when checkpoint is "".
    c.model.name = v.get("model", "resnet_mini")
    c.seed = v.get("seed", 0)
    c.cache_dir = ""  # "" = $TACO_JAX_CACHE or ~/.cache/taco_jax

    c.task = ml_collections.ConfigDict()
    # "taco_embedded" (the embedded default), a prepared tfds dataset (name, with data_dir its
    # tfds data directory), or "image_folder": data_dir/<class>/<image> (a seeded, stratified
    # 80/20 train/test split is made and listed in the workdir) or
    # data_dir/<split>/<class>/<image>. Images of any size and mode go through the model's
    # eval recipe (resize, center crop, channels).
    c.task.dataset = "taco_embedded"
    c.task.data_dir = ""  # "" = tfds's default data directory
    c.task.classes = FARM_SPECIES  # class names (or label ids) in task-label order; () = all
    # A built-in ImageNet-1k subtask (taco_jax/data/imagenet_subtasks.json: dogs, birds, ...)
    # instead of classes: label ids of tfds imagenet2012, wnids of an ImageNet-layout folder.
    c.task.subtask = ""
    c.task.train_split = "train"
    c.task.test_split = "test"
    # Read at most this many train images per class (seeded; 0 = all): the few-shot sample is
    # drawn from them. Caps memory on large train splits (an ImageNet class has 1,300).
    c.task.train_per_class = 0
    # An image folder's empty or unreadable files (Pillow cannot read their header): False =
    # the run is refused naming them (before any work for empty files); True = they are left
    # out, logged and listed in the workdir's task_files.json ("skipped").
    c.task.skip_bad_files = False

    c.generalist = ml_collections.ConfigDict()  # trained once on all 20 classes, then cached
    # 0 = the model's default (generalist.STEPS): 6,000 for vit_mini, 1,500 for the
    # others. A ViT (no convolutional prior) needs far longer on these 12k images: vit_mini
    # reaches 82.6% test top-1 after 1,500 steps, 96.4% after 6,000 (BUILD_NOTES, session 7).
    c.generalist.steps = 0
    c.generalist.batch_size = 128
    c.generalist.learning_rate = 2e-3
    c.generalist.weight_decay = 0.05
    c.generalist.warmup_steps = 100
    c.generalist.augment = "shift"  # no flips: digits are not mirror-symmetric
    # The shipped seed-0 generalist whatever the run's seed (few-shot draw, recovery), so seeds
    # compare compressions of one model.
    c.generalist.seed = 0

    c.shots = v.get("shots", 32)
    # The dense task teacher: "restrict" keeps the model's classifier rows of the task's
    # classes (matched by name: the embedded generalist's classes, a checkpoint's labels);
    # "linear_probe" fits a new head on the few-shot images' frozen features (L2 weight
    # probe_l2; 0 = chosen by 5-fold cross-validation on them), for tasks whose classes the
    # model was not trained on; "auto": restrict when the model's labels name every task
    # class, else probe (the log and report["adapt"] say which ran).
    c.adapt = "auto"
    c.probe_l2 = 0.0
    c.prune = ml_collections.ConfigDict()
    # The layer solver: "auto" is exact OBC where it is cheap (every resnet_mini layer), else
    # for unstructured masks ADMM on a sparsity ramp, for N:M and tiles SparseGPT, each with
    # its kept weights then re-solved exactly on its mask (prune.refit); "sparsegpt", "admm",
    # "obc", "magnitude" force one (BUILD_NOTES: one-shot at 90%, 92.7 vs 69.1 for SparseGPT).
    c.prune.method = "auto"
    c.prune.refit = True
    # "unstructured", "2:4" (any N:M), "block16x16", ...; an N:M pattern fixes its own level
    # (1 - N/M in every layer), so it ignores sparsity and takes no schedule ("auto": none).
    # "structured": whole channels, heads and MLP neurons removed (group OBS compensating the
    # consumer layer): a smaller dense model, faster on any runtime; sparsity is then the share
    # of the cut layers' multiply-accumulates removed, and the run is one-shot.
    c.prune.pattern = v.get("pattern", "unstructured")
    c.prune.sparsity = v.get("sparsity", 0.9)  # the target: the final step's total sparsity
    # Structured only: instead of sparsity, the level measured this many times faster than the
    # dense model at latency_batch on this machine (bisection over candidate shapes); 0 = off.
    c.prune.target_speedup = 0.0
    # Structured only, ResNets: the share of each residual stream's channels cut from every
    # layer that writes or reads it (coupled group OBS), before the blocks' inner widths; 0 =
    # the streams keep their width. resnet_mini cannot reach 2x on XLA CPU without it.
    c.prune.stream_sparsity = 0.0
    # Structured cuts keep a multiple of this many channels (the nearest to their level): XLA
    # CPU's convolutions run far slower at other widths (BUILD_NOTES). 1 = exactly the level.
    c.prune.channel_multiple = 8
    c.prune.blocksize = 128
    c.prune.percdamp = 0.01
    # Per-layer sparsities from each layer's measured error curve, meeting the same total
    # non-zero budget (BUILD_NOTES.md: before recovery 69% vs 30% for uniform at 90%).
    # "global": layer errors; "output": the model's KL with only that layer pruned (better
    # before recovery, the same after it: BUILD_NOTES, session 5); "uniform". "auto": "global",
    # or "uniform" for an N:M pattern (one fixed level in every layer: nothing to allocate; an
    # N:M pattern refuses the per-layer allocations).
    c.prune.allocation = "auto"
    # (layer name, sparsity or (pattern, sparsity)) pairs, e.g. on the command line
    # --config.prune.overrides="(('stem', 0.0), ('layer1.0.conv1', 0.5))"; "stem" is the
    # model's input layer, whatever its name (conv1 of a ResNet, patch_embed.proj of a ViT).
    # The stem (resnet_mini's 3x3x1: 9 weights per filter, 144 in all) stays dense, as in the
    # OBC/SparseGPT CNN recipes: at 50% alone it costs 54 points of task accuracy.
    c.prune.overrides = (("stem", 0.0),)
    c.prune.targets = "self"

    c.recover = ml_collections.ConfigDict()
    # The whole recovery budget: the schedule's schedule_steps per level come out of it, the
    # final step gets the rest (200 steps after 2 levels of 100 at 90%; 400 without a schedule).
    c.recover.steps = 400
    c.recover.batch_size = 64
    c.recover.learning_rate = 1e-3
    c.recover.weight_decay = 0.0
    c.recover.kd_weight = 1.0
    c.recover.ce_weight = 0.5
    c.recover.temperature = 4.0
    c.recover.augment = "shift_flip"
    c.recover.unlabelled_share = 0.5  # of every recovery batch, when c.pool gives images
    # Rows per forward/backward pass (0: the whole batch): activation memory follows it; a
    # BatchNorm model then normalises each micro-batch on its own (fit.FitConfig).
    c.recover.microbatch = 0

    # Task-agnostic unlabelled images the recovery distils on (the teacher's task logits as
    # targets) beside the labelled few-shot set; both methods get them. "" = none.
    c.pool = ml_collections.ConfigDict()
    c.pool.dataset = "taco_embedded" if v.get("pool") else ""
    c.pool.split = "train"
    c.pool.data_dir = ""
    c.pool.skip_bad_files = False  # as task.skip_bad_files, for an image-folder pool
    # Share of each task class's pool images kept (seeded). 0: none of the task's classes, so
    # the labelled few-shot images stay the only task images the run sees.
    c.pool.task_class_fraction = 0.0
    # Recover on only this many pool images, those nearest to the few-shot set in the
    # teacher's embedding (the transfer method's retrieval); 0 = the whole pool.
    c.pool.retrieve = 0

    # Gradual pruning: intermediate sparsities, each followed by schedule_steps of the same
    # recovery (out of the recover.steps budget), before the final prune to c.prune.sparsity
    # (magnitude gets the same). "auto": the schedule_levels below the target sparsity, none for
    # an N:M pattern; or an explicit increasing tuple below the target, e.g.
    # --config.schedule="(0.5,)", or () for one-shot pruning.
    c.schedule = ml_collections.FieldReference("auto", field_type=object)  # str or tuple
    c.schedule_levels = GRADUAL_LEVELS
    c.schedule_steps = 100

    c.calibration_views = 1  # the solver's calibration set: each few-shot image, + augmented views
    # After each prune, scale the compensated weights of each conv that feeds a BatchNorm back
    # to their dense norm (folded into the BatchNorm; the function is unchanged): the solver's
    # 2-4x larger weights slow the recovery (5 points at 16x16 tiles, 90%). No-op without BN.
    c.restore_scale = True
    # After each prune, scale the compensated weights of each conv that feeds a BatchNorm back
    # to their dense norm (folded into the BatchNorm; the function is unchanged): the solver's
    # 2-4x larger weights slow the recovery (5 points at 16x16 tiles, 90%). No-op without BN.
    c.restore_scale = True
    # Same data, schedule and recovery budget as TACO. "magnitude": magnitude pruning with
    # TACO's allocation rule (per-layer levels from its own error curves on the task images;
    # isolates the solver's weights); "magnitude_gmp": classical global magnitude
    # pruning, one |w| threshold over all layers (data-free); "magnitude_uniform": every layer
    # at the target (SparseGPT's baseline; not run by default); "dense_finetune": the dense
    # teacher fine-tuned on the few-shot images for the same number of steps; "task_agnostic":
    # TACO with its one-shot steps calibrated on as many generic images (the pool when
    # configured, else the dataset's other classes) and the same recovery: TACO's claim that
    # the task's own images calibrate better, measured.
    # "unstructured" (structured patterns only): TACO unstructured at the level that leaves as
    # many non-zeros as the structured specialist has, recovered and timed the same way.
    # "dcvit" (structured patterns, ViTs only): DC-ViT's cut (attention of the least sensitive
    # blocks removed, every MLP cut to one fraction) at the specialist's MACs, the plan with the
    # lowest one-shot feature error, recovered by feature distillation with the same budget.
    # "auto": these four, and for a structured pattern ("magnitude_gmp" is for masks) "magnitude",
    # "magnitude_uniform" (channel-norm pruning at uniform widths, Torch-Pruning's default),
    # "unstructured", "dcvit" (for a ViT), "dense_finetune", "task_agnostic".
    c.baselines = ml_collections.FieldReference("auto", field_type=object)  # str or tuple
    # Measured speed of every model vs dense at batch 1 and this batch on this device (one dense
    # reference, interleaved rounds); also the batch of prune.target_speedup. 0 = skip.
    c.latency_batch = 64
    c.sweep = ()  # extra sparsities for the accuracy-vs-compression plot, e.g. (0.5, 0.75, 0.95)

    if v.get("runlocal"):
        c.generalist.steps = 60
        c.shots = 8
        c.recover.steps = 25  # 5 after the one schedule level, 20 for the final step
        c.baselines = ("magnitude",)
        c.schedule_levels = GRADUAL_LEVELS[:1]
        c.schedule_steps = 5
        c.latency_batch = 8
    return c
