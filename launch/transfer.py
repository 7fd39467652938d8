"""Task-oriented knowledge transfer launcher: distil a big task teacher into a small student.

  python -m launch.transfer --workdir=runs/transfer
  python -m launch.transfer --config=configs/transfer/demo.py:transfer_set=task --workdir=runs/t
  python -m launch.transfer --config=configs/transfer/demo.py --config.distill.steps=2000 \\
      --workdir=runs/long

Writes config.json, few_shot_ids.json, transfer_ids.json, stages/ (resumable), student/,
specialist/ (rebuilt by ``python -m launch.evaluate``) and report.json into --workdir;
rerunning with the same --workdir resumes after the last stage.
"""

from absl import flags

from taco_jax.run import common
from taco_jax.run import transfer as transfer_run

_CONFIG = common.define_config_flag(
    common.shipped_config("transfer/demo.py"),
    "Config file (ml_collections), optionally with a variant string: FILE:key=value,...; a "
    "shipped config's name (configs/taco/resnet50.py) works from any directory; any field "
    "can then be overridden with --config.FIELD=VALUE.", lock_config=True)
_WORKDIR = flags.DEFINE_string(
    "workdir", None, "Output directory for the report, the chosen ids and the checkpoints; an "
    "existing one is resumed.")


if __name__ == "__main__":
    common.run_launcher(common.launcher_main(_CONFIG, _WORKDIR, transfer_run.parse,
                                      transfer_run.run_transfer))
