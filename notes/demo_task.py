"""The TACO demo's task, shared by the measurement scripts in notes/ (run them with
``PYTHONPATH=.`` from the repository root): the generalist ``model`` and its task data ``data``
loaded the way ``launch.taco`` loads them (``run.load_task_data``), the dense task teacher (eval
mode), the few-shot set the pipeline draws (``cx, cy``; preprocessed calibration ``batches``)
and the test set (``vx, vy``); ``recover_stage`` recovers a launcher workdir's pruned stage."""
import jax.numpy as jnp
from flax import nnx

from configs.taco.demo import get_config
from taco_jax.compress import adapt, run
from taco_jax.data.task import few_shot_indices
from taco_jax.prune import sequential
from taco_jax.train import fit

config = get_config()
tc, _generalist_config, _task = run.parse(config)
model, _, data = run.load_task_data(config, _generalist_config, _task)
norm = data.preprocess
vx, vy = data.test_images, data.test_labels
teacher = adapt.restrict_head(nnx.clone(model), data.class_ids)
teacher.eval()
_ids = few_shot_indices(data.train_labels, tc.shots, tc.seed)
cx, cy = data.train_images[_ids], data.train_labels[_ids]
batches = [norm(jnp.asarray(cx[i:i + tc.calibration_batch]))
           for i in range(0, len(cx), tc.calibration_batch)]


def recover_stage(store, stage: str, x, y, recover) -> tuple[float, float]:
    """Restore a pruned ``stage`` of a launcher workdir's ``store`` into a copy of the teacher,
    run the recovery ``recover`` on (x, y) (KD from the teacher, masks held) and return its
    test top-1 before and after."""
    s = nnx.clone(teacher)
    masks, _ = store.load(stage, s)
    before = fit.evaluate(s, vx, vy, norm)["top1"]
    fit.fit(s, x, y, recover, norm, teacher=teacher, desc=stage,
            constrain=lambda m: sequential.apply_masks(m, masks))
    return before, fit.evaluate(s, vx, vy, norm)["top1"]
