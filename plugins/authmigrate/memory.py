"""Give freed memory back to the operating system.

pyarrow's memory pool and glibc's allocator keep freed memory for reuse, so a process that
peaks once stays at its peak. Between the phases of a large transform, and after each task (a
worker may run several tasks in one process: ``airflow dags test``, some executors), the
pipeline hands it back: what a phase frees is then available to the next one.
"""
from __future__ import annotations

import ctypes
import sys


def release() -> None:
    """No ``gc.collect()``: the data is freed by reference counting, and a full collection in a
    large process (a test session, ``airflow dags test``) costs up to a second per call."""
    if "pyarrow" in sys.modules:
        sys.modules["pyarrow"].default_memory_pool().release_unused()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc: nothing to trim
        pass
