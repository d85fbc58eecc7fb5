"""Keep glibc from handing large frame buffers back to the kernel after every call.

A 1 MiB call allocates and frees a few frame-sized buffers on each side. With glibc's defaults
those come from fresh mmaps or from heap that is trimmed on every free, so each call page-faults
its buffers in again: 450-780 faults per call per side, about two thirds of a 1 MiB round trip.
"""

from __future__ import annotations

import ctypes
import logging
from typing import Final

from .framing import DEFAULT_MAX_FRAME_BYTES

_M_TRIM_THRESHOLD: Final = -1
_M_MMAP_THRESHOLD: Final = -3
_MAX_MMAP_THRESHOLD: Final = 32 * 1024 * 1024  # glibc's ceiling on 64-bit

_log = logging.getLogger(__name__)


def tune_allocator(max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES) -> bool:
    """Serve frame-sized buffers from a heap that is kept; return whether it took effect.

    Buffers up to twice the frame limit come from the heap instead of their own mmap, and up to
    four times the frame limit of free heap is kept rather than trimmed: a process that once
    handled a large frame keeps that much memory. Does nothing off glibc. Call it once, early.
    """
    try:
        # The process's own symbols: libc is loaded already, and find_library would fork ldconfig.
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False  # not glibc (musl has no mallopt)
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    mallopt.restype = ctypes.c_int
    mmap_threshold = min(2 * max_frame_bytes, _MAX_MMAP_THRESHOLD)
    ok = bool(mallopt(_M_MMAP_THRESHOLD, mmap_threshold) == 1)
    ok = bool(mallopt(_M_TRIM_THRESHOLD, 4 * max_frame_bytes) == 1) and ok
    if not ok:
        _log.debug("mallopt refused the allocator settings")
    return ok
