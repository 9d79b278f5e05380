"""Run the fits with single-threaded BLAS.

The fits make thousands of BLAS/LAPACK calls on tiny matrices (L-BFGS-B's
5x5 updates, 3-point least squares). A multi-threaded OpenBLAS spends far more
time waking its threads than computing: scipy's L-BFGS-B ran ~30x slower on a
shared 2-core machine. ``threadpoolctl`` limits BLAS to one thread while the
analysis runs; without it, this is a no-op.
"""

from __future__ import annotations

import contextlib
import functools

try:
    from threadpoolctl import threadpool_limits
except ImportError:  # pragma: no cover - threadpoolctl is a declared dependency
    threadpool_limits = None


def single_threaded_blas():
    if threadpool_limits is None:
        return contextlib.nullcontext()
    return threadpool_limits(limits=1, user_api="blas")


def blas_single_threaded(function):
    """Decorator: run ``function`` with single-threaded BLAS."""
    @functools.wraps(function)
    def wrapper(*args, **kwargs):
        with single_threaded_blas():
            return function(*args, **kwargs)
    return wrapper
