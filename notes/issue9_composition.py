"""Issue #9 diagnostic: what the retrieved and the random transfer sets are made of.

  python notes/issue9_composition.py

For each pool setting (share of each task class's pool images kept), transfer size and seed:
the share of task-class images, of animal images (task + other species) and of digits in the
retrieval set and in the equal-size random pool subset. The selection mirrors
``transfer.transfer`` (teacher embedding, labelled-image copies dropped, ``retrieval.retrieve``,
``default_rng(seed).choice``) without training anything.
"""

import itertools

import numpy as np
from flax import nnx

from configs.transfer import demo
from taco_jax.compress import adapt, retrieval, run, transfer_run
from taco_jax.data import embedded, pool
from taco_jax.data.task import Task, few_shot_indices

FRACTIONS = (1.0, 0.1, 0.05, 0.0)
SIZES = (500, 2000)
SEEDS = (0, 1, 2)


def main() -> None:
    config = demo.get_config()
    _, generalist_config, task, _ = transfer_run.parse(config)
    model, _, data = run.load_task_data(config, generalist_config, task)
    teacher = adapt.restrict_head(nnx.clone(model), data.class_ids)
    pool_task = Task(config.pool.dataset, ())
    pool_x, pool_y = pool_task.load("train")
    names, task_names = pool_task.class_names(), list(data.class_names)
    animal = np.isin(np.asarray(names), embedded.ANIMALS)
    pool_emb = retrieval.embed(teacher, pool_x, data.preprocess)
    print("fraction seed size set task% animal% digit% pool pool_task%")
    for fraction, seed in itertools.product(FRACTIONS, SEEDS):
        kept = pool.pool_subset(pool_y, names, task_names, fraction)
        ids = few_shot_indices(data.train_labels, config.shots, seed)
        shots_x = data.train_images[ids]
        pool_ids = kept[retrieval.drop_query_copies(pool_x[kept], shots_x)]
        q = retrieval.embed(teacher, shots_x, data.preprocess)
        pool_c = pool.composition(pool_ids, pool_y, names, task_names)
        for size in SIZES:
            sets = {"retrieval": pool_ids[retrieval.retrieve(q, pool_emb[pool_ids], size)],
                    "random": np.random.default_rng(seed).choice(pool_ids, size, replace=False)}
            for name, chosen in sets.items():
                c = pool.composition(chosen, pool_y, names, task_names)
                a = animal[pool_y[chosen]].mean()
                print(f"{fraction:4.2f} {seed} {size:5d} {name:9s} "
                      f"{100 * c['task_class_fraction']:5.1f} {100 * a:5.1f} {100 * (1 - a):5.1f} "
                      f"{len(pool_ids)} {100 * pool_c['task_class_fraction']:.1f}", flush=True)


if __name__ == "__main__":
    main()
