"""DC-ViT on the embedded default: compress the 20-class vit_mini generalist to a smaller dense
ViT for the five farm species, from a few hundred unlabeled task images.

  python -m launch.dcvit --workdir=runs/dcvit                                # one model
  python -m launch.dcvit --config=configs/dcvit/demo.py:attn_blocks=1,mlp_keep=0.5 --workdir=DIR
  python -m launch.dcvit --config=configs/dcvit/demo.py:attn_blocks=2 \
      --config.plan.mlp_keep="(0.5,0.5)" --workdir=DIR   # per block, least sensitive first
  python -m launch.dcvit --config=configs/dcvit/demo.py:then_sparsity=0.5 --workdir=DIR  # + TACO
  python -m launch.dcvit --config=configs/dcvit/demo.py:sweep --workdir=runs/dcvit_sweep
  python -m launch.dcvit --config=configs/dcvit/demo.py:runlocal --workdir=/tmp/smoke   # quick

Variant keys: sweep (the latency/accuracy family and its frontier vs block dropping),
attn_blocks, mlp_keep, drop_blocks, then_sparsity, shots, steps, block_outputs, seed, runlocal.
The task and the generalist recipe are TACO's demo ones (``model=vit_mini``; ``generalist.steps``
0 = the model's default, 6,000 for vit_mini), so both methods start from the same generalist
checkpoint (shipped under taco_jax/assets/generalist/). Every field can be overridden on the
command line; ``taco_jax.run.dcvit.parse`` resolves the defaults that depend on other fields
(``then_prune.recover_steps=0``: ``recover.steps``; ``generalist.steps=0``).
"""

import ml_collections

from taco_jax.config_variants import parse_variant
from taco_jax.configs.taco import demo as taco_demo

# The sweep's DC-ViT family: (blocks without attention, kept MLP fraction per block), blocks in
# the few-shot ranking's order (least sensitive first). A nested chain of MLP-width cuts, two
# blocks per step (≈ 1–4% latency each on vit_mini): 1/8 of a block's MLP at a time down to 1/4,
# where accuracy starts to fall, then 1/16 at a time down to 1/8, then 1/16 and 1/32 of every
# MLP; one plan that also removes the least sensitive block's attention at a matched MLP cut
# (what removing attention costs); and attention-free blocks on thin MLPs, which reach past the
# ≈ 41% where MLP cuts run out, to the far end of the 10–50% range.
GRID = (
    (0, (0.75, 0.75, 0.875, 0.875)),
    (0, (0.75, 0.75, 0.75, 0.75)),
    (0, (0.625, 0.625, 0.75, 0.75)),
    (0, (0.625, 0.625, 0.625, 0.625)),
    (0, (0.5, 0.5, 0.625, 0.625)),
    (0, (0.5, 0.5, 0.5, 0.5)),
    (0, (0.375, 0.375, 0.5, 0.5)),
    (0, (0.375, 0.375, 0.375, 0.375)),
    (0, (0.25, 0.25, 0.375, 0.375)),
    (0, (0.25, 0.25, 0.25, 0.25)),
    (0, (0.1875, 0.1875, 0.25, 0.25)),
    (0, (0.1875, 0.1875, 0.1875, 0.1875)),
    (0, (0.125, 0.125, 0.1875, 0.1875)),
    (0, (0.125, 0.125, 0.125, 0.125)),
    (0, (0.0625, 0.0625, 0.0625, 0.0625)),
    (0, (0.03125, 0.03125, 0.03125, 0.03125)),
    (1, (0.5, 0.5, 0.5, 0.5)),
    (1, (0.25, 0.25, 0.25, 0.25)),
    (1, (0.1875, 0.1875, 0.1875, 0.1875)),
    (1, (0.125, 0.125, 0.125, 0.125)),
    (2, (0.125, 0.125, 0.125, 0.125)),
)


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    v = parse_variant(arg, {"sweep": bool, "attn_blocks": int, "mlp_keep": float,
                            "drop_blocks": int, "then_sparsity": float, "shots": int,
                            "steps": int, "block_outputs": bool, "seed": int, "runlocal": bool})
    base = taco_demo.get_config(f"model=vit_mini,seed={v.get('seed', 0)}")
    c = ml_collections.ConfigDict()
    c.mode = "sweep" if v.get("sweep") else "compress"
    c.model = base.model
    c.seed = base.seed
    c.cache_dir = base.cache_dir
    c.task = base.task
    # The dense task teacher's classifier: "auto" restricts the model's to the task's classes
    # when its labels name them all, else fits a linear probe on the labelled few-shot images
    # ("restrict", "linear_probe": configs/taco/demo.py).
    c.adapt = "auto"
    c.generalist = base.generalist

    c.shots = v.get("shots", 64)  # unlabeled images per class: 320 for the 5 farm species
    c.calibration_batch = 64
    c.prune = ml_collections.ConfigDict()  # the structured second-order MLP-neuron criterion
    c.prune.blocksize = 128
    c.prune.percdamp = 0.01
    # Few-shot feature distillation (no labels: ce_weight stays 0), the same for every model.
    c.recover = ml_collections.ConfigDict()
    c.recover.steps = v.get("steps", 120)
    c.recover.batch_size = 32
    c.recover.learning_rate = 1e-3
    c.recover.weight_decay = 0.0
    c.recover.warmup_steps = 10
    c.recover.ce_weight = 0.0
    c.recover.kd_weight = 0.0
    c.recover.augment = "shift_flip"
    c.recover.microbatch = 0  # rows per forward/backward pass (0: the whole batch); less memory
    c.block_outputs = v.get("block_outputs", False)  # also distill every block's output tokens

    # Compress mode: one plan in the sweep grid's terms (blocks that lose attention, least
    # sensitive first; kept MLP fraction per block, same order). Default: every block keeps its
    # attention and 3/8 of its MLP neurons; removing attention costs more accuracy than an MLP
    # cut of the same latency (BUILD_NOTES, issue #8).
    c.plan = ml_collections.ConfigDict()
    c.plan.attn_blocks = v.get("attn_blocks", 0)
    # One number: the same fraction in every block; or a tuple, one per block in that order.
    c.plan.mlp_keep = ml_collections.FieldReference(v.get("mlp_keep", 0.375), field_type=object)
    # The same-budget few-shot block-dropping baseline: blocks dropped (0 = no baseline).
    c.baseline_drop_blocks = v.get("drop_blocks", 1)

    c.then_prune = ml_collections.ConfigDict()  # DC-ViT then TACO; sparsity 0 = off
    c.then_prune.pattern = "unstructured"
    c.then_prune.sparsity = v.get("then_sparsity", 0.0)
    c.then_prune.recover_steps = 0  # recovery after the prune; 0 = recover.steps

    c.sweep = ml_collections.ConfigDict()
    # DC-ViT models: (how many blocks lose attention, least sensitive first; the kept fraction of
    # each block's MLP neurons, blocks in the same order; blocks not listed keep their whole MLP).
    c.sweep.dcvit = GRID
    c.sweep.drop_blocks = (1, 2)  # ≈ 22% and 43% lower latency: they bracket both targets
    c.sweep.seeds = (0, 1)  # recovery seeds per model: accuracy = their mean (± s.e.)
    c.sweep.targets = (0.25, 0.40)  # latency reductions at which the two methods are compared

    c.latency = ml_collections.ConfigDict()  # dense and compressed timed call by call in turn
    c.latency.batch = 256
    c.latency.repeats = 20

    if v.get("runlocal"):
        c.shots = 8
        c.recover.steps = 5
        c.sweep.dcvit = ((1, (0.5,)),)
        c.sweep.seeds = (0,)
        c.sweep.drop_blocks = (1,)
        c.latency.batch = 16
        c.latency.repeats = 2
    return c
