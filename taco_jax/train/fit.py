"""One supervised / distillation training loop for NNX classifiers, and batched evaluation.

The same loop trains the embedded generalist, fine-tunes the dense few-shot baseline and recovers
a pruned model by knowledge distillation from its dense teacher: the loss is
``ce_weight · CE(labels) + kd_weight · T²·KL(teacher ‖ student)`` (plus, with ``features``, a
normalized feature-distillation term against the teacher), and an optional ``constrain``
function (e.g. re-applying pruning masks) runs inside the jitted step after every update, so
pruned weights stay exactly zero.
"""

from __future__ import annotations

import dataclasses
import functools
import time
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl import logging
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec
from tqdm import tqdm

from taco_jax import distributed
from taco_jax.train import augment as augment_lib
from taco_jax.train import losses

Preprocess = Callable[[jax.Array], jax.Array]
Features = Callable[[nnx.Module, jax.Array], Sequence[jax.Array]]
OPTIMIZERS = ("adamw", "sgd")


@dataclasses.dataclass(frozen=True)
class FitConfig:
    """Training hyper-parameters. ``kd_weight > 0`` needs a teacher. Labels < 0 mark unlabelled
    examples (no CE term). ``unlabelled_share``: the fraction of every batch drawn from
    ``fit``'s ``unlabelled`` images when it is given (ignored otherwise).

    ``microbatch``: rows per forward/backward pass (0 = the whole batch). Each batch's loss and
    gradient are accumulated over equal micro-batches of at most this many rows, each its own
    compiled call, so activation memory follows the micro-batch; every term is weighted so
    that the sum is the whole batch's loss. Exact for models without BatchNorm; a BatchNorm in
    train mode normalises each micro-batch with its own statistics ("ghost" batch norm)."""

    steps: int = 500
    batch_size: int = 64
    learning_rate: float = 1e-3
    weight_decay: float = 1e-4
    warmup_steps: int = 0
    optimizer: str = "adamw"
    ce_weight: float = 1.0
    kd_weight: float = 0.0
    temperature: float = 4.0
    augment: str = "none"
    mixup: float = 0.0  # Beta(α, α) parameter of mixup; 0 = off
    seed: int = 0
    log_every: int = 100
    unlabelled_share: float = 0.5
    microbatch: int = 0

    def __post_init__(self):
        if self.steps < 1 or self.batch_size < 1:
            raise ValueError(f"steps and batch_size must be >= 1, got {self.steps}, "
                             f"{self.batch_size}")
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"unknown optimizer {self.optimizer!r}; allowed: {OPTIMIZERS}")
        if self.mixup < 0:
            raise ValueError(f"mixup must be >= 0 (Beta parameter; 0 = off), got {self.mixup}")
        if self.learning_rate <= 0 or self.temperature <= 0:
            raise ValueError("learning_rate and temperature must be > 0, got "
                             f"{self.learning_rate}, {self.temperature}")
        if not 0 < self.unlabelled_share < 1:
            raise ValueError("unlabelled_share must be in (0, 1) (the fraction of each batch "
                             f"drawn from the unlabelled images), got {self.unlabelled_share}")
        if self.microbatch < 0:
            raise ValueError(f"microbatch must be >= 0 (rows per pass; 0 = the whole batch), "
                             f"got {self.microbatch}")
        augment_lib.validate(self.augment)


def make_optimizer(config: FitConfig) -> optax.GradientTransformation:
    """Cosine schedule with linear warm-up; AdamW or SGD with momentum 0.9."""
    warmup = min(config.warmup_steps, config.steps - 1)
    end = config.learning_rate * 0.01
    if warmup > 0:
        schedule = optax.warmup_cosine_decay_schedule(0.0, config.learning_rate, warmup,
                                                      config.steps, end_value=end)
    else:
        schedule = optax.cosine_decay_schedule(config.learning_rate, config.steps,
                                               alpha=end / config.learning_rate)
    if config.optimizer == "adamw":
        return optax.adamw(schedule, weight_decay=config.weight_decay)
    return optax.chain(optax.add_decayed_weights(config.weight_decay),
                       optax.sgd(schedule, momentum=0.9))


def _batches(n: int, batch_size: int, rng: np.random.Generator):
    """Endless stream of index batches: consecutive slices of fresh permutations of range(n)."""
    stream = np.empty(0, np.int64)
    while True:
        while len(stream) < batch_size:
            stream = np.concatenate([stream, rng.permutation(n)])
        yield stream[:batch_size]
        stream = stream[batch_size:]


def _batch_size(images: np.ndarray, unlabelled: np.ndarray | None, config: FitConfig) -> int:
    """Rows of every batch ``_mixed_batches`` yields: ``config.batch_size``, at most the
    number of ``images`` when they are all a batch draws from."""
    return config.batch_size if unlabelled is not None else min(config.batch_size, len(images))


def _mixed_batches(images: np.ndarray, labels: np.ndarray, unlabelled: np.ndarray | None,
                   config: FitConfig, rng: np.random.Generator):
    """Endless (x, y) batches of a fixed size (``_batch_size``): from ``images`` alone, or with
    ``unlabelled`` a fixed split of each batch between the two (label -1 for the unlabelled
    rows)."""
    if unlabelled is None:
        for idx in _batches(len(images), _batch_size(images, None, config), rng):
            yield images[idx], labels[idx]
        return
    n_u = min(max(round(config.unlabelled_share * config.batch_size), 1), config.batch_size - 1)
    fill = np.full(n_u, -1, labels.dtype)
    for idx, u in zip(_batches(len(images), config.batch_size - n_u, rng),
                      _batches(len(unlabelled), n_u, rng), strict=True):
        yield np.concatenate([images[idx], unlabelled[u]]), np.concatenate([labels[idx], fill])


def fit(
    model: nnx.Module,
    images: np.ndarray,
    labels: np.ndarray,
    config: FitConfig,
    preprocess: Preprocess,
    *,
    teacher: nnx.Module | None = None,
    constrain: Callable[[nnx.Module], None] | None = None,
    features: Features | None = None,
    unlabelled: np.ndarray | None = None,
    mesh: jax.sharding.Mesh | None = None,
    desc: str = "train",
) -> list[dict[str, float]]:
    """Train ``model`` in place on images (N,H,W,C) uint8 and labels (N,) int.

    ``unlabelled`` (M,H,W,C) uint8: extra images seen through the teacher only (KD and feature
    terms, no CE): every batch takes ``round(unlabelled_share · batch_size)`` of them and the
    rest from ``images``, so a few labelled images keep their weight beside a large pool.

    ``features(module, x)``: feature maps (e.g. final features, block outputs) that the student
    matches to the teacher's with ``losses.normalized_feature_mse`` (weight 1, added to the CE/KD
    terms; with ``ce_weight = kd_weight = 0`` the labels are unused and the logits not computed).
    ``mesh``: data parallel over this process's devices of it (``data_devices``): the weights
    replicated on them and every (micro-)batch split by rows, so the step is the one-device
    step on the whole batch (BatchNorm statistics over the whole batch too), computed by all
    of them; the model goes back to where it was afterwards. A multi-process mesh trains the
    same steps in every process on its own devices (callers then ``broadcast_model``).

    Returns the logged history: one dict per ``log_every`` steps (step, loss, seconds,
    devices: how many the batches were split over).
    """
    if config.kd_weight > 0 and teacher is None:
        raise ValueError("kd_weight > 0 needs a teacher model")
    if features is not None and teacher is None:
        raise ValueError("features (feature distillation) needs a teacher model")
    if len(images) != len(labels) or len(images) == 0:
        raise ValueError(f"need as many labels as images (> 0), got {len(images)} and "
                         f"{len(labels)}")
    if unlabelled is not None:
        if len(unlabelled) == 0 or unlabelled.shape[1:] != images.shape[1:]:
            raise ValueError(f"unlabelled images must be a non-empty (M, *{images.shape[1:]}) "
                             f"array like the labelled ones, got shape {unlabelled.shape}")
        if config.batch_size < 2:
            raise ValueError("unlabelled images need batch_size >= 2 (labelled and unlabelled "
                             f"rows in every batch), got {config.batch_size}")
        if config.kd_weight <= 0 and features is None:
            raise ValueError("unlabelled images need a teacher term (kd_weight > 0 or "
                             "features): they have no labels to train on")
    batch = _batch_size(images, unlabelled, config)
    rows = batch // _micro_parts(batch, config.microbatch)  # one forward/backward pass
    train_mesh = data_devices(mesh, rows)
    optimizer = nnx.Optimizer(model, make_optimizer(config), wrt=nnx.Param)
    if teacher is not None:
        teacher.eval()
    model.train()
    if train_mesh is None:
        _commit((model, optimizer, teacher))
        place, devices = jnp.asarray, 1
    else:
        home = [getattr(a, "sharding", None) for a in jax.tree.leaves(nnx.state(model))]
        nnx.update((model, optimizer),
                   distributed.replicated(nnx.state((model, optimizer)), train_mesh))
        teacher = distributed.on_mesh(teacher, train_mesh)
        rows_sharding = NamedSharding(train_mesh, PartitionSpec(train_mesh.axis_names[0]))

        def place(a):
            return jax.device_put(a, rows_sharding)

        devices = int(train_mesh.devices.size)
        logging.info("%s: data parallel, %d rows per pass split over %d devices", desc, rows,
                     devices)

    @nnx.jit
    def step(model, optimizer, teacher, x, y, key):
        x, y_mixed, lam = _inputs(x, y, key)
        loss, grads = nnx.value_and_grad(_loss)(model, teacher, x, y, y_mixed, lam, config,
                                                features)
        _update(model, optimizer, grads)
        return loss

    @jax.jit
    def _inputs(x, y, key):
        """The batch as the loss sees it: preprocessed, augmented, mixed up."""
        k_aug, k_mix = jax.random.split(key)
        x = augment_lib.augment(k_aug, preprocess(x), config.augment)
        x, lam, perm = augment_lib.mixup(k_mix, x, config.mixup)
        return x, y[perm], lam

    def _update(model, optimizer, grads):
        optimizer.update(model, grads)
        if constrain is not None:
            constrain(model)

    # the step's gradients and the old weights and optimizer moments are dead once updated:
    # donated, the update writes in place (ResNet-50 step, bench.recover_step: peak 2.97 ->
    # 2.56 GiB with the gradient sum's donation)
    update = nnx.jit(_update, donate_argnums=(0, 1, 2))

    def micro_step(model, optimizer, teacher, x, y, key):
        x, y_mixed, lam = _inputs(x, y, key)
        loss, grads = _accumulated(model, teacher, x, y, y_mixed, lam, config, features,
                                   _micro_parts(len(x), config.microbatch), place)
        update(model, optimizer, grads)
        return loss

    rng = np.random.default_rng(config.seed)
    key = jax.random.key(config.seed)
    history, running, start = [], [], time.perf_counter()
    batches = _mixed_batches(images, labels, unlabelled, config, rng)
    for i in tqdm(range(1, config.steps + 1), desc=desc, leave=False, mininterval=2.0):
        x, y = next(batches)
        key, sub = jax.random.split(key)
        run = step if _micro_parts(len(x), config.microbatch) == 1 else micro_step
        running.append(run(model, optimizer, teacher, place(x), place(y), sub))
        if i % config.log_every == 0 or i == config.steps:
            entry = {"step": i, "loss": float(np.mean(jax.device_get(running))),
                     "seconds": time.perf_counter() - start, "devices": devices}
            running = []
            history.append(entry)
            logging.info("%s step %d/%d  loss %.4f  (%.1fs)", desc, i, config.steps,
                         entry["loss"], entry["seconds"])
    if train_mesh is not None:  # back where the caller had it
        leaves, tree = jax.tree.flatten(nnx.state(model))
        nnx.update(model, jax.tree.unflatten(tree, [
            a if h is None else jax.device_put(a, h) for a, h in zip(leaves, home, strict=True)]))
    model.eval()
    return history


def data_devices(mesh: jax.sharding.Mesh | None, rows: int) -> jax.sharding.Mesh | None:
    """The devices ``fit`` splits passes of ``rows`` rows over: the most of this process's
    devices of ``mesh`` that divide ``rows`` evenly (64 rows on 6 devices: 4), as a 1-D mesh,
    or None for one device."""
    local = distributed.local_mesh(mesh)
    if local is None:
        return None
    devices = list(local.devices.flat)
    count = max(k for k in range(1, len(devices) + 1) if rows % k == 0)
    if count < len(devices):
        logging.info("%d rows per pass do not split evenly over %d devices: using %d",
                     rows, len(devices), count)
    return distributed.device_mesh(devices[:count])


def _loss(model, teacher, x, y, y_mixed, lam, config: FitConfig, features: Features | None,
          share: tuple[jax.Array, jax.Array, jax.Array] | None = None) -> jax.Array:
    """The training loss of ``model`` on a (mixed-up) batch: CE on ``y`` and ``y_mixed``,
    KD against the teacher's logits, feature distillation. ``share``: the weights that make a
    micro-batch's terms add up to the whole batch's means (its labelled rows / the batch's for
    the two CE terms, its rows / the batch's for the rest); None: a whole batch."""
    w_ce, w_mixed, w_rows = share or (1.0, 1.0, 1.0)
    kd = config.kd_weight > 0
    loss = jnp.zeros(())
    if config.ce_weight > 0 or kd:
        logits = model(x)
        ce = (lam * w_ce * losses.cross_entropy(logits, y)
              + (1 - lam) * w_mixed * losses.cross_entropy(logits, y_mixed))
        loss += config.ce_weight * ce
        if kd:
            t_logits = jax.lax.stop_gradient(teacher(x))
            loss += w_rows * config.kd_weight * losses.kd_kl(logits, t_logits,
                                                             config.temperature)
    if features is not None:
        t_feats = jax.lax.stop_gradient(features(teacher, x))
        loss += w_rows * losses.normalized_feature_mse(features(model, x), t_feats)
    return loss


def _micro_parts(batch: int, microbatch: int) -> int:
    """How many equal micro-batches of at most ``microbatch`` rows split ``batch`` rows."""
    if microbatch <= 0 or microbatch >= batch:
        return 1
    return next(k for k in range(-(-batch // microbatch), batch + 1) if batch % k == 0)


@nnx.jit(static_argnames=("config", "features"))
def _part_grads(model, teacher, x, y, y_mixed, lam, share, config: FitConfig,
                features: Features | None) -> tuple[jax.Array, nnx.State]:
    """One micro-batch's weighted loss and gradients (its BatchNorm statistics updated)."""
    return nnx.value_and_grad(_loss)(model, teacher, x, y, y_mixed, lam, config, features,
                                     share)


@functools.partial(jax.jit, donate_argnums=(0,))
def _add(a, b):  # the running sum, donated: summed in place
    return jax.tree.map(jnp.add, a, b)


def _accumulated(model, teacher, x, y, y_mixed, lam, config: FitConfig,
                 features: Features | None, parts: int, place: Callable = jnp.asarray
                 ) -> tuple[jax.Array, nnx.State]:
    """``nnx.value_and_grad(_loss)`` of the whole batch as a sum over ``parts`` equal
    micro-batches, each its own compiled call, so only one micro-batch's activations are
    alive at a time (one program with a loop over them runs convolutions ~20x slower on XLA
    CPU, and one without a loop is free to keep them all); the model's BatchNorm statistics
    move micro-batch by micro-batch. ``place`` puts each micro-batch where the step runs
    (split over ``fit``'s data-parallel devices)."""
    rows = len(x) // parts
    labelled = [jnp.maximum(jnp.sum(v >= 0), 1) for v in (y, y_mixed)]
    loss, grads = None, None
    for i in range(parts):
        part = slice(i * rows, (i + 1) * rows)
        yi, mi = y[part], y_mixed[part]
        share = (jnp.sum(yi >= 0) / labelled[0], jnp.sum(mi >= 0) / labelled[1],
                 jnp.float32(rows / len(x)))
        part_loss, g = _part_grads(model, teacher, place(x[part]), place(yi), place(mi), lam,
                                   share, config, features)
        loss, grads = (part_loss, g) if grads is None else (loss + part_loss, _add(grads, g))
    return loss, grads


def _commit(modules) -> None:
    """Commit every array of ``modules`` to the device it is on, in place.

    A model restored from a checkpoint holds committed arrays, so the step's outputs are
    committed, while a fresh optimizer's step counts are not: jit would compile the step a
    second time for the changed placement on its second call (2.6 s per ``fit`` call on the
    TACO demo, 10 calls per run).
    """
    state = nnx.state(modules)
    nnx.update(modules, jax.tree.map(lambda a: jax.device_put(a, a.sharding), state))


def _logits(model: nnx.Module, x: jax.Array) -> jax.Array:
    return model(x)


@functools.partial(nnx.jit, static_argnames=("preprocess", "output"))
def _forward(model, x, preprocess, output):
    """``output(model, preprocess(x))``, compiled once per model structure, input shape and
    (preprocess, output) pair, so repeated evaluations of a model reuse it."""
    return output(model, preprocess(x))


# Pixels per inference batch at most: 32 images at 224² (ResNet-50's activations then stay
# near 1 GB), 256 at 64² and below; the batch never exceeds the images either (no padding of a
# 36-image test set to 256).
EVAL_PIXELS = 32 * 224 * 224


def eval_batch_size(batch_size: int, images: np.ndarray) -> int:
    """``batch_size`` capped by ``EVAL_PIXELS`` and by the number of images (at least 1)."""
    pixels = int(np.prod(images.shape[1:3])) if images.ndim >= 3 else 1
    return max(1, min(batch_size, len(images), EVAL_PIXELS // max(pixels, 1)))


def predict(
    model: nnx.Module, images: np.ndarray, preprocess: Preprocess, batch_size: int = 256,
    output: Callable[[nnx.Module, jax.Array], jax.Array] | None = None,
    mesh: jax.sharding.Mesh | None = None,
) -> np.ndarray:
    """``output(model, preprocess(x))`` (default: the logits ``model(x)``) over images (N,H,W,C)
    in eval mode, in fixed-size batches (one compilation; ``eval_batch_size``); rows stacked
    to (N, ...).

    ``mesh``: data parallel, each batch split over its devices (the batch rounded up to a
    multiple of them); a mesh over several processes (``taco_jax.distributed``) also splits
    ``images`` across processes and gathers the rows back in every process."""
    if distributed.spans_processes(mesh):
        mine = images[distributed.process_shard(len(images))]
        rows = predict(model, mine, preprocess, batch_size, output, distributed.local_mesh(mesh))
        return distributed.gather_rows(rows, len(images))
    model.eval()
    output = output or _logits
    put = jnp.asarray
    batch_size = eval_batch_size(batch_size, images)
    if mesh is not None:
        model = distributed.on_mesh(model, mesh)
        batch_size = -(-batch_size // mesh.devices.size) * mesh.devices.size
        sharding = NamedSharding(mesh, PartitionSpec(mesh.axis_names[0]))
        put = functools.partial(jax.device_put, device=sharding)

    out = []
    for start in range(0, len(images), batch_size):
        chunk = images[start:start + batch_size]
        pad = batch_size - len(chunk)
        if pad:
            chunk = np.concatenate([chunk, np.zeros((pad, *chunk.shape[1:]), chunk.dtype)])
        out.append(np.asarray(_forward(model, put(chunk), preprocess, output))
                   [:batch_size - pad])
    return np.concatenate(out)


def predict_logits(
    model: nnx.Module, images: np.ndarray, preprocess: Preprocess, batch_size: int = 256,
    mesh: jax.sharding.Mesh | None = None,
) -> np.ndarray:
    """Logits (N, C) of ``model`` in eval mode, in fixed-size batches (one compilation)."""
    return predict(model, images, preprocess, batch_size, mesh=mesh)


def accuracy(logits: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """Top-1 and top-5 accuracy (in %) of logits (N, C) against labels (N,); top-5 only for
    more than 5 classes (with 5 or fewer it is 100% by construction), else None."""
    order = np.argsort(-logits, axis=1)
    top1 = float(np.mean(order[:, 0] == labels) * 100)
    top5 = (float(np.mean(np.any(order[:, :5] == labels[:, None], axis=1)) * 100)
            if logits.shape[1] > 5 else None)
    return {"top1": top1, "top5": top5, "n": len(labels)}


def evaluate(
    model: nnx.Module, images: np.ndarray, labels: np.ndarray, preprocess: Preprocess,
    batch_size: int = 256, mesh: jax.sharding.Mesh | None = None,
) -> dict[str, float]:
    """Top-1/top-5 accuracy (%) of ``model`` on a labelled set (data parallel over ``mesh``)."""
    return accuracy(predict_logits(model, images, preprocess, batch_size, mesh), labels)
