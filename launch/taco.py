"""TACO launcher: few-shot task-aware compression of a generalist model for one task.

  python -m launch.taco --workdir=runs/demo
  python -m launch.taco --config=configs/taco/demo.py:sparsity=0.75 --workdir=runs/s75
  python -m launch.taco --config=configs/taco/demo.py --config.shots=16 --workdir=runs/k16

Writes config.json, few_shot_ids.json, report.json, compressed/, masks.npz, export/ and stages/
into --workdir (and sweep.json + sweep.png with --config.sweep). Rerunning the same command after
an interruption resumes from the last finished stage (or pruned layer group).

  python -m launch.taco --workdir=runs/sweep --config.sweep='(0.5,0.75,0.95)'
"""

from absl import flags
from ml_collections import config_flags

from taco_jax import distributed
from taco_jax.compress import run

_CONFIG = config_flags.DEFINE_config_file(
    "config", "configs/taco/demo.py",
    "Config file (ml_collections), optionally with a variant string: FILE:key=value,...; any "
    "field can then be overridden with --config.FIELD=VALUE.", lock_config=True)
_WORKDIR = flags.DEFINE_string(
    "workdir", None, "Output directory for the report, the few-shot ids and the checkpoints.")
flags.mark_flag_as_required("workdir")


if __name__ == "__main__":
    distributed.run(run.launcher_main(_CONFIG, _WORKDIR, run.parse, run.run_taco))
