"""How often does one ``fit`` call compile its training step, and what does a short call cost?
(issue #7, session 9). Measurement only.

  PYTHONPATH=.:notes .venv/bin/python notes/fit_compiles.py

Two 4-step KD recoveries of the TACO demo's teacher (restored from the cached generalist, so its
arrays are committed, as in the pipeline), each timed, with the number of "Compiling jit(step)"
log lines each one produced.
"""
import dataclasses
import logging
import time

import jax
from demo_task import cx, cy, norm, tc, teacher
from flax import nnx

from taco_jax.train import fit


class _Count(logging.Handler):
    def __init__(self):
        super().__init__()
        self.n = 0

    def emit(self, record):
        self.n += record.getMessage().startswith("Compiling jit(step)")


counter = _Count()
logging.getLogger("jax").addHandler(counter)
recover = dataclasses.replace(tc.recover, steps=4, log_every=4)
for call in (1, 2):
    counter.n = 0
    student = nnx.clone(teacher)
    t = time.perf_counter()
    with jax.log_compiles():
        fit.fit(student, cx, cy, recover, norm, teacher=teacher, desc=f"call {call}")
    print(f"RESULT fit call {call}: {recover.steps} steps in {time.perf_counter() - t:.1f} s, "
          f"{counter.n} compilation(s) of the step", flush=True)
