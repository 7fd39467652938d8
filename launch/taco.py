"""TACO launcher: few-shot task-aware compression of a generalist model for one task.

  python -m launch.taco --workdir=runs/demo
  python -m launch.taco --config=configs/taco/demo.py:sparsity=0.75 --workdir=runs/s75
  python -m launch.taco --config=configs/taco/demo.py --config.shots=16 --workdir=runs/k16
  python -m launch.taco --config=configs/taco/demo.py:runlocal --config.prune.sparsity=0.5 \
      --workdir=/tmp/s50

An overridden field means what the variant key setting it means: the defaults that depend on
other fields (``schedule="auto"``: the schedule_levels below the target sparsity, none for N:M;
``recover.steps``: the whole recovery budget, the schedule's steps taken out of it; the "stem"
layer; ``generalist.steps=0``: the model's recipe) are resolved by ``run.taco.parse`` before any
work (configs/taco/demo.py documents each).

Writes config.json, few_shot_ids.json, report.json, compressed/, specialist/ (rebuilt by
``python -m launch.evaluate --workdir=...``), masks.npz, export/ and stages/ into --workdir
(and sweep.json + sweep.png with --config.sweep). Rerunning the same command after
an interruption resumes from the last finished stage (or pruned layer group).

  python -m launch.taco --workdir=runs/sweep --config.sweep='(0.5,0.75,0.95)'
"""

from absl import flags

from taco_jax.run import common, taco

_CONFIG = common.define_config_flag(
    common.shipped_config("taco/demo.py"),
    "Config file (ml_collections), optionally with a variant string: FILE:key=value,...; a "
    "shipped config's name (configs/taco/resnet50.py) works from any directory; any field "
    "can then be overridden with --config.FIELD=VALUE.", lock_config=True)
_WORKDIR = flags.DEFINE_string(
    "workdir", None, "Output directory (required) for the report, the few-shot ids and the "
    "checkpoints.")


if __name__ == "__main__":
    common.run_launcher(common.launcher_main(_CONFIG, _WORKDIR, taco.parse, taco.run_taco))
