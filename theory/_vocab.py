"""Streaming over the vocabulary for theory.dynamics: logit rows stacked from several (K_i, V) blocks
without copying them, exponentials written into one reused buffer, the element-wise work spread over
the machine's cores (numpy's ufuncs release the GIL; its exp is single-threaded otherwise), and the
products between chunks split over the same threads on one-thread BLAS (:func:`add_products`).

Every row is handled whole by one thread, and a product is split by whole rows of one operand (each
element still one whole dot product), so results do not depend on the number of threads.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

import numpy as np

CHUNK_BYTES = 32 * 2**20  # target size of one (rows × vocab chunk) block
_MIN_PARALLEL = 1 << 16  # elements below which one thread does the work
_BLOCK_BYTES = 256 * 2**10  # rows of a chunk handled together: max, subtract, exp, sum stay in cache
_POOL: list = []  # the lazily made thread pool
_BLAS: list = []  # threadpoolctl's controller of the loaded BLAS libraries, made on first use
SPLIT = True  # False: every product whole on BLAS's own threads, as before (benchmarks time both)


def threads() -> int:
    """Cores this process may use (``RMGAP_THREADS`` overrides)."""
    env = os.environ.get("RMGAP_THREADS")
    if env:
        return max(1, int(env))
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def _pool(n: int) -> ThreadPoolExecutor:
    if not _POOL or _POOL[0]._max_workers < n:
        _POOL[:] = [ThreadPoolExecutor(max_workers=n, thread_name_prefix="rmgap-vocab")]
    return _POOL[0]


@contextlib.contextmanager
def blas_one_thread():
    """BLAS held to one thread while :func:`add_products` runs products side by side on our own
    threads. BLAS's own workers, once woken by a product, may spin for a while after it (OpenBLAS's
    source: up to 2^n cycles, n = 28 unless OPENBLAS_THREAD_TIMEOUT sets another) and take a core
    from the exponentials that follow; one-thread BLAS wakes none. Does nothing on one core."""
    if threads() <= 1 or not SPLIT:
        yield
        return
    if not _BLAS:
        from threadpoolctl import ThreadpoolController

        _BLAS.append(ThreadpoolController())
    with _BLAS[0].limit(limits=1, user_api="blas"):
        yield


def product_parts(rows_a: int, rows_b: int, k: int) -> tuple[bool, list[tuple[int, int]]]:
    """How :func:`add_products` splits (rows_a × k)·(k × rows_b): whether along a's rows (else b's),
    and the (start, stop) row ranges of the parts, one per thread."""
    split_a = rows_a >= rows_b
    n = min(threads(), max(rows_a, rows_b))
    if not SPLIT or n <= 1 or rows_a * rows_b * k < _MIN_PARALLEL:
        return split_a, [(0, rows_a if split_a else rows_b)]
    bounds = np.linspace(0, rows_a if split_a else rows_b, n + 1).astype(int)
    return split_a, list(zip(bounds[:-1].tolist(), bounds[1:].tolist(), strict=True))


def add_products(inner: np.ndarray, a: np.ndarray, b: np.ndarray) -> None:
    """inner += a @ b.T, the rows of the longer of a and b split between the cores
    (:func:`product_parts`), each part a one-thread product on its own thread when called inside
    :func:`blas_one_thread`."""
    split_a, parts = product_parts(a.shape[0], b.shape[0], a.shape[1])
    if len(parts) == 1:
        inner += a @ b.T
        return

    def fn(r0, r1):
        if split_a:
            inner[r0:r1] += a[r0:r1] @ b.T
        else:
            inner[:, r0:r1] += a @ b[r0:r1].T

    list(_pool(len(parts)).map(fn, *zip(*parts, strict=True)))


def auto_chunk(rows: int, vocab: int, dtype) -> int:
    width = CHUNK_BYTES // (max(rows, 1) * np.dtype(dtype).itemsize)
    return int(min(vocab, max(1024, width)))


class Rows:
    """Logit rows stacked from several (K_i, V) blocks without copying them: only vocabulary chunks
    are ever written out, so stacking y+ and y− (or many evaluation sequences) costs no K×V copy."""

    def __init__(self, blocks: Sequence[np.ndarray]):
        self.blocks = list(blocks)
        self.n = sum(b.shape[0] for b in self.blocks)
        self.vocab = self.blocks[0].shape[1]
        self.starts = np.cumsum([0] + [b.shape[0] for b in self.blocks])

    def _pieces(self, r0: int, r1: int, width: int = 0):
        """(block, block rows, stacked rows) covering stacked rows r0:r1, in runs of rows that keep a
        (rows × ``width``) float64 slice within _BLOCK_BYTES (whole blocks when width is 0)."""
        step = max(1, _BLOCK_BYTES // (8 * width)) if width else None
        for b, s in zip(self.blocks, self.starts[:-1], strict=True):
            lo, hi = max(r0, s), min(r1, s + b.shape[0])
            for a in range(lo, hi, step or max(hi - lo, 1)):
                z = min(hi, a + step) if step else hi
                yield b, slice(a - s, z - s), slice(a, z)

    def _each(self, fn, width: int) -> None:
        """fn(r0, r1) over row ranges that split the rows between the cores."""
        n_threads = min(threads(), self.n)
        if n_threads <= 1 or self.n * width < _MIN_PARALLEL:
            fn(0, self.n)
            return
        bounds = np.linspace(0, self.n, n_threads + 1).astype(int)
        list(_pool(n_threads).map(fn, bounds[:-1], bounds[1:]))

    def row_max(self, dtype) -> np.ndarray:
        out = np.empty(self.n, dtype=dtype)

        def fn(r0, r1):
            for b, br, sr in self._pieces(r0, r1):
                out[sr] = b[br].max(axis=1)

        self._each(fn, self.vocab)
        return out

    def exp_into(self, c0: int, c1: int, shift: np.ndarray | None, out: np.ndarray) -> np.ndarray:
        """out[:n, :c1 − c0] = exp(logits[:, c0:c1] − shift[:, None]) (no shift: None), computed in
        out's dtype; returns the (n,) row sums of what it wrote."""
        w = min(c1, self.vocab) - c0
        sums = np.empty(self.n, dtype=out.dtype)

        def fn(r0, r1):
            for b, br, sr in self._pieces(r0, r1, w):
                e = out[sr, :w]
                if shift is None:  # (may overflow: the caller checks; errstate is per thread)
                    with np.errstate(over="ignore", under="ignore"):
                        np.exp(b[br, c0 : c0 + w], out=e, dtype=e.dtype, casting="unsafe")
                else:
                    np.subtract(b[br, c0 : c0 + w], shift[sr, None], out=e, casting="unsafe")
                    np.exp(e, out=e)
                sums[sr] = e.sum(axis=1)

        self._each(fn, w)
        return sums

    def exp_online(self, c0: int, c1: int, m: np.ndarray, out: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The running-max form of :meth:`exp_into` (one read of the logits, no separate max pass):
        ``m`` (n,) is the row max over the columns seen so far (−inf before the first chunk) and is
        raised in place to include c0:c1; out[:n, :w] = exp(logits[:, c0:c1] − m). Returns the row
        sums of what it wrote and ``scale`` = exp(m_before − m_after), the factor that brings sums
        accumulated under the old m to the new one."""
        w = min(c1, self.vocab) - c0
        sums, scale = np.empty(self.n, dtype=out.dtype), np.empty(self.n, dtype=out.dtype)

        def fn(r0, r1):
            for b, br, sr in self._pieces(r0, r1, w):
                e, x = out[sr, :w], b[br, c0 : c0 + w]
                new = np.maximum(m[sr], x.max(axis=1))
                scale[sr] = np.exp(m[sr] - new)
                m[sr] = new
                np.subtract(x, new[:, None], out=e, casting="unsafe")
                np.exp(e, out=e)
                sums[sr] = e.sum(axis=1)

        self._each(fn, w)
        return sums, scale

    def gather(self, cols: np.ndarray, dtype) -> np.ndarray:
        """logits[:, cols] as (n, len(cols))."""
        return np.concatenate([b[:, cols] for b in self.blocks]).astype(dtype, copy=False)

    def logsumexp(self, chunk: int, dtype) -> np.ndarray:
        m = self.row_max(dtype)
        s = np.zeros(self.n, dtype=dtype)
        buf = np.empty((self.n, min(chunk, self.vocab)), dtype=dtype)
        for c0 in range(0, self.vocab, chunk):
            s += self.exp_into(c0, c0 + chunk, m, buf)
        return m + np.log(s)
