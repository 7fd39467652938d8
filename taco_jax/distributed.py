"""Multi-host / multi-device runs on JAX's own distributed runtime (``jax.distributed``).

One process per host (TPU VM worker, GPU node); every process runs the same launcher command.
The model is replicated in every process (small next to the activations); the calibration and
evaluation images are split across processes (``process_shard``: contiguous, no duplicates, no
gaps); the heavy work runs on a mesh of all devices (``device_mesh``): Hessians are summed over
devices and processes, the layer solves are sharded by rows over every device.

``initialize(mode)`` starts the runtime when the run is multi-process: ``mode="on"``, or
``"auto"`` (the default) when the environment says so — ``JAX_COORDINATOR_ADDRESS`` (with
``JAX_NUM_PROCESSES`` and ``JAX_PROCESS_ID``, our convention for hand-started processes), a
multi-host Cloud TPU slice (``TPU_WORKER_HOSTNAMES`` lists several hosts), SLURM with
``SLURM_NTASKS`` > 1 or Open MPI with ``OMPI_COMM_WORLD_SIZE`` > 1; JAX's cluster detection
then fills in the coordinator and ranks. Single-process runs never touch any of this, so their
results stay bit-identical.
"""

from __future__ import annotations

import functools
import os
import sys
from collections.abc import Callable

import jax
import numpy as np
from absl import app, flags, logging
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

MODES = ("auto", "on", "off")
AXIS = "data"


def multiprocess_env() -> bool:
    """Whether the environment describes a multi-process job (see the module docstring)."""
    env = os.environ
    hosts = [h for h in env.get("TPU_WORKER_HOSTNAMES", "").split(",") if h.strip()]
    return ("JAX_COORDINATOR_ADDRESS" in env or len(hosts) > 1
            or int(env.get("SLURM_NTASKS", "1")) > 1
            or int(env.get("OMPI_COMM_WORLD_SIZE", "1")) > 1)


def initialize(mode: str = "auto") -> bool:
    """Start ``jax.distributed`` if the run is multi-process (``mode``: auto / on / off);
    afterwards only process 0 logs at INFO and shows progress bars. Returns whether it started.
    """
    if mode not in MODES:
        raise ValueError(f"distributed mode must be one of {MODES}, got {mode!r}")
    if mode == "off" or (mode == "auto" and not multiprocess_env()):
        return False
    env = os.environ
    kw = {}
    if "JAX_NUM_PROCESSES" in env:
        kw["num_processes"] = int(env["JAX_NUM_PROCESSES"])
    if "JAX_PROCESS_ID" in env:
        kw["process_id"] = int(env["JAX_PROCESS_ID"])
    jax.distributed.initialize(**kw)
    if not is_main():
        logging.set_verbosity(logging.WARNING)
        _silence_progress_bars()
    logging.info("jax.distributed: %d processes, %d devices (%d here)", jax.process_count(),
                 jax.device_count(), jax.local_device_count())
    return True


def _silence_progress_bars() -> None:
    """tqdm bars off in this process (tqdm reads TQDM_DISABLE only when it is imported)."""
    import tqdm
    import tqdm.auto

    for cls in {tqdm.tqdm, tqdm.auto.tqdm}:
        cls.__init__ = functools.partialmethod(cls.__init__, disable=True)


def run(main: Callable[[list[str]], None]) -> None:
    """``absl.app.run(main)`` with a ``--distributed`` flag, initialising before ``main``: the
    one entry point every launcher uses."""
    mode = flags.DEFINE_enum(
        "distributed", "auto", MODES,
        "Multi-process run through jax.distributed: 'auto' starts it when the environment "
        "describes one (JAX_COORDINATOR_ADDRESS + JAX_NUM_PROCESSES + JAX_PROCESS_ID, a "
        "multi-host TPU slice, SLURM, Open MPI), 'on' always, 'off' never.",
        module_name=sys.argv[0])  # listed with the launcher's own flags in --help

    def start(argv):
        initialize(mode.value)
        return main(argv)

    app.run(start)


def is_main() -> bool:
    """Whether this is process 0, the one that logs and writes the run's files."""
    return jax.process_index() == 0


def process_shard(n: int, index: int | None = None, count: int | None = None) -> slice:
    """This process's contiguous share of ``range(n)``: the shares of processes 0..count-1
    tile it in order with no duplicates and no gaps (sizes differ by at most one)."""
    index = jax.process_index() if index is None else index
    count = jax.process_count() if count is None else count
    if not 0 <= index < count:
        raise ValueError(f"process index {index} is outside [0, {count})")
    return slice(n * index // count, n * (index + 1) // count)


def device_mesh(devices=None) -> Mesh | None:
    """A 1-D mesh (axis ``"data"``) over ``devices`` (default: every device of every process),
    or None when that is a single device (the single-device code path)."""
    devices = jax.devices() if devices is None else list(devices)
    return None if len(devices) == 1 else Mesh(np.array(devices), (AXIS,))


def local_mesh(mesh: Mesh | None) -> Mesh | None:
    """The part of ``mesh`` on this process's devices (``mesh`` itself if it is all here)."""
    if not spans_processes(mesh):
        return mesh
    return device_mesh([d for d in mesh.devices.flat if d.process_index == jax.process_index()])


def spans_processes(mesh: Mesh | None) -> bool:
    """Whether ``mesh`` has devices of other processes."""
    return mesh is not None and any(d.process_index != jax.process_index()
                                    for d in mesh.devices.flat)


def replicated(tree, mesh: Mesh):
    """Every array of ``tree`` (identical in every process) replicated over ``mesh``'s devices,
    so it can enter a computation on them next to sharded data (an array committed to one
    device, e.g. restored by orbax, could not); a mesh over several processes gets global
    arrays built from each process's copy."""
    if not spans_processes(mesh):
        return jax.device_put(tree, NamedSharding(mesh, P()))
    sharding = NamedSharding(mesh, P())
    return jax.tree.map(
        lambda x: jax.make_array_from_process_local_data(sharding, np.asarray(x)), tree)


def on_mesh(model, mesh: Mesh | None):
    """A view of ``model`` whose weights are replicated over ``mesh`` (``model`` if None)."""
    if mesh is None:
        return model
    from flax import nnx

    graphdef, state = nnx.split(model)
    return nnx.merge(graphdef, replicated(state, mesh))


def to_host(x) -> np.ndarray:
    """The full value of a (possibly multi-process, sharded) array in every process."""
    if getattr(x, "is_fully_addressable", True):
        return np.asarray(x)
    if x.is_fully_replicated:
        return np.asarray(x.addressable_data(0))
    from jax.experimental import multihost_utils

    return np.asarray(multihost_utils.process_allgather(x, tiled=True))


def sum_over_processes(tree):
    """Sum of a pytree of arrays over processes, in process order (identical everywhere)."""
    if jax.process_count() == 1:
        return tree
    from jax.experimental import multihost_utils

    return jax.tree.map(lambda a: np.asarray(a).sum(0),
                        multihost_utils.process_allgather(jax.tree.map(np.asarray, tree)))


def gather_rows(local: np.ndarray, n: int) -> np.ndarray:
    """Rows (n, ...) from every process's ``process_shard(n)`` rows, in order."""
    count = jax.process_count()
    if count == 1:
        return np.asarray(local)
    from jax.experimental import multihost_utils

    width = -(-n // count)  # shards differ by at most one row: pad to the widest
    pad = np.zeros((width - len(local), *local.shape[1:]), local.dtype)
    allrows = np.asarray(multihost_utils.process_allgather(np.concatenate([local, pad])))
    return np.concatenate([allrows[i, :len(range(n)[process_shard(n, i, count)])]
                           for i in range(count)])


def barrier(name: str) -> None:
    """Wait until every process gets here (e.g. process 0 has made a directory)."""
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(name)


def broadcast_model(model) -> None:
    """Give every process process 0's weights (after a step every process ran on its own, e.g.
    recovery training, whose results could differ in the last bits between hosts)."""
    if jax.process_count() == 1:
        return
    from flax import nnx
    from jax.experimental import multihost_utils

    state = nnx.state(model)
    host = jax.tree.map(np.asarray, state)
    nnx.update(model, jax.tree.map(jax.numpy.asarray,
                                   multihost_utils.broadcast_one_to_all(host)))
