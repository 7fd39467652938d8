"""Task-oriented knowledge transfer: distil a big task teacher into a small student.

``transfer(generalist, data, pool, config)`` runs:
  teacher  — the generalist with its classifier restricted to the task's classes (optionally
             fine-tuned on the labelled few-shot set);
  transfer set — the task's unlabelled images ("task"), a generic pool ("pool"), a random pool
             subset ("random") or the pool images nearest to the labelled ones in the teacher's
             embedding space ("retrieval", ``retrieval.retrieve``);
  distil   — the student (any zoo model, randomly initialised, or a converted checkpoint with a
             new task head probed on the labelled images) learns the teacher's task logits
             (KL at temperature T) on the transfer set (∪ the few-shot set, with CE on those
             labelled ones, when ``mix_labelled``);
  finetune — the student on the labelled few-shot set;
and, under the same step budget, the baselines: the student trained on the few-shot set alone,
and task-agnostic distillation (student features, through a linear projection, matched to the
frozen generalist's features on the pool, then the same fine-tuning); "random_pool" repeats the
task-oriented run with a random pool subset of the retrieval set's size.

Every trained model is checkpointed under ``stage_dir`` (if given), so a rerun resumes after the
last finished stage with the same result (every stage is seeded).
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Mapping
from pathlib import Path

import numpy as np
from absl import logging
from flax import nnx

from taco_jax import convert, models, stages
from taco_jax.data.task import few_shot_indices
from taco_jax.methods import adapt, retrieval
from taco_jax.methods.result import CompressedModel
from taco_jax.methods.taco import TaskData
from taco_jax.models.latency import interleaved_latency
from taco_jax.models.preprocess import Preprocess
from taco_jax.models.stats import forward_macs, param_count
from taco_jax.train import fit

TRANSFER_SETS = ("task", "pool", "random", "retrieval")
BASELINES = ("few_shot_only", "task_agnostic", "random_pool")


# The default student: resnet_mini at 1/4 of its widths, one block per stage.
SMALL_STUDENT = {"widths": (8, 16, 32), "layers": (1, 1, 1)}


@dataclasses.dataclass(frozen=True)
class TransferConfig:
    """What to distil into what, on which images. ``student_overrides`` go to
    ``models.create`` (e.g. narrower ``widths``). ``student_checkpoint``: a converted checkpoint
    directory (``python -m launch.convert``) the student starts from instead (its arch and
    weights; ``student`` and ``student_overrides`` are then unused), with a new task head fit
    by a linear probe on the labelled images. ``transfer_size`` is the number of pool images
    for "random" / "retrieval" (the other sets are used whole). ``mix_labelled`` adds the
    labelled few-shot images (with their labels: KD + CE) to the distillation set; False
    distils on the transfer images alone (KD only; the labelled ones come in at fine-tuning).
    ``adapt``: how the teacher's task classifier is made (``adapt.task_teacher``: "auto"
    restricts when ``TaskData.class_ids`` is known, else fits a linear probe on the labelled
    few-shot images). ``teacher_finetune`` None keeps the adapted teacher as is. The defaults
    are the launcher's (``configs/transfer/demo.py``; a test holds them equal)."""

    student: str = "resnet_mini"
    student_overrides: Mapping = dataclasses.field(default_factory=lambda: dict(SMALL_STUDENT))
    student_checkpoint: str = ""
    shots: int = 32
    seed: int = 0
    transfer_set: str = "retrieval"
    transfer_size: int = 500
    mix_labelled: bool = True
    teacher_finetune: fit.FitConfig | None = None
    distill: fit.FitConfig = dataclasses.field(default_factory=lambda: fit.FitConfig(
        steps=1000, batch_size=128, learning_rate=3e-3, warmup_steps=50, kd_weight=1.0,
        ce_weight=1.0, augment="shift_flip"))
    finetune: fit.FitConfig = dataclasses.field(default_factory=lambda: fit.FitConfig(
        steps=200, learning_rate=5e-4, kd_weight=1.0, ce_weight=1.0, augment="shift_flip"))
    baselines: tuple[str, ...] = BASELINES
    latency_batch: int = 256
    adapt: str = "auto"

    def __post_init__(self):
        adapt.validate(self.adapt)
        if self.student_checkpoint:
            convert.field_meta("student_checkpoint", self.student_checkpoint)
        elif self.student not in models.names():
            raise ValueError(f"unknown student model {self.student!r}; valid: "
                             f"{', '.join(models.names())}")
        if self.transfer_set not in TRANSFER_SETS:
            raise ValueError(f"transfer_set must be one of {TRANSFER_SETS}, got "
                             f"{self.transfer_set!r}")
        bad = [b for b in self.baselines if b not in BASELINES]
        if bad:
            raise ValueError(f"unknown baselines {bad}; allowed: {BASELINES}")
        if self.transfer_size < 1 or self.shots < 1:
            raise ValueError(f"transfer_size and shots must be >= 1, got {self.transfer_size}, "
                             f"{self.shots}")
        if self.distill.kd_weight <= 0:
            raise ValueError("distill must match the teacher's task logits: kd_weight > 0, got "
                             f"{self.distill.kd_weight}")


class _Projected(nnx.Module):
    """Student features through a linear map to the teacher's width (task-agnostic baseline)."""

    def __init__(self, student: nnx.Module, width: int, rngs: nnx.Rngs):
        self.student = student
        self.proj = nnx.Linear(student.num_features, width, rngs=rngs)

    def __call__(self, x):
        return self.proj(self.student.forward_features(x))


class _Features(nnx.Module):
    """A frozen model seen through its pre-logit features."""

    def __init__(self, model: nnx.Module):
        self.model = model

    def __call__(self, x):
        return self.model.forward_features(x)


def _student_factory(config: TransferConfig, recipe: Preprocess, shots_x: np.ndarray,
                     shots_y: np.ndarray, num_classes: int, preprocess: fit.Preprocess
                     ) -> Callable[[], nnx.Module]:
    """A function returning a fresh student, the same start every call: ``config.student``
    randomly initialised (seeded), or ``config.student_checkpoint`` with its classifier replaced
    by a ``num_classes``-way linear probe on the labelled few-shot images (loaded and probed
    once). Either takes the teacher's inputs (``recipe``: size and channels must match)."""
    if config.student_checkpoint:
        base, spec = convert.load_checkpoint(config.student_checkpoint)
        name = f"{spec.arch} from {config.student_checkpoint}"
    else:
        base = models.create(config.student, num_classes=num_classes,
                             rngs=nnx.Rngs(config.seed), **dict(config.student_overrides))
        name = repr(config.student)
    mine = base.preprocess
    if (mine.input_size, len(mine.mean)) != (recipe.input_size, len(recipe.mean)):
        fix = ("convert the student at the teacher's size" if config.student_checkpoint
               else "set student_overrides (img_size, in_chans) to match")
        raise ValueError(f"student {name} takes {mine.input_size} px, {len(mine.mean)} "
                         f"channels; the teacher {recipe.input_size} px, {len(recipe.mean)} "
                         f"channels: {fix}")
    if config.student_checkpoint:
        if (tuple(mine.mean), tuple(mine.std)) != (tuple(recipe.mean), tuple(recipe.std)):
            logging.warning("student %s was trained on inputs normalised by mean %s, std %s; it "
                            "is distilled on the teacher's (mean %s, std %s)", name, mine.mean,
                            mine.std, recipe.mean, recipe.std)
        base, info = adapt.linear_probe(base, shots_x, shots_y, num_classes, preprocess)
        logging.info("student %s: a new %d-class head, linear probe top-1 %.1f%% on the %d "
                     "labelled images", name, num_classes, info["train_top1"], len(shots_y))
    base.preprocess = recipe  # the teacher's own inputs
    return lambda: nnx.clone(base)


def _trained(store: stages.StageStore, name: str, model: nnx.Module,
             train: Callable[[], list[dict]]) -> None:
    """Train ``model`` in place (``train`` returns fit's history) as a checkpointed stage."""
    store.run(name, name, model, lambda: (None, {"history": train()}))


def _costs(named: dict[str, nnx.Module], data: TaskData, batch: int) -> dict:
    """Params, MACs per image and measured latency of each model; the models are timed in
    turns (``interleaved_latency``) so a drifting load hits them alike."""
    x = data.preprocess(data.test_images[:batch])
    lats = interleaved_latency(list(named.values()), x, repeats=10, warmup=2)
    return {name: {"params": param_count(m), "macs": forward_macs(m, (1, *x.shape[1:])),
                   "latency_s": lat["median"], "latency_batch": lat["batch"]}
            for (name, m), lat in zip(named.items(), lats, strict=True)}


def compress(generalist: nnx.Module, data: TaskData, config: TransferConfig, *,
             workdir: str | Path | None = None) -> CompressedModel:
    """Distil ``generalist`` (adapted to the task) into a small student; see the module doc.

    ``data.unlabelled_images`` (P, H, W, C) uint8 is the generic image pool (same image format
    as the task) that the transfer set, the baselines' sets and retrieval draw from.
    ``workdir``: where stage checkpoints go (``<workdir>/stages``: a rerun restores each
    finished stage); None keeps nothing. The report's ``transfer`` entry holds the ids of the
    student's transfer images (pool ids, or task train ids for ``transfer_set="task"``) as
    ``ids`` and those of the equal-size random pool subset (the "random_pool" set) as
    ``random_ids``.
    """
    pool = data.unlabelled_images
    if pool is None:
        raise ValueError("transfer needs a generic image pool: TaskData.unlabelled_images is None")
    timings: dict[str, float] = {}
    store = stages.StageStore(None if workdir is None else Path(workdir) / "stages")

    ids = few_shot_indices(data.train_labels, config.shots, config.seed)
    shots_x, shots_y = data.train_images[ids], data.train_labels[ids]
    # A bad student fails here, before any work.
    new_student = _student_factory(config, generalist.preprocess, shots_x, shots_y,
                                   len(data.class_names), data.preprocess)

    t = time.perf_counter()
    teacher, adapt_info = adapt.task_teacher(generalist, data.class_ids, shots_x, shots_y,
                                             len(data.class_names), data.preprocess,
                                             how=config.adapt)
    adapt_info.pop("seconds")  # part of timings["teacher"]
    if config.teacher_finetune is not None:
        _trained(store, "teacher_finetune", teacher, lambda: fit.fit(
            teacher, shots_x, shots_y, config.teacher_finetune, data.preprocess,
            mesh=data.mesh, desc="teacher finetune"))
    dense = data.evaluate(teacher)
    timings["teacher"] = time.perf_counter() - t
    logging.info("task teacher: top-1 %.2f%% on %d test images", dense["top1"], dense["n"])

    pool_ids = retrieval.drop_query_copies(pool, shots_x)
    size = min(config.transfer_size, len(pool_ids))
    t = time.perf_counter()
    retrieved = None
    if config.transfer_set == "retrieval":
        logging.info("retrieval: %d queries over a pool of %d", len(shots_x), len(pool_ids))
        retrieved = retrieval.nearest_pool(teacher, shots_x, pool, size, data.preprocess,
                                           candidates=pool_ids)
    timings["retrieval_search"] = time.perf_counter() - t
    rng = np.random.default_rng(config.seed)
    random_ids = np.sort(rng.choice(pool_ids, size, replace=False))
    others = np.setdiff1d(np.arange(len(data.train_images)), ids)  # the labelled are added once
    sets = {"task": (data.train_images, others),
            "pool": (pool, pool_ids), "random": (pool, random_ids)}
    if retrieved is not None:
        sets["retrieval"] = (pool, np.sort(retrieved))

    def task_oriented(name: str, images: np.ndarray, chosen: np.ndarray) -> nnx.Module:
        student = new_student()
        x, y = images[chosen], np.full(len(chosen), -1, shots_y.dtype)
        if config.mix_labelled:
            x, y = np.concatenate([shots_x, x]), np.concatenate([shots_y, y])
        t = time.perf_counter()
        _trained(store, f"{name}_distill", student, lambda: fit.fit(
            student, x, y, config.distill, data.preprocess, teacher=teacher,
            mesh=data.mesh, desc=f"{name} distill"))
        _trained(store, f"{name}_finetune", student, lambda: fit.fit(
            student, shots_x, shots_y, config.finetune, data.preprocess, teacher=teacher,
            mesh=data.mesh, desc=f"{name} finetune"))
        timings[name] = time.perf_counter() - t
        return student

    images, chosen = sets[config.transfer_set]
    student = task_oriented(config.transfer_set, images, chosen)
    acc = data.evaluate(student)
    logging.info("task-oriented student (%s, %d images): top-1 %.2f%%", config.transfer_set,
                 len(chosen), acc["top1"])

    baselines = {}
    if "few_shot_only" in config.baselines:
        alone = new_student()
        budget = dataclasses.replace(config.distill, steps=config.distill.steps +
                                     config.finetune.steps, kd_weight=0.0, ce_weight=1.0)
        t = time.perf_counter()
        _trained(store, "few_shot_only", alone, lambda: fit.fit(
            alone, shots_x, shots_y, budget, data.preprocess, mesh=data.mesh, desc="few-shot only"))
        timings["few_shot_only"] = time.perf_counter() - t
        baselines["few_shot_only"] = data.evaluate(alone)
    if "task_agnostic" in config.baselines:
        agnostic = new_student()
        projected = _Projected(agnostic, generalist.num_features, nnx.Rngs(config.seed))
        feats = dataclasses.replace(config.distill, ce_weight=0.0, kd_weight=0.0)
        px = pool[pool_ids]
        t = time.perf_counter()
        _trained(store, "task_agnostic_distill", projected, lambda: fit.fit(
            projected, px, np.full(len(px), -1, np.int32), feats, data.preprocess,
            teacher=_Features(generalist), features=lambda m, x: [m(x)],
            mesh=data.mesh, desc="task-agnostic distill"))
        _trained(store, "task_agnostic_finetune", agnostic, lambda: fit.fit(
            agnostic, shots_x, shots_y, config.finetune, data.preprocess, teacher=teacher,
            mesh=data.mesh, desc="task-agnostic finetune"))
        timings["task_agnostic"] = time.perf_counter() - t
        baselines["task_agnostic"] = data.evaluate(agnostic)
    if "random_pool" in config.baselines and config.transfer_set != "random":
        baselines["random_pool"] = data.evaluate(task_oriented("random", *sets["random"]))
    for name, b in baselines.items():
        logging.info("baseline %s: top-1 %.2f%%", name, b["top1"])

    report = {
        "task": data.record(ids, config.shots),
        "adapt": adapt_info,
        "dense": dense,
        "compressed": acc,
        "cost": _costs({"teacher": teacher, "student": student}, data, config.latency_batch),
        "transfer": {"set": config.transfer_set, "images": len(chosen),
                     "labelled": len(shots_x), "mix_labelled": config.mix_labelled,
                     # The whole pool, and what retrieval and the random subset drew from:
                     # the pool without its copies of the labelled images.
                     "pool": len(pool), "pool_candidates": len(pool_ids),
                     "ids": np.asarray(chosen).tolist(),
                     "random_ids": random_ids.tolist()},
        "baselines": baselines,
        "seconds": timings,
        "memory_mib": dict(store.memory),
    }
    return CompressedModel(model=student, masks={}, report=report)
