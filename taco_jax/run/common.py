"""What every method's run needs before and around its work: the config's source (generalist
recipe, task, pool) validated, the launcher's ``main``, the workdir, the task data, the report's
environment. Each method's run (``run.taco``, ``run.dcvit``, ``run.transfer``) builds on these."""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import os
import platform
import re
import shutil
import sys
from collections.abc import Callable
from pathlib import Path

import jax
import ml_collections
import numpy as np
from absl import app, flags, logging
from flax import nnx
from ml_collections import config_flags

from taco_jax import convert, distributed, files, generalist, memory, models
from taco_jax.data import embedded, folder, pool, source, subtasks
from taco_jax.data.task import Task, TaskData
from taco_jax.export import specialist
from taco_jax.models.preprocess import Preprocess
from taco_jax.train import fit


def generalist_steps(model: str, steps: int) -> int:
    """``config.generalist.steps`` resolved: ``steps``, or for 0 the model's default
    (``generalist.STEPS``); ValueError naming the field when negative."""
    if steps < 0:
        raise ValueError(f"config.generalist.steps={steps}; expected >= 1, or 0 for the "
                         f"model's default ({generalist.DEFAULT_STEPS}, {generalist.STEPS} by "
                         "model)")
    return generalist.recipe(model, steps).steps


def names(value) -> tuple[str, ...]:
    """A config field that lists names, as a tuple: a tuple or list as it is, a string split at
    commas (``""`` is none, ``"a,b"`` two; ml_collections hands a tuple field's ``a,b`` over
    as ``("a,b",)``), so ``--config.baselines=magnitude,task_agnostic``
    and ``--config.baselines=`` both mean what they say on the command line."""
    items = [value] if isinstance(value, str) else list(value)  # a tuple field wraps "a,b"
    return tuple(n.strip() for item in items for n in str(item).split(",") if n.strip())


def fit_config(c: ml_collections.ConfigDict, seed: int, **replace) -> fit.FitConfig:
    """``c`` as a FitConfig seeded with ``seed`` unless ``c`` sets its own ``seed``; the fields
    of ``replace`` (resolved values, e.g. ``steps``) take the place of ``c``'s."""
    return fit.FitConfig(**{"seed": seed, **c.to_dict(), **replace})


@dataclasses.dataclass(frozen=True)
class ModelSource:
    """Where a run's model comes from: a converted checkpoint directory (``config.model
    .checkpoint``, made by ``python -m launch.convert``), or else the embedded generalist
    ``config.model.name`` (trained once on the embedded data, then cached or shipped).

    ``labels``: the class name of each classifier row when known (the embedded generalist's
    classes; a checkpoint's ``labels``), which lets a run restrict the classifier to a task's
    classes by name; ``overrides_json`` what ``models.create`` takes besides the arch."""

    arch: str
    checkpoint: str | None = None
    labels: tuple[str, ...] | None = None
    overrides_json: str = "{}"

    def describe(self) -> str:
        return self.checkpoint or self.arch

    def abstract(self) -> nnx.Module:
        """The model built abstractly (shapes only: no weights, no data), for preflight checks."""
        return _abstract_model(self.arch, self.overrides_json)


@functools.cache
def _abstract_model(arch: str, overrides_json: str) -> nnx.Module:
    return nnx.eval_shape(lambda: models.create(arch, num_classes=2, rngs=nnx.Rngs(0),
                                                **json.loads(overrides_json)))


def checkpoint_source(field: str, directory: str) -> ModelSource:
    """The converted checkpoint a config ``field`` names, as a ModelSource (no weights read);
    ValueError naming the field and value when it is not one."""
    meta = convert.field_meta(field, directory)
    labels = meta.get("labels")
    return ModelSource(meta["arch"], str(Path(directory).expanduser().absolute()),
                       None if labels is None else tuple(labels),
                       json.dumps(meta["overrides"], sort_keys=True))


def parse_model(c: ml_collections.ConfigDict) -> ModelSource:
    """``config.model`` (fields name, checkpoint) as a ModelSource, validated without loading
    weights; ValueError / FileNotFoundError naming a bad value."""
    if c.checkpoint:
        return checkpoint_source("config.model.checkpoint", c.checkpoint)
    if not c.name:
        raise ValueError("config.model.checkpoint is empty: set it to a converted model "
                         "directory (python -m launch.convert --out=DIR)")
    if c.name not in models.names():
        raise ValueError(f"config.model.name={c.name!r} is not a known model; valid: "
                         f"{', '.join(models.names())} (or set config.model.checkpoint to a "
                         "converted model directory)")
    return ModelSource(c.name, labels=tuple(embedded.CLASS_NAMES))


@dataclasses.dataclass(frozen=True)
class Source:
    """A run's validated inputs: the model, the generalist's training recipe (used only for
    the embedded generalist) and the task."""

    model: ModelSource
    generalist: fit.FitConfig
    task: Task


@contextlib.contextmanager
def _names_source(field: str, c: ml_collections.ConfigDict):
    """Opening ``config.<field>``'s data source: its error as one ValueError naming the field,
    the dataset and the data_dir."""
    try:
        yield
    except (ValueError, FileNotFoundError, ImportError) as e:
        raise ValueError(f"config.{field} (dataset={c.dataset!r}, data_dir={c.data_dir!r}): "
                         f"{e}") from None


def _flag(field: str, value) -> bool:
    """A config field that must be a bool; ValueError naming it otherwise."""
    if not isinstance(value, bool):
        raise ValueError(f"{field}={value!r}; expected True or False")
    return value


def parse_task(c: ml_collections.ConfigDict) -> Task:
    """``config.task`` as a Task, its data source and classes checked (reads only metadata:
    the dataset's class names, an image folder's file list); ValueError naming a bad value."""
    data_dir = c.data_dir or None
    if c.subtask and tuple(c.classes):
        raise ValueError(f"config.task.subtask={c.subtask!r} and config.task.classes="
                         f"{tuple(c.classes)} both name the classes; set one")
    if c.train_per_class < 0:
        raise ValueError(f"config.task.train_per_class={c.train_per_class}; expected >= 1, or "
                         "0 for every train image")
    classes = (subtasks.subtask_classes(c.subtask, c.dataset) if c.subtask
               else tuple(c.classes))
    task = Task(c.dataset, classes, data_dir, c.train_split, c.test_split,
                skip_bad_files=_flag("config.task.skip_bad_files",
                                     c.get("skip_bad_files", False)))  # older config.json: absent
    if task.dataset == source.EMBEDDED:  # known classes: checked without preparing the data
        unknown = [k for k in task.classes
                   if isinstance(k, str) and k not in embedded.CLASS_NAMES]
        if unknown:
            raise ValueError(f"config.task.classes has {unknown}, not classes of "
                             f"{source.EMBEDDED!r}: {list(embedded.CLASS_NAMES)}")
        return task
    with _names_source("task", c):
        task.source_class_ids()  # the data source opens, and every class is one of its
        for split in (task.train_split, task.test_split):
            task.split(split)
    return task


def parse_source(config: ml_collections.ConfigDict) -> Source:
    """The model, generalist recipe and task of any method's config (fields ``model``,
    ``seed``, ``generalist``, ``task``), validated; raises ValueError naming a bad value.
    ``generalist.steps`` 0 is the model's default (``generalist_steps``)."""
    model = parse_model(config.model)
    task = parse_task(config.task)
    steps = generalist_steps(model.arch, config.generalist.steps)
    return Source(model, fit_config(config.generalist, config.seed, steps=steps), task)


def parse_pool(c: ml_collections.ConfigDict) -> Task | None:
    """The generic unlabelled pool of ``config.pool`` (fields dataset, split, data_dir,
    task_class_fraction) as a Task over every class, or None when ``dataset`` is empty;
    raises ValueError naming a bad value."""
    if not c.dataset:
        return None
    if not 0.0 <= c.task_class_fraction <= 1.0:
        raise ValueError("config.pool.task_class_fraction must be in [0, 1] (the share of each "
                         f"task class's pool images kept), got {c.task_class_fraction}")
    pool_task = Task(c.dataset, (), c.data_dir or None, train_split=c.split,
                     skip_bad_files=_flag("config.pool.skip_bad_files",
                                          c.get("skip_bad_files", False)))
    if pool_task.dataset == source.EMBEDDED:  # known splits: checked without preparing it
        if c.split not in embedded.SPLITS:
            raise ValueError(f"config.pool.split={c.split!r}; {source.EMBEDDED!r} has "
                             f"{list(embedded.SPLITS)}")
        return pool_task
    with _names_source("pool", c):
        pool_task.split(c.split)
    return pool_task


def load_pool(pool_task: Task, task_class_fraction: float, task_names: list[str],
              recipe: Preprocess) -> tuple[np.ndarray, np.ndarray]:
    """The pool's images (M, S, S, C) uint8 at the model's input (``Task.load_resized``) and
    dataset labels (M,): its split with only a seeded ``task_class_fraction`` of each task
    class's images left (``pool.pool_subset``)."""
    x, y = pool_task.load_resized(pool_task.train_split, recipe)
    kept = pool.pool_subset(y, pool_task.class_names(), task_names, task_class_fraction)
    return x[kept], y[kept]


def generic_images(task: Task, recipe: Preprocess, count: int, seed: int
                   ) -> np.ndarray | None:
    """About ``count`` train images (at the model's input, ``Task.load_resized``) of the task
    dataset's other classes, an equal seeded share of each: the generic calibration set of the
    task-agnostic baseline. None when the task already takes every class of its dataset."""
    ids = set(task.source_class_ids().tolist())
    names = source.class_names(task.dataset, task.data_dir, skip_bad_files=task.skip_bad_files)
    others = tuple(i for i in range(len(names)) if i not in ids)
    if not others:
        return None
    rest = dataclasses.replace(task, classes=others)
    x, _ = rest.load_resized(task.train_split, recipe, per_class=-(-count // len(others)),
                             seed=seed)
    logging.info("generic calibration images: %d of %d other classes of %s", len(x),
                 len(others), task.dataset)
    return x


def config_differences(old: dict, new: dict, limit: int = 4) -> list[str]:
    """``field: old -> new`` for each leaf (dotted) where two resolved configs differ, changed
    values before fields only one of them has; the first ``limit`` and a count of the rest."""
    def flat(d: dict, prefix: str = "") -> dict:
        out = {}
        for k, v in d.items():
            out.update(flat(v, f"{prefix}{k}.") if isinstance(v, dict) else {f"{prefix}{k}": v})
        return out

    a, b = flat(old), flat(new)
    changed = [f"{k}: {a[k]!r} -> {b[k]!r}" for k in sorted(a.keys() & b.keys()) if a[k] != b[k]]
    diffs = changed + [f"{k}: {a.get(k, 'unset')!r} -> {b.get(k, 'unset')!r}"
                       for k in sorted(a.keys() ^ b.keys())]  # fields only one config has
    return diffs[:limit] + ([f"and {len(diffs) - limit} more"] if len(diffs) > limit else [])


def check_workdir(config: ml_collections.ConfigDict, workdir: str | os.PathLike) -> None:
    """A workdir holds one run: resuming needs the same resolved config (else a ValueError
    naming the fields that differ)."""
    path = Path(workdir) / "config.json"
    if not path.exists():
        return
    old, new = json.loads(path.read_text()), resolved_config(config)
    if old != new:
        raise ValueError(f"{workdir} holds a run of another config ("
                         + "; ".join(config_differences(old, new))
                         + "): resume with the same config, use a new --workdir, or --overwrite "
                         "to replace that run")


# The shipped configs: ``configs/`` of a checkout, ``taco_jax/configs`` of an installed package
# (taco_jax/configs links to the checkout's folder).
CONFIGS_DIR = Path(__file__).resolve().parents[1] / "configs"


def shipped_config(relative: str) -> str:
    """The absolute path of a shipped config, e.g. ``shipped_config("taco/demo.py")``: a
    launcher's default, valid from any working directory."""
    return str(CONFIGS_DIR / relative)


def resolve_config_argv(argv: list[str]) -> list[str]:
    """``argv`` with each ``--config=PATH[:variant]`` whose PATH is not a file here but names a
    shipped config (``configs/taco/demo.py`` or ``taco/demo.py``) pointed at that file, so the
    README's commands work from any directory after ``pip install``."""
    out = []
    for arg in argv:
        if arg.startswith("--config="):
            path, sep, variant = arg[len("--config="):].partition(":")
            if not Path(path).expanduser().exists():
                name = path.removeprefix("configs/")
                if (CONFIGS_DIR / name).is_file():
                    arg = f"--config={CONFIGS_DIR / name}{sep}{variant}"
        out.append(arg)
    return out


def run_launcher(main: Callable[[list[str]], None]) -> None:
    """Run a launcher's absl ``main`` (``distributed.run``) with ``--config`` names resolved
    (``resolve_config_argv``), in a process set up to free each stage's memory
    (``memory.configure_process``; compiled programs cached under the cache root,
    ``$TACO_JAX_CACHE`` or ~/.cache/taco_jax)."""
    sys.argv[:] = resolve_config_argv(sys.argv)
    memory.configure_process(generalist.default_cache_dir())
    distributed.run(main)


def define_config_flag(default: str, help_text: str, **kwargs):
    """``config_flags.DEFINE_config_file("config", default, ...)``. ml_collections applies the
    ``--config.FIELD=VALUE`` overrides as it defines the flag, so an unknown field raised a
    traceback there; here it exits with one line naming the flag and the field."""
    try:
        holder = config_flags.DEFINE_config_file("config", default, help_text, **kwargs)
    except (AttributeError, KeyError) as e:
        sys.exit(f"FATAL Flags parsing error: {_unknown_field(e)}")
    flags.FLAGS.register_flag_by_module(sys.argv[0], flags.FLAGS[holder.name])  # its --help
    return holder


def _unknown_field(error: Exception) -> str:
    """One line for ml_collections' unknown-field error ("'shot'\nDid you mean ...")."""
    text = str(error)
    name = re.search(r"\w+", text)
    name = name.group(0) if name else "?"
    guess = re.search(r'Did you mean "([\w.]+)"', text)
    flag = next((a.partition("=")[0] for a in sys.argv[1:] if a.startswith("--config.")
                 and name in a.partition("=")[0].split(".")), "--config")
    hint = f" (did you mean {guess.group(1)!r}?)" if guess else ""
    return (f"{flag}: the config has no field {name!r}{hint}; --print_config lists every "
            "field")


PRINT_CONFIG_HELP = ("Print the resolved config, one field per line with its help, and exit "
                     "without any work.")


# The sections every method's config copies from the TACO demo, documented there.
TACO_DEMO = CONFIGS_DIR / "taco" / "demo.py"
SHARED_SECTIONS = ("model.", "task.", "generalist.")


def field_help(config_file: str) -> dict[str, str]:
    """One line of help per config field (dotted path), from the comments of the shipped
    config files of ``config_file``'s method (``demo.py`` first: it documents every field),
    then of ``config_file`` itself: a comment on the field's line or the block just above;
    the sections shared with TACO (``SHARED_SECTIONS``) last from ``configs/taco/demo.py``."""
    path = Path(config_file.partition(":")[0])
    shipped = CONFIGS_DIR / path.parent.name
    sources = [(f, ()) for f in (shipped / "demo.py", *sorted(shipped.glob("*.py")), path)]
    sources.append((TACO_DEMO, SHARED_SECTIONS))  # only these sections from the fallback
    out: dict[str, str] = {}
    for file, only in sources:
        if not file.is_file():
            continue
        pending: list[str] = []
        for line in file.read_text().splitlines():
            stripped = line.strip()
            if stripped.startswith("#"):
                pending.append(stripped.lstrip("# "))
                continue
            field = re.match(r"c\.([\w.]+)\s*=(?!=)", stripped)
            if field and (not only or field.group(1).startswith(only)):
                inline = stripped.partition("  # ")[2]
                text = inline or " ".join(pending)
                if text and field.group(1) not in out:
                    out[field.group(1)] = _first_sentence(text)
            pending = []
    return out


def _first_sentence(text: str, width: int = 110) -> str:
    sentence = re.split(r"(?<!e\.g)(?<!i\.e)(?<=\.)\s", text, maxsplit=1)[0]
    return sentence if len(sentence) <= width else sentence[:width - 3].rstrip() + "..."


def describe_config(config: ml_collections.ConfigDict, config_file: str) -> str:
    """The resolved config as ``path = value  # help`` lines (``--print_config``)."""
    help_by_field = field_help(config_file)
    lines = [f"# {config_file}, with the command line's overrides (--config.FIELD=VALUE "
             "sets any field)"]

    def walk(node: ml_collections.ConfigDict, prefix: str) -> None:
        for key in sorted(node.keys()):
            value, path = node[key], f"{prefix}{key}"
            if isinstance(value, ml_collections.ConfigDict):
                walk(value, f"{path}.")
                continue
            text = help_by_field.get(path)
            lines.append(f"{path} = {value!r}" + (f"  # {text}" if text else ""))

    walk(config, "")
    return "\n".join(lines)


def launcher_main(config_flag, workdir_flag, parse: Callable, work: Callable
                  ) -> Callable[[list[str]], None]:
    """The ``main`` of a method's absl launcher (``launch/*.py``): before any work, validate the
    config (``parse``) and the workdir (``check_workdir``), a bad value being an
    ``app.UsageError`` that names it; log the config; then ``work(config, workdir)``.
    ``--print_config`` prints the resolved config with each field's help instead."""
    print_config = flags.DEFINE_bool("print_config", False, PRINT_CONFIG_HELP,
                                     module_name=sys.argv[0])
    overwrite = flags.DEFINE_bool(
        "overwrite", False, "Replace the run --workdir holds (finished or not, any config) "
        "instead of resuming it; refused for a directory that holds no run (no config.json).",
        module_name=sys.argv[0])
    verbose = flags.DEFINE_bool(
        "verbose", False, "On a bad value found once the data and the model are read, print "
        "the Python traceback too (by default one line names the value).",
        module_name=sys.argv[0])

    def main(argv: list[str]) -> None:
        if len(argv) > 1:
            raise app.UsageError(f"unexpected arguments: {argv[1:]}")
        config, workdir = config_flag.value, workdir_flag.value
        if print_config.value:
            print(describe_config(config, config_flags.get_config_filename(
                flags.FLAGS[config_flag.name])))
            return
        if not workdir:
            raise app.UsageError("--workdir is required (the run's output directory)")
        try:
            parse(config)
            if overwrite.value and Path(workdir).exists():
                replace_run(Path(workdir))
            check_workdir(config, workdir)
        except ValueError as e:
            raise app.UsageError(str(e)) from None
        logging.info("Config:\n%s", config)
        created = not Path(workdir).exists()
        try:
            work(config, workdir)
        except Exception as e:
            if created and not _any_stage_done(Path(workdir)):  # nothing worth resuming
                shutil.rmtree(workdir, ignore_errors=True)
            if verbose.value or not isinstance(e, ValueError):
                raise
            raise app.UsageError(str(e)) from None

    return main


def replace_run(workdir: Path) -> None:
    """Remove a previous run's directory for ``--overwrite``; ValueError for a directory that
    is not a run's (no ``config.json``), which is never removed."""
    if not (workdir / "config.json").is_file():
        raise ValueError(f"--overwrite: {workdir} holds no run (no config.json); not removing "
                         "it")
    logging.info("--overwrite: removing the run in %s", workdir)
    if distributed.is_main():
        shutil.rmtree(workdir)
    distributed.barrier("overwrite")


def _any_stage_done(workdir: Path) -> bool:
    """Whether ``workdir`` holds a finished stage (``StageStore``'s records) to resume from."""
    return any(workdir.glob("**/stages/*/info.json")) or (workdir / "report.json").exists()


def resolved_config(config: ml_collections.ConfigDict) -> dict:
    return json.loads(config.to_json_best_effort())


def open_workdir(config: ml_collections.ConfigDict, workdir: str | os.PathLike) -> Path:
    """The run's directory, created, with its resolved config.json; refuses (ValueError) a
    workdir holding another config's run, so a resumed run never mixes two configs' stages."""
    check_workdir(config, workdir)
    workdir = Path(workdir)
    if distributed.is_main():  # several processes share the workdir: process 0 writes
        workdir.mkdir(parents=True, exist_ok=True)
        if not (workdir / "config.json").exists():  # else the same config (checked above)
            files.write_json(workdir / "config.json", resolved_config(config))
    distributed.barrier("workdir")
    return workdir


def finished(workdir: Path, name: str = "report.json") -> dict | None:
    """The final output ``name`` of a run that already completed in ``workdir`` (its config
    checked by ``open_workdir``), else None: a rerun of a finished run reports it and exits 0
    instead of redoing or overwriting anything."""
    path = workdir / name
    if not path.exists():
        return None
    logging.info("%s already complete (its %s is below; use another --workdir to run again)",
                 workdir, name)
    return json.loads(path.read_text())


def write_specialist(workdir: Path, model: nnx.Module, src: Source, class_names,
                     method: str) -> str | None:
    """``workdir/specialist``: the task model as a self-contained checkpoint
    (``export.specialist``: rebuilt by ``load_specialist`` or ``launch.evaluate``); returns its
    name, or None (said in the log) where it cannot be written: cut shapes, several processes."""
    path = workdir / specialist.DIRECTORY
    if path.exists():  # a resumed run that had written it
        return path.name
    if jax.process_count() > 1:
        logging.info("specialist/ is written by single-process runs only; this run's model is "
                     "compressed/ (orbax state)")
        return None
    try:
        specialist.save_specialist(path, model, src.model.arch,
                                   json.loads(src.model.overrides_json), class_names,
                                   {"method": method, "model": src.model.describe(),
                                    "workdir": str(workdir.absolute())})
    except ValueError as e:
        logging.info("specialist/ not written: %s", e)
        return None
    return path.name


def environment() -> dict:
    """Where a report's figures were measured: JAX, backend, devices, machine, load, and this
    process's peak resident memory so far (MiB; the whole run's when called at its end)."""
    return {"jax": jax.__version__, "backend": jax.default_backend(),
            "devices": [str(d) for d in jax.devices()], "machine": platform.machine(),
            "cpus": os.cpu_count(), "load_average": list(os.getloadavg()),
            "peak_rss_mib": memory.peak_rss_mib()}


def load_model(src: ModelSource, generalist_config: fit.FitConfig, *,
               data_dir: str | None = None, cache_dir: str | None = None
               ) -> tuple[nnx.Module, dict]:
    """The run's model in eval mode and what to report of it: a converted checkpoint
    (``path``, ``arch``, ``source``), or the embedded generalist, trained once on the embedded
    data under ``data_dir`` and cached (``path``, ``test_top1``, ``test_top5``)."""
    if src.checkpoint:
        model, spec = convert.load_checkpoint(src.checkpoint)
        meta = convert.read_meta(src.checkpoint)
        logging.info("Loaded %s (%s, %d classes, eval recipe %s) from %s.", spec.arch,
                     json.dumps(spec.overrides), spec.num_classes, model.preprocess,
                     src.checkpoint)
        return model, {"path": src.checkpoint, "arch": spec.arch,
                       "num_classes": spec.num_classes, "source": meta.get("source", {})}
    model, info = generalist.load_or_train(src.arch, generalist_config, data_dir=data_dir,
                                           cache_dir=cache_dir)
    return model, {k: info[k] for k in ("path", "test_top1", "test_top5")}


def load_task_data(config: ml_collections.ConfigDict, src: Source, workdir: Path
                   ) -> tuple[nnx.Module, dict, TaskData]:
    """The configured model (``load_model``), what to report of it, and the task's train and
    test images as the model sees them (``Task.load_resized`` with its stored eval recipe);
    the task data names the model's rows of the task's classes when its labels do
    (``class_ids_by_name``) and carries the mesh of every device (None on one device), so
    pruning and evaluation use them all. An image folder's files (and the held-out split made
    for a flat one) are listed in ``workdir/task_files.json``."""
    task = src.task
    if task.dataset == source.IMAGE_FOLDER and distributed.is_main():
        files.write_json(workdir / "task_files.json",
                         folder.scan(task.data_dir, task.skip_bad_files).manifest())
    embedded_dir = task.data_dir if task.dataset == source.EMBEDDED else None
    model, info = load_model(src.model, src.generalist, data_dir=embedded_dir,
                             cache_dir=config.cache_dir or None)
    data = TaskData.load(task, model, labels=src.model.labels,
                         train_per_class=config.task.train_per_class, seed=config.seed,
                         mesh=distributed.device_mesh())
    logging.info("Task %s: %d classes, %d train / %d test images at %d px (%.0f MB).",
                 task.dataset if not task.data_dir else f"{task.dataset} {task.data_dir}",
                 len(data.class_names), len(data.train_labels), len(data.test_labels),
                 model.preprocess.input_size,
                 (data.train_images.nbytes + data.test_images.nbytes) / 2**20)
    return model, info, data
