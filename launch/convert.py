"""Convert a PyTorch checkpoint (timm / torchvision / Hugging Face) to a taco-jax orbax checkpoint.

    python -m launch.convert --src=vit_small.safetensors --arch=vit_small_patch16_224 --out=ckpt/

``.safetensors`` and ``.npz`` are read without torch; ``.pth``/``.pt``/``.bin`` need torch. The
classifier size is read from the checkpoint. On any mismatch (missing, unexpected or misshaped
tensors) the error lists each one and nothing is written to ``--out``.
"""

from __future__ import annotations

from pathlib import Path

from absl import app, flags, logging

from taco_jax import distributed
from taco_jax.convert import convert_state_dict, load_state_dict, save_checkpoint
from taco_jax.convert.convert import NAMINGS
from taco_jax.convert.state_dict import SUFFIXES
from taco_jax.data import subtasks
from taco_jax.models import PRESETS, names

FLAGS = flags.FLAGS
flags.DEFINE_string("src", None, "PyTorch checkpoint file: "
                    + ", ".join(SUFFIXES) + ".", required=True)
flags.DEFINE_enum("arch", None, names(), "Registered architecture to build.", required=True)
flags.DEFINE_string("out", None, "Output directory; must not exist yet.", required=True)
flags.DEFINE_enum("naming", "auto", list(NAMINGS),
                  "Parameter names in --src: timm (also torchvision ResNets), hf (Hugging Face), "
                  "augreg (Google's JAX ViT .npz), or auto (told apart by the keys).")
flags.DEFINE_enum("preprocess", None, list(PRESETS),
                  "Eval preprocessing preset stored with the model (default: the arch's own).")
flags.DEFINE_integer("num_classes", None, "Only for checkpoints without a classifier: size of "
                     "the new, zero-initialized one (otherwise read from --src).", lower_bound=1)
flags.DEFINE_integer("img_size", None, "Input resolution to build for; ViT position embeddings "
                     "are resized to it (default: the arch's own).", lower_bound=1)
flags.DEFINE_string("labels", None, "The class name of each classifier row, stored with the "
                    "model so that a run restricts the classifier to a task's classes by name: "
                    "'imagenet1k' (the 1,000 ImageNet wnids in the standard order, as tfds "
                    "imagenet2012 and ImageNet-layout folders name them) or a text file with "
                    "one name per line. Unset: a run fits a linear probe for its task.")

IMAGENET1K = "imagenet1k"


def read_labels(value: str) -> list[str]:
    """``--labels``: the ImageNet-1k wnids, or the non-empty lines of a text file."""
    if value == IMAGENET1K:
        return list(subtasks.imagenet_wnids())
    path = Path(value).expanduser()
    if not path.is_file():
        raise app.UsageError(f"--labels={value!r}: not {IMAGENET1K!r} and no such file")
    return [line.strip() for line in path.read_text().splitlines() if line.strip()]


@flags.validator("src", "--src must name an existing file with a known suffix")
def _check_src(value: str | None) -> bool:
    if value is None:
        return True
    path = Path(value)
    if not path.is_file():
        raise flags.ValidationError(f"--src={value!r}: no such file")
    if path.suffix not in SUFFIXES:
        raise flags.ValidationError(f"--src={value!r}: suffix {path.suffix!r} is not one of "
                                    + ", ".join(SUFFIXES))
    return True


@flags.validator("out", "--out must not exist yet")
def _check_out(value: str | None) -> bool:
    if value is not None and Path(value).exists():
        raise flags.ValidationError(f"--out={value!r} already exists; give a new directory")
    return True


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    overrides = {} if FLAGS.img_size is None else {"img_size": FLAGS.img_size}
    labels = None if FLAGS.labels is None else read_labels(FLAGS.labels)
    sd = load_state_dict(FLAGS.src)
    logging.info("read %d tensors from %s", len(sd), FLAGS.src)
    model, spec = convert_state_dict(sd, FLAGS.arch, naming=FLAGS.naming,
                                     preprocess=FLAGS.preprocess, num_classes=FLAGS.num_classes,
                                     **overrides)
    if labels is not None and len(labels) != spec.num_classes:
        raise app.UsageError(f"--labels={FLAGS.labels!r} has {len(labels)} names; the "
                             f"checkpoint's classifier has {spec.num_classes} rows")
    out = save_checkpoint(model, spec, FLAGS.out,
                          source={"file": str(Path(FLAGS.src).absolute()), "naming": FLAGS.naming},
                          labels=labels)
    logging.info("wrote %s (%s, %d classes)", out, spec.arch, spec.num_classes)
    print(f"wrote {out}: {spec.arch}, {spec.num_classes} classes"
          f"{'' if labels is None else ' (labelled)'}, preprocess {model.preprocess}")


if __name__ == "__main__":
    distributed.run(main)
