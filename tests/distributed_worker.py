"""One run of ``prune_model`` for the distributed tests (run as a script, in a subprocess).

  python distributed_worker.py OUT.npz MODE [--ckpt=DIR] [--kill-after=K] [--models=vit,qkv]

MODE ``single``: one device, all images (the reference); ``mesh``: the mesh of every device of
every process (``taco_jax.distributed``), this process's share of the images. The environment
chooses the devices (XLA_FLAGS) and the processes (JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES,
JAX_PROCESS_ID). ``--kill-after=K`` SIGKILLs the process right after the K-th layer-group
checkpoint (a preempted VM). Process 0 writes the masks, kernels, Hessians and the number of
checkpoints this run wrote (fewer after a resume) to OUT.npz.
"""

import os
import signal
import sys

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from taco_jax import distributed

distributed.initialize()

from test_prune_fixtures import TinyViT, image_batches  # noqa: E402

from taco_jax.models.paths import get_layer  # noqa: E402
from taco_jax.prune import checkpoint as ckpt  # noqa: E402
from taco_jax.prune.hessian import collect_hessians  # noqa: E402
from taco_jax.prune.sequential import PruneConfig, prune_model  # noqa: E402
from taco_jax.train import fit  # noqa: E402


class SplitQKV(nnx.Module):
    """Separate q/k/v/o projections: one layer group of three layers (across-layer solves)."""

    head_name = "head"

    def __init__(self, rngs, d=32):
        self.patch = nnx.Conv(3, d, (4, 4), strides=4, rngs=rngs)
        self.q, self.k, self.v = (nnx.Linear(d, d, rngs=rngs) for _ in range(3))
        self.o = nnx.Linear(d, d, rngs=rngs)
        self.head = nnx.Linear(d, 5, rngs=rngs)

    def __call__(self, x):
        x = self.patch(x)
        x = x.reshape(x.shape[0], -1, x.shape[-1])
        a = jax.nn.softmax(jnp.einsum("bqd,bkd->bqk", self.q(x), self.k(x)) / 32**0.5)
        x = x + self.o(jnp.einsum("bqk,bkd->bqd", a, self.v(x)))
        return self.head(x.mean(1))


MODELS = {"vit": TinyViT, "qkv": SplitQKV}
HESSIAN_LAYERS = ["patch", "blocks.0.attn.qkv", "blocks.1.mlp.fc2"]


def main(out: str, mode: str, ckpt_dir: str | None, kill_after: int | None,
         models: list[str]) -> None:
    batches = image_batches(3, batch=12)
    mesh = None
    if mode == "mesh":
        mesh = distributed.device_mesh()
        batches = [b[distributed.process_shard(len(b))] for b in batches]
    real, saves = ckpt.save, [0]

    def counted_save(*a, **k):  # counts this run's checkpoints; dies after the K-th if asked
        real(*a, **k)
        saves[0] += 1
        if saves[0] == kill_after:
            os.kill(os.getpid(), signal.SIGKILL)

    ckpt.save = counted_save
    arrays = {}
    Hs = collect_hessians(TinyViT(nnx.Rngs(0)), batches, HESSIAN_LAYERS, mesh=mesh)
    arrays.update({f"hessian/{n}": np.asarray(h) for n, h in Hs.items()})
    for name in models:
        model = MODELS[name](nnx.Rngs(0))
        if mesh is not None:  # weights committed to one device, as orbax restores them
            nnx.update(model, jax.device_put(nnx.state(model), jax.local_devices()[0]))
        cfg = PruneConfig(sparsity=0.6, blocksize=16)
        result = prune_model(model, batches, cfg, mesh=mesh,
                             checkpoint_dir=None if ckpt_dir is None else f"{ckpt_dir}/{name}")
        for n, m in result.masks.items():
            arrays[f"{name}/mask/{n}"] = m
            arrays[f"{name}/kernel/{n}"] = np.asarray(get_layer(model, n).kernel.get_value())
        # evaluation: data parallel over the mesh (each process its share of the images)
        # against this process alone on all of them, same (pruned) model
        images = np.concatenate(image_batches(3, batch=12, seed=1))
        arrays[f"{name}/logits/mesh"] = fit.predict(model, images, lambda x: x, 16, mesh=mesh)
        arrays[f"{name}/logits/local"] = fit.predict(model, images, lambda x: x, 16)
    if distributed.is_main():
        np.savez(out, devices=jax.device_count(), processes=jax.process_count(), saves=saves[0],
                 **arrays)


if __name__ == "__main__":
    opts = dict(a.lstrip("-").split("=", 1) for a in sys.argv[3:])
    main(sys.argv[1], sys.argv[2], opts.get("ckpt"),
         int(opts["kill-after"]) if "kill-after" in opts else None,
         opts.get("models", "vit,qkv").split(","))
