"""Train the embedded generalist of a TACO config and store it where ``load_or_train`` finds it.

  python -m launch.train_generalist --out=taco_jax/assets    # remake the shipped checkpoint
  python -m launch.train_generalist --config=configs/taco/demo.py:model=vit_mini --out=DIR

The checkpoint lands in OUT/generalist/<model>-<recipe hash>/ with an info.json (test accuracy,
training time, the recipe): the config's ``generalist`` fields as ``run.taco.parse`` resolves
them (``steps`` 0 = the model's default, ``taco_jax.generalist.STEPS``). The TACO launcher
uses it when its config has the same recipe.
"""

from absl import app, flags

from taco_jax import generalist
from taco_jax.run import common, taco

_CONFIG = common.define_config_flag(
    common.shipped_config("taco/demo.py"),
    "TACO config file[:variant]; its `model.name` and `generalist` fields are the recipe.")
_OUT = flags.DEFINE_string(
    "out", None, "Directory to store the checkpoint in (taco_jax/assets for the shipped one).")
flags.mark_flag_as_required("out")


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    try:
        _, src = taco.parse(_CONFIG.value)
        if src.model.checkpoint:
            raise ValueError("config.model.checkpoint is set: a converted model is not an "
                             "embedded generalist to train")
    except ValueError as e:
        raise app.UsageError(str(e)) from None
    generalist.load_or_train(src.model.arch, src.generalist, data_dir=src.task.data_dir,
                             cache_dir=_OUT.value)


if __name__ == "__main__":
    common.run_launcher(main)
