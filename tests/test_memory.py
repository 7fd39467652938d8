"""The launcher process's memory plumbing: compiled programs dropped at a stage's end come back
from the on-disk cache (not compiled again) and compute the same; a compiling loop drops them
only past its headroom, and never where they could not be reloaded."""

from __future__ import annotations

import subprocess
import sys
import textwrap

from taco_jax import memory


def test_programs_dropped_at_a_stage_end_reload_from_the_disk_cache(tmp_path):
    script = textwrap.dedent(f"""
        import pathlib
        import jax, jax.numpy as jnp, numpy as np
        from taco_jax import memory
        hits = []
        jax.monitoring.register_event_listener(
            lambda event, **kw: hits.append(event) if "cache_hits" in event else None)
        memory.configure_process({str(tmp_path)!r})
        f = jax.jit(lambda a: jnp.linalg.cholesky(a @ a.T + 64 * jnp.eye(64)).sum())
        a = jnp.asarray(np.random.default_rng(0).normal(size=(64, 64)), jnp.float32)
        first = float(f(a))
        assert f._cache_size() == 1 and not hits
        memory.end_of_stage()
        assert f._cache_size() == 0  # dropped from memory
        again = float(f(a))
        assert again == first, (again, first)
        print("ok", len(hits), len(list(pathlib.Path({str(tmp_path / "xla")!r}).iterdir())))
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    ok, hits, files = out.stdout.split()
    assert ok == "ok" and int(hits) >= 1 and int(files) >= 1  # reloaded from the disk


def test_program_budget_drops_past_its_headroom_and_raises_its_floor(monkeypatch):
    rss = iter([1000.0, 1100.0, 1900.0, 1500.0, 2100.0, 2400.0, 2350.0])
    monkeypatch.setattr(memory, "rss_mib", lambda: next(rss))
    dropped = []
    monkeypatch.setattr(memory, "end_of_stage", lambda: dropped.append(1))
    monkeypatch.setattr(memory, "programs_reloadable", lambda: True)
    budget = memory.ProgramBudget(headroom_mib=500)      # floor 1000
    budget.check()                                       # 1100: within
    assert budget.drops == 0
    budget.check()                                       # 1900: drop; leaves 1500
    assert budget.drops == 1 and budget.floor == 1500
    budget.check()                                       # 2100 ≤ 1500 + 500? no: drop
    assert budget.drops == 2 and budget.floor == 2400    # what the drop left (kept arrays)
    budget.check()                                       # 2350: within the raised floor
    assert budget.drops == 2 and len(dropped) == 2


def test_program_budget_never_drops_programs_it_could_not_reload(monkeypatch):
    monkeypatch.setattr(memory, "programs_reloadable", lambda: False)
    monkeypatch.setattr(memory, "end_of_stage", lambda: (_ for _ in ()).throw(AssertionError))
    budget = memory.ProgramBudget(headroom_mib=0)
    budget.floor = 0.0
    budget.check()
    assert budget.drops == 0
