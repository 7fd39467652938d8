"""Evaluate a finished run's specialist from its workdir alone, or classify new images with it.

  python -m launch.evaluate --workdir=runs/demo          # reproduces report.json's top-1
  python -m launch.evaluate --workdir=runs/mine --data_dir=~/more_images --split=test
  python -m launch.evaluate --workdir=runs/mine --predict=~/new_images   # -> predictions.csv

The specialist (``<workdir>/specialist``: weights, eval recipe, class names) is written at the
end of a single-process TACO or transfer run; the task comes from ``<workdir>/config.json``.
"""

from pathlib import Path

from absl import app, flags

from taco_jax.run import evaluate

_WORKDIR = flags.DEFINE_string("workdir", None, "A finished run's --workdir (holds "
                               "specialist/ and config.json).", required=True)
_DATA_DIR = flags.DEFINE_string("data_dir", None, "Evaluate on this data directory (an image "
                                "folder or tfds data_dir with the run's classes) instead of "
                                "the run's own.")
_SPLIT = flags.DEFINE_string("split", None, "The split to evaluate on (default: the run's "
                             "test split).")
_PREDICT = flags.DEFINE_string("predict", None, "Instead of evaluating, classify every image "
                               "under this folder (recursively) and write a CSV.")
_OUT = flags.DEFINE_string("out", None, "The CSV of --predict (default: "
                           "<workdir>/predictions.csv): path, class, probability.")


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    workdir = Path(_WORKDIR.value).expanduser()
    try:
        if _PREDICT.value:
            if _DATA_DIR.value or _SPLIT.value:
                raise ValueError("--predict classifies a folder; --data_dir and --split are "
                                 "for evaluating")
            out = Path(_OUT.value or workdir / "predictions.csv").expanduser()
            n = evaluate.predict_folder(workdir, _PREDICT.value, out)
            print(f"{n} predictions written to {out}")
            return
        r = evaluate.evaluate_workdir(workdir, data_dir=_DATA_DIR.value, split=_SPLIT.value)
    except (ValueError, FileNotFoundError) as e:
        raise app.UsageError(str(e)) from None
    line = f"specialist top-1 {r['top1']:.2f}% on {r['n']} images ({r['split']} split)"
    if "report_top1" in r:
        line += f"; report.json: {r['report_top1']:.2f}%"
    print(line)


if __name__ == "__main__":
    app.run(main)
