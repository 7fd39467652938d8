"""DC-ViT launcher: dense few-shot compression of a ViT (one model, or the frontier sweep).

  python -m launch.dcvit --workdir=runs/dcvit
  python -m launch.dcvit --config=configs/dcvit/demo.py:sweep --workdir=runs/dcvit_sweep
  python -m launch.dcvit --config.then_prune.sparsity=0.5 --config.recover.steps=60 \
      --workdir=DIR   # then_prune.recover_steps 0 = recover.steps (60), as run.dcvit.parse reads it

compress mode writes config.json, few_shot_ids.json, report.json and compressed/ (orbax state +
structure.json; masks.npz too when composed with TACO) into --workdir; sweep mode writes
config.json, few_shot_ids.json, stages/ (every recovered model: a rerun with the same config
resumes), sweep.json and frontier.png.
"""

from absl import flags

from taco_jax.run import common
from taco_jax.run import dcvit as dcvit_run

_CONFIG = common.define_config_flag(
    common.shipped_config("dcvit/demo.py"),
    "Config file (ml_collections), optionally with a variant string: FILE:key=value,...; a "
    "shipped config's name (configs/taco/resnet50.py) works from any directory; any field "
    "can then be overridden with --config.FIELD=VALUE.", lock_config=True)
_WORKDIR = flags.DEFINE_string(
    "workdir", None, "Output directory for the report or sweep, the few-shot ids and the "
    "compressed checkpoint.")


if __name__ == "__main__":
    common.run_launcher(common.launcher_main(_CONFIG, _WORKDIR, dcvit_run.parse,
                                      dcvit_run.run_dcvit))
