"""Export a finished run's specialist as one file, checked before it is kept.

  python -m launch.export --workdir=runs/demo                      # -> export/specialist.onnx
  python -m launch.export --workdir=runs/demo --format=safetensors  # -> .../specialist.safetensors

ONNX: the eval forward (normalised NHWC float32 images in, logits out, any batch size; the eval
recipe and class names are in the file's metadata ``model.json``), kept only when onnxruntime's
logits match JAX's and pruned weights are still exactly zero. safetensors: parameters and
BatchNorm statistics with ``model.json`` as metadata, kept only when the model read back gives
the same logits. Checks run on the run's own test images when readable, else random inputs; on
a failed check nothing is written. Needs ``pip install 'taco-jax[onnx]'`` for ONNX.
"""

from pathlib import Path

from absl import app, flags

from taco_jax.run import export

_WORKDIR = flags.DEFINE_string("workdir", None, "A finished run's --workdir (holds "
                               "specialist/ and config.json).", required=True)
_FORMAT = flags.DEFINE_enum("format", "onnx", list(export.FORMATS), "The file to write: onnx "
                            "(runs in onnxruntime) or safetensors (weights + model.json).")
_OUT = flags.DEFINE_string("out", None, "The file to write (default: "
                           "<workdir>/export/specialist.<format>); replaced when it exists.")
_BATCH_SIZE = flags.DEFINE_integer("batch_size", 8, "Images in the sample the export is "
                                   "checked on.", lower_bound=1)


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    out = Path(_OUT.value).expanduser() if _OUT.value else None
    try:
        r = export.export_workdir(Path(_WORKDIR.value).expanduser(), _FORMAT.value, out,
                                  batch_size=_BATCH_SIZE.value)
    except (ValueError, FileNotFoundError, ImportError) as e:
        raise app.UsageError(str(e)) from None
    print(f"wrote {r['path']} ({r['bytes'] / 2**20:.2f} MiB); logits vs JAX: max relative "
          f"error {r['parity_max_rel_error']:.2g} on {r['sample']}")


if __name__ == "__main__":
    app.run(main)
