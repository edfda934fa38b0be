"""CPU allocation policy for the large, short-lived buffers of frames: the engine's activations
and results, and the encoders' and decoders' pictures.

glibc serves blocks above its mmap threshold (dynamic, at most 32 MiB) with fresh mmaps and
returns freed heap tops above the trim threshold to the OS. Every frame then faults its
activation buffers (tens of MB each) and its 100 MB 4K result in page by page again: measured
here, ~34k page faults and ~40 ms per 1080p x2 frame. Raising both thresholds keeps those
buffers in the heap for reuse.

That holds for the main thread's heap only. Every other thread allocates from an arena of its
own, whose heaps are capped at 64 MiB, so a 4K frame's buffers there are fresh mmaps whatever
the thresholds: measured here, the engine called from a thread faulted 36k pages per 1080p x2
frame (0.40-0.46 s per frame, 0.33-0.34 s with the policy applied before the thread started),
and a writer thread 28k pages per 4K lossless WebP encode (0.19 CPU s of kernel time per image
in the runner). One arena for every thread gives them all the main heap; glibc's per-thread
caches still serve small blocks without its lock (the engine's speed on the main thread was
unchanged). A thread keeps the arena it got, so processes of ours apply the policy before they
start their threads (the runner, the quick CLI); the engine applies it at its first CPU run.

Process-wide, so applied once, only on glibc, and switched off with RT4KSR_CPU_MALLOC=0. The
cost: up to TRIM_THRESHOLD (512 MiB) of freed memory may stay mapped in the process.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import os
import threading
from typing import Callable, Iterator

# Above a 4K frame's float32 planes (3840 x 2160 x 3 x 4 bytes = 100 MB): the result and the
# network's output come from the heap and are reused call after call. Measured here (fp32,
# medians): x3 720p upscale() 157 -> 111 ms, x2 1080p 235 -> 187 ms, compared with thresholds
# of 64 and 256 MiB.
MMAP_THRESHOLD = 256 << 20
TRIM_THRESHOLD = 512 << 20
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD, _M_ARENA_MAX = -1, -3, -8  # glibc's mallopt parameter numbers
SWITCH = "RT4KSR_CPU_MALLOC"

_tuned: bool | None = None


def tune_allocator() -> bool:
    """Apply the policy once; True when it is in force."""
    global _tuned
    if _tuned is None:
        _tuned = os.environ.get(SWITCH, "1") != "0" and _mallopt()
    return _tuned


def tuned() -> bool:
    """Whether the policy is in force, without applying it."""
    return bool(_tuned)


def _libc():
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    try:
        libc = ctypes.CDLL(name)
        return libc if hasattr(libc, "mallopt") else None
    except OSError:
        return None


def _mallopt() -> bool:
    libc = _libc()
    if libc is None:  # musl, macOS, Windows: their allocators behave differently; leave them
        return False
    return bool(
        libc.mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD)
        and libc.mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD)
        and libc.mallopt(_M_ARENA_MAX, 1)
    )


@contextlib.contextmanager
def sharing_cores(busy: Callable[[], int]) -> Iterator[None]:
    """Within the block, torch's CPU kernels called from this thread get the cores that
    `busy()` other CPU-bound threads leave free (at least one), asked again before every
    module's forward; the thread count is restored afterwards.

    For pipelines whose encoder threads compete with the model: torch's threads wait for each
    other at every kernel's end, so one of them descheduled by an encoder stalls the rest and
    the waiting ones burn CPU the encoders could use. With one thread per free core the model
    never waits for a core it does not get. Asked per module (each layer of the network), not
    per image: a 1080p frame is one call of ~0.8 CPU-s, and an encode that ends during it gives
    its core back at the next layer instead of leaving it idle until the next image.
    """
    import torch

    cores, before, owner = usable_cores(), torch.get_num_threads(), threading.get_ident()

    def share(*_) -> None:
        if threading.get_ident() != owner:  # torch's OpenMP thread count is per calling thread
            return
        wanted = max(1, min(before, cores - busy()))
        if torch.get_num_threads() != wanted:
            torch.set_num_threads(wanted)

    hook = torch.nn.modules.module.register_module_forward_pre_hook(share)
    try:
        share()
        yield
    finally:
        hook.remove()
        torch.set_num_threads(before)


def usable_cores() -> int:
    """The CPU cores this process may run on (its affinity, where the OS tells it)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def release_free_memory() -> None:
    """Give the heap's free memory back to the OS (glibc malloc_trim); used by the benchmark
    to measure a run's peak from a clean baseline."""
    libc = _libc()
    if libc is not None and hasattr(libc, "malloc_trim"):
        libc.malloc_trim(0)
