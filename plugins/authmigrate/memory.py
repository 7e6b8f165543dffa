"""Give freed memory back to the operating system.

pyarrow's memory pool and glibc's allocator keep freed memory for reuse, so a process that
peaks once stays at its peak. Between the phases of a large transform, and after each task (a
worker may run several tasks in one process: ``airflow dags test``, some executors), the
pipeline hands it back: what a phase frees is then available to the next one.

Which pool Arrow uses matters more than any of that. pyarrow's default, mimalloc, keeps freed
pages mapped: a million-user transform left ~320 MiB resident after it returned. The jemalloc
pool, with its decay set to 0 here, returns them at once (residue ~150 MiB, peak ~30 % lower;
docs/performance.md). Arrow picks its pool when the process first loads it, from
``ARROW_DEFAULT_MEMORY_POOL``: every deployment this project ships (Makefile, docker-compose,
Dockerfile, the local Airflow stack, the benchmark) sets it to ``jemalloc`` in the worker's
environment; elsewhere, set it there.
"""
from __future__ import annotations

import ctypes
import logging
import sys

log = logging.getLogger("authmigrate")
POOL_VARIABLE = "ARROW_DEFAULT_MEMORY_POOL"
_tuned = False


def tune() -> str:
    """Set the jemalloc pool's decay to 0 and return the pool's backend; say once per process
    when it is not jemalloc. With Arrow's default decay (1 s) freed pages linger while the next
    phase allocates: the peaks of a 1M-user transform varied by ~100 MiB from run to run."""
    global _tuned
    import pyarrow as pa

    backend = pa.default_memory_pool().backend_name
    if not _tuned:
        _tuned = True
        if backend == "jemalloc":
            pa.jemalloc_set_decay_ms(0)
        else:
            log.info("memory: Arrow's memory pool is %s; %s=jemalloc in the worker's environment lowers the "
                     "peak memory of large runs (docs/performance.md)", backend, POOL_VARIABLE)
    return backend


def release() -> None:
    """No ``gc.collect()``: the data is freed by reference counting, and a full collection in a
    large process (a test session, ``airflow dags test``) costs up to a second per call."""
    if "pyarrow" in sys.modules:
        sys.modules["pyarrow"].default_memory_pool().release_unused()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc: nothing to trim
        pass
