"""Convert a PyTorch checkpoint (timm / torchvision / Hugging Face) to a taco-jax orbax checkpoint.

    python -m launch.convert --src=vit_small.safetensors --arch=vit_small_patch16_224 --out=ckpt/

``.safetensors`` and ``.npz`` are read without torch; ``.pth``/``.pt``/``.bin`` need torch. The
classifier size is read from the checkpoint. The eval recipe (size, resize, crop, interpolation,
mean/std) and class names come from the metadata published beside ``--src`` when present (timm's
``config.json`` ``pretrained_cfg``; Hugging Face's ``preprocessor_config.json`` and ``id2label``),
else from ``--preprocess`` / ``--labels`` or the architecture's default; the log says which. With
torch and timm installed, the converted logits are compared with timm's own model on random input
and the largest difference printed. On any mismatch (missing, unexpected or misshaped
tensors) the error lists each one and nothing is written to ``--out``.
"""

from __future__ import annotations

from pathlib import Path

from absl import app, flags, logging

from taco_jax import distributed
from taco_jax.convert import convert_state_dict, load_state_dict, parity, recipe, save_checkpoint
from taco_jax.convert.convert import NAMINGS, detect_naming
from taco_jax.convert.state_dict import SUFFIXES
from taco_jax.convert.torchvision_names import torchvision_to_timm
from taco_jax.data import subtasks
from taco_jax.models import PRESETS, names

FLAGS = flags.FLAGS
flags.DEFINE_string("src", None, "PyTorch checkpoint file: "
                    + ", ".join(SUFFIXES) + ".", required=True)
flags.DEFINE_enum("arch", None, names(), "Registered architecture to build.", required=True)
flags.DEFINE_string("out", None, "Output directory; must not exist yet.", required=True)
flags.DEFINE_enum("naming", "auto", list(NAMINGS),
                  "Parameter names in --src: timm (also torchvision ResNets), hf (Hugging Face), "
                  "augreg (Google's JAX ViT .npz), torchvision (torchvision ViT / ConvNeXt; "
                  "without --preprocess or metadata, torchvision's eval transform for those "
                  "weights is stored), or auto (told apart by the keys).")
flags.DEFINE_enum("preprocess", None, list(PRESETS),
                  "Eval preprocessing preset stored with the model, instead of the recipe in "
                  "the metadata beside --src (timm config.json, HF preprocessor_config.json) "
                  "or, without metadata, the arch's own.")
flags.DEFINE_integer("num_classes", None, "Only for checkpoints without a classifier: size of "
                     "the new, zero-initialized one (otherwise read from --src).", lower_bound=1)
flags.DEFINE_integer("img_size", None, "Input resolution to build for; ViT position embeddings "
                     "are resized to it (default: the arch's own).", lower_bound=1)
flags.DEFINE_bool("ema", True, "From a training checkpoint holding both raw and EMA weights "
                  "(state_dict / state_dict_ema), read the EMA ones; --noema reads the raw ones. "
                  "The log says which were read.")
flags.DEFINE_string("labels", None, "The class name of each classifier row, stored with the "
                    "model so that a run restricts the classifier to a task's classes by name: "
                    "'imagenet1k' (the 1,000 ImageNet wnids in the standard order, as tfds "
                    "imagenet2012 and ImageNet-layout folders name them) or a text file with "
                    "one name per line. Unset: the metadata's (timm label_names, HF id2label), "
                    "else none (a run fits a linear probe for its task).")

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
    meta = recipe.read_source_metadata(FLAGS.src)
    labels = read_labels(FLAGS.labels) if FLAGS.labels is not None else meta.labels
    preprocess = FLAGS.preprocess or meta.recipe
    if FLAGS.preprocess is None and meta.recipe is not None and FLAGS.img_size is not None:
        preprocess = meta.recipe.at_size(FLAGS.img_size)
    sd = load_state_dict(FLAGS.src, ema=FLAGS.ema)
    logging.info("read %d tensors from %s", len(sd), FLAGS.src)
    model, spec = convert_state_dict(sd, FLAGS.arch, naming=FLAGS.naming,
                                     preprocess=preprocess, num_classes=FLAGS.num_classes,
                                     **overrides)
    naming = detect_naming(sd) if FLAGS.naming == "auto" else FLAGS.naming
    where = ("--preprocess" if FLAGS.preprocess else meta.found_in.get("recipe")
             or ("torchvision's published transform for these weights" if naming ==
                 "torchvision" else f"the {FLAGS.arch} default: no config.json / "
                 "preprocessor_config.json beside --src, check it or pass --preprocess"))
    print(f"eval recipe from {where}: {model.preprocess}")
    if labels is not None:
        print(f"labels from {'--labels' if FLAGS.labels else meta.found_in['labels']}: "
              f"{len(labels)} names")
    # timm holds torchvision's ViT / ConvNeXt weights under its own names: compare on those.
    timm_sd = torchvision_to_timm(sd)[0] if naming == "torchvision" else sd
    max_diff = parity.timm_max_logit_diff(timm_sd, FLAGS.arch, model)
    if max_diff is not None:
        print(f"parity with timm's {FLAGS.arch}: max |logit difference| {max_diff:.2e}")
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
