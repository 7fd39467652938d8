"""A long run's resident memory: measure it, and keep what one stage leaves behind from adding
to the next stage's peak.

A launcher runs a dozen stages in one process (prune, recover, baselines, latency). On XLA CPU
what a finished stage leaves behind is not its arrays (0.1–0.3 GiB live after a ResNet-50
prune) but malloc's free-but-held pages and the compiled programs: each costs ~25 MiB resident
while its code is ~100 KiB on disk, and a ResNet-50 prune compiles dozens (BUILD_NOTES, "Your
own checkpoint"). ``configure_process`` keeps compiled programs in jax's on-disk cache, so
``end_of_stage`` can drop them from memory (and trim malloc's free pages) and a later stage
reloads the few it needs instead of compiling them. glibc's mallopt was tried and is not set:
a 16 MiB or 256 KiB mmap threshold made a ResNet-50 recovery step 18–44% slower (every
activation freshly mapped and zeroed) for no lower peak once the step donates its buffers.
"""

from __future__ import annotations

import ctypes
import gc
import os
import resource
import sys
from pathlib import Path

import jax
from absl import logging

# The on-disk program cache's cap (bytes; jax evicts least recently used entries beyond it).
PROGRAM_CACHE_BYTES = 2 * 2**30
# glibc malloc arenas for a launcher's threads (glibc's default: 8 per core). Each arena keeps
# what was freed into it; XLA's CPU threads free into many. ResNet-50 recovery steps (bench,
# four runs): peak 2.41-2.53 GiB by default, 2.28-2.31 GiB with 2 arenas, at the same speed.
MALLOC_ARENAS = 2
_M_ARENA_MAX = -8  # mallopt's parameter number (malloc.h)


def _libc() -> ctypes.CDLL | None:
    """glibc, or None elsewhere (macOS, musl): then ``release_freed_memory`` only collects."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.malloc_trim  # noqa: B018 (glibc's, not musl's)
    except (OSError, AttributeError):
        return None
    return libc


def configure_process(cache_dir: str | os.PathLike) -> None:
    """Set up a launcher's process to hold no more memory than its current stage needs: compiled
    programs go to ``cache_dir/xla`` (jax's persistent compilation cache, every program however
    quick to compile, capped at ``PROGRAM_CACHE_BYTES``) so ``end_of_stage`` may drop them (the
    ResNet-50 run, BUILD_NOTES), and glibc gets ``MALLOC_ARENAS`` arenas (before jax starts its
    threads). For launchers, which own their process."""
    libc = _libc()
    if libc is not None and "MALLOC_ARENA_MAX" not in os.environ:  # the user's setting wins
        libc.mallopt(_M_ARENA_MAX, MALLOC_ARENAS)
    jax.config.update("jax_compilation_cache_dir", str(Path(cache_dir).expanduser() / "xla"))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_compilation_cache_max_size", PROGRAM_CACHE_BYTES)


def end_of_stage() -> None:
    """Free what a finished stage leaves behind: its compiled programs when they can be
    reloaded from the on-disk cache (``configure_process``; never otherwise, where the next
    stage would compile them again), then the freed memory malloc still holds."""
    if programs_reloadable():
        jax.clear_caches()
    release_freed_memory()


def programs_reloadable() -> bool:
    """Whether compiled programs go to an on-disk cache (``configure_process``), so dropping
    them from memory costs a reload, not a compile."""
    return bool(jax.config.jax_compilation_cache_dir)


class ProgramBudget:
    """A long loop that compiles as it goes (a model's layers, one solver per shape) keeps its
    resident memory within ``headroom_mib`` of where it started: ``check()`` after each step
    drops the compiled programs (``end_of_stage``) once the process holds more than that,
    where they can be reloaded (``configure_process``; otherwise it does nothing). The floor
    rises to what a drop leaves, so arrays the loop keeps never make it drop every step.
    ResNet-50's 48-image prune (warm program cache): peak 2.42 GiB with 512 MiB of headroom,
    2.02 GiB with the default 192, in the same 144 s."""

    def __init__(self, headroom_mib: float = 192.0):
        self.headroom_mib = headroom_mib
        self.floor = rss_mib()
        self.drops = 0

    def check(self) -> None:
        if self.floor is None or not programs_reloadable():
            return
        now = rss_mib() or 0.0
        if now <= self.floor + self.headroom_mib:
            return
        end_of_stage()
        self.drops += 1
        after = rss_mib() or 0.0
        self.floor = max(self.floor, after)
        logging.info("memory: compiled programs dropped at %.0f MiB resident, now %.0f MiB "
                     "(drop %d)", now, after, self.drops)


def release_freed_memory() -> None:
    """Give memory freed by the process back to the system (glibc's ``malloc_trim``; elsewhere
    a no-op): XLA's CPU threads free into malloc arenas that later work may not reuse."""
    gc.collect()
    libc = _libc()
    if libc is not None:
        libc.malloc_trim(0)


def rss_mib() -> float | None:
    """This process's resident memory now (MiB; Linux's /proc, else None)."""
    try:
        pages = int(Path("/proc/self/statm").read_text().split()[1])
    except (OSError, IndexError, ValueError):
        return None
    return pages * os.sysconf("SC_PAGE_SIZE") / 2**20


def peak_rss_mib() -> float:
    """This process's peak resident memory so far (MiB)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 1024  # bytes on macOS

