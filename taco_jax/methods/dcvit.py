"""DC-ViT: dense few-shot compression of a vision transformer (BUILD_NOTES.md, Design).

A ``Plan`` says, per block, whether its attention branch stays and what fraction of its MLP
hidden neurons stays (0 = no MLP branch). ``apply_plan`` performs the cut in place: attention
branches are removed (with their norm, layer scale and drop path), then the MLP of every
shrunk block is cut to its fraction by the structured second-order criterion
(``prune.sequential`` with the ``structured`` pattern on ``fc2``): whole hidden neurons are
removed from ``fc1``'s outputs and ``fc2``'s inputs and the kept ``fc2`` weights get their OBS
update, computed on inputs that flow through the already-cut model. The result is a smaller
*dense* model (no masks). ``recover`` then distills the teacher's final features (and optionally
every block's output tokens) into it from a few hundred unlabeled images.

Dropping whole blocks (attention and MLP) is the same cut with ``mlp_keep = 0`` and serves as
the few-shot block-dropping baseline. Which blocks are cut is decided by ``block_scores``: the
teacher's final-feature error when only that block's branch is removed (smallest first).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import time
from collections.abc import Sequence
from pathlib import Path

import jax
import numpy as np
from absl import logging
from flax import nnx

from taco_jax import checkpoint
from taco_jax.data.task import TaskData, calibration_batches, few_shot_indices
from taco_jax.methods import adapt
from taco_jax.methods.result import CompressedModel
from taco_jax.models import latency, stats
from taco_jax.models.layers import linear
from taco_jax.models.vit import VisionTransformer
from taco_jax.prune import sequential
from taco_jax.report import compression
from taco_jax.train import fit, losses

STRUCTURE_FILE = "structure.json"


@dataclasses.dataclass(frozen=True)
class Plan:
    """Per block: keep the attention branch? and the kept fraction of MLP hidden neurons.

    ``mlp_keep[i] = 0`` removes block i's MLP branch; a block with neither branch is dropped.
    """

    attn: tuple[bool, ...]
    mlp_keep: tuple[float, ...]

    def __post_init__(self):
        if len(self.attn) != len(self.mlp_keep):
            raise ValueError(f"plan has {len(self.attn)} attention flags but "
                             f"{len(self.mlp_keep)} MLP fractions")
        bad = [f for f in self.mlp_keep if not 0.0 <= f <= 1.0]
        if bad:
            raise ValueError(f"MLP keep fractions must be in [0, 1], got {bad}")

    @classmethod
    def dense(cls, depth: int) -> Plan:
        return cls((True,) * depth, (1.0,) * depth)

    def label(self) -> str:
        """e.g. ``A1|-.50|A1|--`` : A = attention kept, then the MLP fraction, ``--`` = dropped."""
        parts = []
        for a, f in zip(self.attn, self.mlp_keep, strict=True):
            mlp = "1" if f == 1.0 else ("-" if f == 0.0 else f"{f:.2f}".lstrip("0"))
            parts.append(("A" if a else "-") + mlp)
        return "|".join(parts)


def cut_plan(depth: int, blocks: Sequence[int], mlp_keep: float) -> Plan:
    """Remove attention from ``blocks`` and keep ``mlp_keep`` of their MLP neurons (DC-ViT);
    ``mlp_keep = 0`` drops those blocks entirely (the block-dropping baseline). The other blocks
    are left whole."""
    bad = [b for b in blocks if not 0 <= b < depth]
    if bad:
        raise ValueError(f"block indices {bad} out of range for depth {depth}")
    chosen = set(blocks)
    return Plan(tuple(i not in chosen for i in range(depth)),
                tuple(mlp_keep if i in chosen else 1.0 for i in range(depth)))


def ranked_plan(order: Sequence[int], attn_free: int, mlp_keep: float | Sequence[float]
                ) -> Plan:
    """A plan in ranked-block terms: ``order`` lists the blocks least sensitive first; its first
    ``attn_free`` lose their attention branch; ``mlp_keep[j]`` is the kept MLP fraction of block
    ``order[j]`` (blocks past ``len(mlp_keep)`` keep their whole MLP; one number is that
    fraction in every block). The sweep's grid is written this way, so it follows whichever
    blocks the few-shot scores rank first."""
    depth = len(order)
    if isinstance(mlp_keep, int | float):
        mlp_keep = (float(mlp_keep),) * depth
    if sorted(order) != list(range(depth)):
        raise ValueError(f"order {list(order)} is not a permutation of the {depth} blocks")
    if not 0 <= attn_free <= depth or len(mlp_keep) > depth:
        raise ValueError(f"attn_free={attn_free} and {len(mlp_keep)} MLP fractions; expected "
                         f"at most {depth} of each")
    attn, keep = [True] * depth, [1.0] * depth
    for j, block in enumerate(order):
        attn[block] = j >= attn_free
        keep[block] = float(mlp_keep[j]) if j < len(mlp_keep) else 1.0
    return Plan(tuple(attn), tuple(keep))


def _check_vit(model: nnx.Module) -> None:
    if not isinstance(model, VisionTransformer):
        raise TypeError(f"DC-ViT compresses a VisionTransformer, got {type(model).__name__}")


# ----------------------------------------------------------------------------- features


def block_features(model: VisionTransformer, x: jax.Array, *, blocks: bool = False
                   ) -> list[jax.Array]:
    """[final features (B, D)] (+ every block's output tokens (B, T, D) if ``blocks``).

    Final features = the final-normed class token, the input of the classifier.
    """
    t = model.embed(x)
    outs = []
    for blk in model.blocks:
        t = blk(t)
        outs.append(t)
    final = model.norm(t)[:, 0]
    return [final, *outs] if blocks else [final]


def _feature_fn(block_outputs: bool):
    return lambda m, x: block_features(m, x, blocks=block_outputs)


# ----------------------------------------------------------------------------- surgery


def apply_plan(model: VisionTransformer, plan: Plan, batches: Sequence[jax.Array],
               prune: sequential.PruneConfig | None = None) -> sequential.PruneResult | None:
    """Cut ``model`` to ``plan`` in place (see the module docstring); returns the MLP pruning
    result (None when no MLP is partly kept).

    ``batches``: preprocessed calibration batches (NHWC float) for the structured criterion's
    Hessians; ``prune``: its solver settings (pattern and sparsities are set here).
    """
    _check_vit(model)
    if len(plan.attn) != len(model.blocks):
        raise ValueError(f"plan is for {len(plan.attn)} blocks, the model has "
                         f"{len(model.blocks)}")
    shrink = {}
    for i, (keep_attn, f) in enumerate(zip(plan.attn, plan.mlp_keep, strict=True)):
        block = model.blocks[i]
        if not keep_attn and block.attn is not None:
            block.remove("attn")
        if f == 0.0:
            block.remove("mlp")
        elif f < 1.0:
            if block.mlp is None:
                raise ValueError(f"block {i} has no MLP left to keep {f} of")
            shrink[f"blocks.{i}.mlp.fc2"] = 1.0 - f
    if not shrink:
        model.eval()
        return None
    config = dataclasses.replace(prune or sequential.PruneConfig(), pattern="structured",
                                 sparsity=0.0, overrides=shrink, allocation="uniform")
    return sequential.prune_model(model, batches, config, layers=list(shrink))


def final_features(model: VisionTransformer, batches: Sequence[jax.Array]) -> list[jax.Array]:
    """``model``'s final features, one (B, D) array per batch: the reference the feature
    errors below are measured against (computed once, passed to each)."""
    return [block_features(model, b)[0] for b in batches]


def block_scores(teacher: VisionTransformer, batches: Sequence[jax.Array], *,
                 drop_block: bool, ref: Sequence[jax.Array] | None = None) -> np.ndarray:
    """(depth,) final-feature error ‖f − f₀‖²/‖f₀‖² (batch mean over ``batches``) with only block
    i's attention removed (``drop_block``: the whole block), no recovery. Small = safe to cut.
    ``ref``: the teacher's ``final_features`` on ``batches`` where the caller has them."""
    _check_vit(teacher)
    depth = len(teacher.blocks)
    ref = final_features(teacher, batches) if ref is None else ref
    scores = []
    for i in range(depth):
        cut = nnx.clone(teacher)
        apply_plan(cut, cut_plan(depth, [i], 0.0 if drop_block else 1.0), batches)
        scores.append(_feature_error(cut, batches, ref))
    return np.asarray(scores)


def _feature_error(model: VisionTransformer, batches: Sequence[jax.Array],
                   ref: Sequence[jax.Array]) -> float:
    """Batch mean of ‖f − f₀‖²/‖f₀‖² of ``model``'s final features against ``ref`` (the
    teacher's, one (B, D) array per batch)."""
    err = [losses.normalized_feature_mse([f], [r])
           for f, r in zip(final_features(model, batches), ref, strict=True)]
    return float(np.mean(jax.device_get(err)))


def plan_at_macs(teacher: VisionTransformer, batches: Sequence[jax.Array], macs: int,
                 input_shape: tuple[int, ...], *, prune: sequential.PruneConfig | None = None,
                 choices: int = 5) -> tuple[Plan | None, VisionTransformer | None, list[dict]]:
    """The DC-ViT plan with ``macs`` forward MACs (per input of ``input_shape``, batch 1) that
    keeps the teacher's final features best, one-shot: the cut another method's model of that
    size is compared with.

    The family is DC-ViT's: the ``k`` blocks least sensitive to losing attention
    (``block_scores``) lose it, and every block keeps the same fraction of its MLP neurons,
    the most that keeps the MACs at or below ``macs`` (they are linear in it; a multiple of
    ``prune.channel_multiple`` neurons). ``k`` takes ``choices`` values spread over 0..depth;
    each feasible candidate is cut (``apply_plan``, structured OBS on the task's ``batches``)
    and scored by its final-feature error. Returns (the best plan and its cut model, both None
    when no candidate keeps a neuron per MLP within ``macs``; every candidate's record: blocks
    without attention, MLP fraction, and where feasible the plan, its MACs and feature error).
    """
    _check_vit(teacher)
    prune = prune or sequential.PruneConfig()
    depth, hidden = len(teacher.blocks), int(teacher.blocks[0].mlp.fc1.out_features)
    ref = final_features(teacher, batches)
    order = np.argsort(block_scores(teacher, batches, drop_block=False, ref=ref), kind="stable")

    def macs_of(plan: Plan) -> int:  # plans without a partial MLP: no solver run
        cut = nnx.clone(teacher)
        apply_plan(cut, plan, batches)
        return stats.forward_macs(cut, input_shape)

    # The blocks are alike: MACs(k, f) = dense - k * attention - (1 - f) * all MLPs.
    dense = stats.forward_macs(teacher, input_shape)
    attention = dense - macs_of(cut_plan(depth, [0], 1.0))
    mlps = dense - macs_of(Plan((True,) * depth, (0.0,) * depth))
    step = prune.channel_multiple  # neurons kept: a multiple of it, MACs at most ``macs``
    candidates, best = [], None
    for k in sorted({round(i * depth / max(choices - 1, 1)) for i in range(choices)}):
        share = 1 - (dense - k * attention - macs) / mlps  # of every MLP's neurons
        kept = math.floor(share * hidden / step + 1e-9) * step
        record = {"attn_removed": k, "mlp_keep": round(kept / hidden, 4)}
        if not 0 < kept <= hidden:
            candidates.append({**record, "feasible": False})
            continue
        keep = kept / hidden
        plan = ranked_plan(order, k, keep)
        cut = nnx.clone(teacher)
        apply_plan(cut, plan, batches, prune)
        record.update(plan=plan.label(), feasible=True,
                      macs=stats.forward_macs(cut, input_shape),
                      feature_error=_feature_error(cut, batches, ref))
        logging.info("DC-ViT at %d MACs: %s, %d MACs, final-feature error %.4f", macs,
                     record["plan"], record["macs"], record["feature_error"])
        candidates.append(record)
        if best is None or record["feature_error"] < best[2]:
            best = (plan, cut, record["feature_error"])
    if best is None:
        return None, None, candidates
    return best[0], best[1], candidates


# ----------------------------------------------------------------------------- recovery


def recover(student: VisionTransformer, teacher: VisionTransformer, images: np.ndarray,
            config: fit.FitConfig, preprocess, *, block_outputs: bool = False,
            constrain=None, unlabelled: np.ndarray | None = None,
            mesh: jax.sharding.Mesh | None = None, desc: str = "recover"
            ) -> list[dict[str, float]]:
    """Few-shot feature distillation: ``student`` learns the teacher's final features (and every
    block's output tokens if ``block_outputs``) on unlabeled ``images`` (N, H, W, C) uint8.

    ``config.ce_weight`` must be 0 (no labels); ``kd_weight > 0`` adds logit distillation.
    ``constrain``: as in ``fit.fit`` (e.g. hold pruning masks when composed with TACO);
    ``unlabelled``: more images in every batch (``fit.fit``'s, e.g. a recovery pool);
    ``mesh``: data parallel over its devices (``fit.fit``'s).
    """
    if config.ce_weight != 0:
        raise ValueError(f"DC-ViT recovers from unlabeled images: ce_weight must be 0, got "
                         f"{config.ce_weight}")
    unlabeled = np.zeros(len(images), np.int32)
    return fit.fit(student, images, unlabeled, config, preprocess, teacher=teacher,
                   constrain=constrain, features=_feature_fn(block_outputs),
                   unlabelled=unlabelled, mesh=mesh, desc=desc)


# ----------------------------------------------------------------------------- save / restore


def structure(model: VisionTransformer) -> dict:
    """What ``rebuild`` needs to recreate the cut architecture: per block, attention kept? and
    the MLP hidden width (0 = no MLP); the classifier's class count."""
    _check_vit(model)
    return {"blocks": [{"attn": b.attn is not None,
                        "mlp_hidden": 0 if b.mlp is None else int(b.mlp.fc1.out_features)}
                       for b in model.blocks],
            "num_classes": int(model.head.out_features)}


def rebuild(model: VisionTransformer, struct: dict) -> VisionTransformer:
    """Cut a freshly built ``model`` (same arch, any weights) to ``struct`` in place: the shapes
    a ``save`` checkpoint restores into."""
    _check_vit(model)
    blocks = struct["blocks"]
    if len(blocks) != len(model.blocks):
        raise ValueError(f"structure has {len(blocks)} blocks, the model {len(model.blocks)}")
    rngs = nnx.Rngs(0)
    for block, s in zip(model.blocks, blocks, strict=True):
        if not s["attn"]:
            block.remove("attn")
        if s["mlp_hidden"] == 0:
            block.remove("mlp")
        elif s["mlp_hidden"] != block.mlp.fc1.out_features:
            dim = block.mlp.fc1.in_features
            block.mlp.fc1 = linear(dim, s["mlp_hidden"], rngs=rngs)
            block.mlp.fc2 = linear(s["mlp_hidden"], dim, rngs=rngs)
    if struct["num_classes"] != model.head.out_features:
        model.head = linear(model.head.in_features, struct["num_classes"], rngs=rngs)
    model.eval()
    return model


def save(path: str | os.PathLike, model: VisionTransformer) -> None:
    """Orbax weights (``path/state``) plus ``path/structure.json`` (written last)."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    checkpoint.save_state(path / "state", model)
    (path / STRUCTURE_FILE).write_text(json.dumps(structure(model), indent=2))


def load(path: str | os.PathLike, model: VisionTransformer) -> VisionTransformer:
    """Restore a ``save``d compressed model into ``model`` (a fresh model of the same arch)."""
    path = Path(path)
    struct_file = path / STRUCTURE_FILE
    if not struct_file.exists():
        raise FileNotFoundError(f"no {STRUCTURE_FILE} in {path}: not a DC-ViT checkpoint")
    rebuild(model, json.loads(struct_file.read_text()))
    return checkpoint.restore_state(path / "state", model)



# ----------------------------------------------------------------------------- one plan


@dataclasses.dataclass(frozen=True)
class DcvitConfig:
    """Few-shot settings shared by every plan (DC-ViT and block dropping get the same budget).

    ``shots``: unlabeled images per task class (calibration and recovery); ``prune``: solver
    settings of the structured MLP criterion; ``block_outputs``: also distill every block's
    output tokens; ``calibration_batch``: images per Hessian batch.

    What ``compress`` cuts: ``attn_blocks`` blocks lose their attention and block i keeps
    ``mlp_keep[i]`` of its MLP neurons (both in ``ranked_plan`` terms: least sensitive blocks
    first; blocks past the tuple keep their whole MLP; one number: that fraction in every
    block). ``then_prune``: TACO's second-order pruning of what remains, recovered for
    ``then_recover_steps`` (0: ``recover.steps``; ``then_prune`` None: off).
    ``baseline_drop_blocks``: the same-budget few-shot block-dropping baseline (0: none).
    ``latency_batch`` / ``latency_repeats``: the paired dense vs compressed timing (batch 0:
    not timed). The defaults are the launcher's (``configs/dcvit/demo.py``; a test holds them
    equal). ``adapt``: how the dense task teacher's classifier is made
    (``adapt.task_teacher``: "auto" restricts when ``TaskData.class_ids`` is known, else fits a
    linear probe on the few-shot images, the only place their labels are used).
    """

    shots: int = 64
    seed: int = 0
    recover: fit.FitConfig = dataclasses.field(default_factory=lambda: fit.FitConfig(
        steps=120, batch_size=32, learning_rate=1e-3, weight_decay=0.0, warmup_steps=10,
        ce_weight=0.0, kd_weight=0.0, augment="shift_flip"))
    prune: sequential.PruneConfig = dataclasses.field(default_factory=sequential.PruneConfig)
    block_outputs: bool = False
    calibration_batch: int = 64
    attn_blocks: int = 0
    mlp_keep: float | tuple[float, ...] = 0.375
    then_prune: sequential.PruneConfig | None = None
    then_recover_steps: int = 0
    baseline_drop_blocks: int = 1
    latency_batch: int = 256
    latency_repeats: int = 20
    adapt: str = "auto"

    def __post_init__(self):
        adapt.validate(self.adapt)
        if self.shots < 1 or self.calibration_batch < 1:
            raise ValueError(f"shots and calibration_batch must be >= 1, got {self.shots}, "
                             f"{self.calibration_batch}")
        if self.latency_batch < 0 or self.latency_repeats < 1:
            raise ValueError(f"latency_batch must be >= 0 and latency_repeats >= 1, got "
                             f"{self.latency_batch}, {self.latency_repeats}")
        if self.recover.ce_weight != 0:
            raise ValueError("DC-ViT recovers from unlabeled images: recover.ce_weight must be "
                             f"0, got {self.recover.ce_weight}")


def cut_and_recover(teacher: VisionTransformer, plan: Plan, images: np.ndarray, preprocess,
                    config: DcvitConfig, *, mesh: jax.sharding.Mesh | None = None,
                    desc: str = "recover") -> tuple[VisionTransformer, dict]:
    """A recovered copy of ``teacher`` cut to ``plan``, and its log (MLP prune stats, seconds).

    ``images``: the unlabeled few-shot images (N, H, W, C) uint8 used for both the structured
    criterion and the distillation; ``mesh``: the recovery's data-parallel devices.
    """
    student = nnx.clone(teacher)
    start = time.perf_counter()
    result = apply_plan(student, plan, calibration_batches(images, preprocess,
                                                           config.calibration_batch),
                        config.prune)
    cut_seconds = time.perf_counter() - start
    start = time.perf_counter()
    recover(student, teacher, images, config.recover, preprocess,
            block_outputs=config.block_outputs, mesh=mesh, desc=desc)
    info = {"plan": plan.label(),
            "layers": [] if result is None else [dataclasses.asdict(s) for s in result.stats],
            "seconds": {"cut": cut_seconds, "recover": time.perf_counter() - start}}
    return student, info


# ----------------------------------------------------------------------------- library entry


@dataclasses.dataclass
class Prepared:
    """The dense task teacher and what every cut of it shares: the few-shot draw (train ids and
    their images, used unlabeled), the teacher's test accuracy, the block rankings (least
    sensitive first) and the scores they come from, and the latency batch."""

    teacher: VisionTransformer
    ids: np.ndarray
    images: np.ndarray
    dense: dict
    attn_order: list[int]
    drop_order: list[int]
    scores: dict
    latency_x: jax.Array | None


def prepare(model: VisionTransformer, data: TaskData, config: DcvitConfig) -> Prepared:
    """Adapt ``model``'s classifier to the task (the teacher, ``adapt.task_teacher``; ``model``
    is not modified), draw the few-shot images, evaluate the teacher and rank its blocks by
    ``block_scores``."""
    _check_vit(model)
    ids = few_shot_indices(data.train_labels, config.shots, config.seed)
    images = data.train_images[ids]
    teacher, _ = adapt.task_teacher(model, data.class_ids, images, data.train_labels[ids],
                                    len(data.class_names), data.preprocess, how=config.adapt)
    teacher.eval()
    logging.info("unlabeled few-shot set: %d images (%d per class)", len(ids), config.shots)
    dense = data.evaluate(teacher)
    logging.info("dense task teacher: top-1 %.2f%% on %d test images", dense["top1"], dense["n"])
    batches = calibration_batches(images, data.preprocess, config.calibration_batch)
    ref = final_features(teacher, batches)
    attn_scores = block_scores(teacher, batches, drop_block=False, ref=ref)
    drop_scores = block_scores(teacher, batches, drop_block=True, ref=ref)
    logging.info("block scores (final-feature error): attention removed %s, block dropped %s",
                 np.round(attn_scores, 4).tolist(), np.round(drop_scores, 4).tolist())
    latency_x = None
    if config.latency_batch:
        reps = -(-config.latency_batch // len(data.test_images))
        latency_x = data.preprocess(
            np.concatenate([data.test_images] * reps)[:config.latency_batch])
    return Prepared(teacher, ids, images, dense,
                    np.argsort(attn_scores, kind="stable").tolist(),
                    np.argsort(drop_scores, kind="stable").tolist(),
                    {"attention_removed": attn_scores.tolist(),
                     "block_dropped": drop_scores.tolist()}, latency_x)


def size(model: nnx.Module, input_shape: tuple[int, ...]) -> dict:
    """Parameters and forward MACs of ``model`` for one input of ``input_shape``."""
    return {"params": stats.param_count(model), "macs": stats.forward_macs(model, input_shape)}


def evaluate_cut(prep: Prepared, plan: Plan, data: TaskData, config: DcvitConfig, desc: str
                 ) -> tuple[VisionTransformer, dict]:
    """Cut + recover one plan; its accuracy, size, layers and seconds (latency: ``timed``)."""
    student, info = cut_and_recover(prep.teacher, plan, prep.images, data.preprocess, config,
                                    mesh=data.mesh, desc=desc)
    acc = data.evaluate(student)
    point = {"plan": plan.label(), "attn": list(plan.attn), "mlp_keep": list(plan.mlp_keep),
             "top1": acc["top1"], "top5": acc["top5"],
             **size(student, (1, *data.test_images.shape[1:])),
             "structure": structure(student), "layers": info["layers"],
             "seconds": info["seconds"]}
    logging.info("%s %s: top-1 %.2f%%", desc, plan.label(), acc["top1"])
    return student, point


def timed(prep: Prepared, models: dict[str, nnx.Module], points: dict[str, dict],
          config: DcvitConfig) -> None:
    """Each point's ``latency``: its model against the dense teacher, all models in one
    interleaved session (``latency.paired_latency``), so every reduction in a report is
    measured in the same period against the same dense model. Nothing without ``latency_x``."""
    if prep.latency_x is None:
        return
    lats = latency.paired_latency(prep.teacher, list(models.values()), prep.latency_x,
                                  repeats=config.latency_repeats)
    for (name, _), lat in zip(models.items(), lats, strict=True):
        points[name]["latency"] = lat
        logging.info("%s %s: latency %.1f ms vs dense %.1f ms (%.1f%% lower)", name,
                     points[name]["plan"], 1e3 * lat["compressed"], 1e3 * lat["dense"],
                     100 * lat["reduction"])


def compress(model: VisionTransformer, data: TaskData, config: DcvitConfig
             ) -> CompressedModel:
    """DC-ViT for the task ``data``: cut ``model`` (restricted to the task's classes; not
    modified) to the plan of ``config`` (``attn_blocks``, ``mlp_keep``), recover it by few-shot
    feature distillation, optionally prune what remains (``then_prune``), and compare with the
    same-budget block-dropping baseline. Returns the student, its masks (only with
    ``then_prune``) and the report."""
    start = time.perf_counter()
    prep = prepare(model, data, config)
    shape = (1, *data.test_images.shape[1:])
    plan = ranked_plan(prep.attn_order, config.attn_blocks, config.mlp_keep)
    student, point = evaluate_cut(prep, plan, data, config, "dcvit")
    masks: dict = {}
    report = {"method": "dcvit",
              "task": {**data.record(prep.ids, config.shots), "unlabeled_images": len(prep.ids)},
              "dense": {**prep.dense, **size(prep.teacher, shape)},
              "block_scores": prep.scores, "compressed": point, "baselines": {},
              "seconds": dict(point["seconds"])}
    if config.then_prune is not None:  # composition with TACO: prune what remains
        batches = calibration_batches(prep.images, data.preprocess, config.calibration_batch)
        result = sequential.prune_model(student, batches, config.then_prune)
        masks = result.masks
        recover(student, prep.teacher, prep.images,
                dataclasses.replace(config.recover,
                                    steps=config.then_recover_steps or config.recover.steps),
                data.preprocess, block_outputs=config.block_outputs,
                constrain=lambda m: sequential.apply_masks(m, masks), mesh=data.mesh,
                desc="taco recover")
        acc = data.evaluate(student)
        report["then_prune"] = {"pattern": str(config.then_prune.pattern),
                                "sparsity": config.then_prune.sparsity, "top1": acc["top1"],
                                "top5": acc["top5"],
                                "layers": [dataclasses.asdict(x) for x in result.stats]}
        logging.info("DC-ViT + TACO (%s at %.0f%%): top-1 %.2f%%", config.then_prune.pattern,
                     100 * config.then_prune.sparsity, acc["top1"])
    if masks:  # composition with TACO; a DC-ViT cut alone has no zeros to count
        report["sparsity"] = compression.summarize(student, masks)
    report["layers"] = point["layers"]
    report["params"] = {"dense": report["dense"]["params"], "compressed": point["params"]}
    report["macs"] = {"dense": report["dense"]["macs"], "compressed": point["macs"]}
    models, points = {"dcvit": student}, {"dcvit": point}
    if config.baseline_drop_blocks:
        drop = cut_plan(len(prep.teacher.blocks), prep.drop_order[:config.baseline_drop_blocks],
                        0.0)
        models["block_drop"], points["block_drop"] = evaluate_cut(prep, drop, data, config,
                                                                  "block_drop")
        report["baselines"]["block_drop"] = points["block_drop"]
    timed(prep, models, points, config)
    if "latency" in point:
        report["latency"] = point["latency"]
    report["seconds"]["total"] = time.perf_counter() - start
    return CompressedModel(model=student, masks=masks, report=report)
