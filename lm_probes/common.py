"""Helpers every part of lm_probes uses: progress bars, phase timers, atomic output, run folders.

for batch in progress(batches, "epoch 1", enabled=not quiet): ...
timer = Timer(); with timer("model"): ...; timer.seconds   # {"model": 1.2}
write_json(path, summary)        # atomic; NaN/inf → null, numpy scalars → Python, tuples → lists
write_output_jsonl(out / "rewards_test.jsonl.gz", rows)   # a run's per-row output: gzip, deterministic
read_jsonl_rows(out / "rewards_test.jsonl.gz")            # its rows (or an older run's rewards_test.jsonl)
claim_folder(out, ("summary.json", "rewards_*.jsonl.gz"), resume=False, overwrite=False)   # or one line
matmul_rate(); train_flops("im_rm", n_body, n_head, tokens, response_tokens)   # for the benchmarks
"""

from __future__ import annotations

import gzip
import json
import math
import os
import shutil
import time
import zlib
from contextlib import contextmanager
from pathlib import Path

import numpy as np


def progress(iterable, desc: str, *, enabled: bool = True, total: int | None = None):
    """``iterable`` wrapped in a tqdm bar when ``enabled`` and tqdm is installed, else unchanged."""
    if not enabled:
        return iterable
    try:
        from tqdm.auto import tqdm
    except ImportError:  # pragma: no cover - tqdm comes with the lm extra
        return iterable
    return tqdm(iterable, total=total, desc=desc, leave=False)


class Timer:
    """Accumulates wall time per phase: ``with timer("model"): ...``; read ``timer.seconds``, and
    ``timer.current`` for the phase in progress (None between phases: what a memory sampler reads)."""

    def __init__(self):
        self.seconds: dict[str, float] = {}
        self.current: str | None = None

    @contextmanager
    def __call__(self, name: str):
        t0, outer, self.current = time.perf_counter(), self.current, name
        try:
            yield
        finally:
            self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - t0
            self.current = outer


def jsonable(x):
    """``x`` with dict keys as strings, tuples as lists, numpy values as Python, non-finite floats as None."""
    if isinstance(x, dict):
        return {str(k): jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [jsonable(v) for v in x]
    if isinstance(x, np.ndarray):
        return jsonable(x.tolist())
    if isinstance(x, (float, np.floating)):
        return float(x) if math.isfinite(float(x)) else None
    if isinstance(x, np.integer):
        return int(x)
    if isinstance(x, Path):
        return str(x)
    return x


def write_json(path: Path, obj) -> Path:
    """Write ``obj`` as indented JSON (see :func:`jsonable`), creating the folder."""
    return write_text(path, json.dumps(jsonable(obj), indent=2) + "\n")


def write_text(path: Path, text: str) -> Path:
    """Write ``text`` (UTF-8) atomically: see :func:`write_bytes`."""
    return write_bytes(path, text.encode("utf-8"))


def write_bytes(path: Path, data: bytes) -> Path:
    """Write ``data`` atomically: into a temporary file beside ``path``, flushed to disk, then renamed
    over it (a reader, or a run killed mid-write, sees the old file or the new one, never a fragment)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def write_jsonl(path: Path, rows, *, ensure_ascii: bool = True) -> Path:
    """One JSON object per line (see :func:`jsonable`), atomically; gzip-compressed where ``path`` ends
    in .gz, deterministically (level 9, no file name and time 0 in the header: the same rows give the
    same bytes)."""
    text = "".join(json.dumps(jsonable(row), ensure_ascii=ensure_ascii) + "\n" for row in rows)
    data = text.encode("utf-8")
    if Path(path).suffix == ".gz":
        data = gzip.compress(data, compresslevel=9, mtime=0)
    return write_bytes(path, data)


def write_output_jsonl(path: Path, rows) -> Path:
    """A run's per-row output written as ``<name>.jsonl.gz`` (:func:`write_jsonl`; either name given),
    then the uncompressed ``<name>.jsonl`` that rmgap wrote in its place before removed: a resumed older
    folder that writes an output again never holds both (killed in between, it does, and
    :func:`jsonl_file` refuses it)."""
    plain, packed = jsonl_pair(path)
    write_jsonl(packed, rows)
    plain.unlink(missing_ok=True)
    return packed


def jsonl_pair(path: Path) -> tuple[Path, Path]:
    """(``<name>.jsonl``, ``<name>.jsonl.gz``) of ``path``, either of the two."""
    path = Path(path)
    plain = path.with_name(path.name.removesuffix(".gz"))
    return plain, plain.with_name(plain.name + ".gz")


def jsonl_file(path: Path) -> Path:
    """The file of a run's per-row output ``<name>.jsonl[.gz]``: ``<name>.jsonl.gz`` (what runs write)
    or ``<name>.jsonl`` (what they wrote before), whichever exists; the .gz where neither does. A folder
    holding both is refused in one line: two versions of one output, and which one is meant is unknown."""
    plain, packed = jsonl_pair(path)
    if plain.exists() and packed.exists():
        raise ValueError(
            f"{packed.parent}: holds both {plain.name} and {packed.name} (one output, written by an older "
            "and a newer rmgap); delete the one that is not this run's and run again"
        )
    return plain if plain.exists() else packed


def jsonl_files(folder: Path, prefix: str) -> dict[str, Path]:
    """{name: file} of every ``<prefix><name>.jsonl.gz`` or older ``<prefix><name>.jsonl`` in
    ``folder``, in the order of their file names; both for one name are refused (:func:`jsonl_file`)."""
    found = [*Path(folder).glob(f"{prefix}*.jsonl"), *Path(folder).glob(f"{prefix}*.jsonl.gz")]
    names = {f.name.removesuffix(".gz").removesuffix(".jsonl")[len(prefix) :] for f in found}
    order = sorted(names, key=lambda name: f"{name}.jsonl")  # (as the uncompressed names sort)
    return {name: jsonl_file(Path(folder) / f"{prefix}{name}.jsonl.gz") for name in order}


def read_jsonl_rows(path: Path) -> list:
    """The rows (one JSON value a line) of a run's per-row output, ``<name>.jsonl.gz`` or an older run's
    ``<name>.jsonl``, either name given (:func:`jsonl_file`); blank lines are skipped."""
    path = jsonl_file(path)
    try:
        raw = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    except (EOFError, zlib.error, gzip.BadGzipFile) as exc:
        raise ValueError(f"{path}: not a readable gzip file ({exc})") from None
    rows = []
    for n, line in enumerate(raw.decode("utf-8").split("\n"), 1):  # (JSON escapes every \n it holds)
        if line.strip():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as exc:
                raise ValueError(f"{path}:{n}: not valid JSON ({exc.msg})") from None
    return rows


def tune_malloc() -> bool:
    """Keep freed memory in the process instead of handing it back to the OS after every step (glibc:
    mmap threshold 32 MiB, its maximum; trim threshold 2 GiB; 256 MiB top pad). Training's
    activations are freed and reallocated every step; with glibc's defaults many came back as fresh
    pages, each zeroed on first touch (~1.8 M minor page faults per UltraFeedback micro-batch,
    benchmarks/shifts.py measures the difference). Process-wide and idempotent; numbers do not change.
    Returns False where libc has no mallopt (not glibc)."""
    import ctypes

    try:
        mallopt = ctypes.CDLL("libc.so.6").mallopt
    except (OSError, AttributeError):
        return False
    m_trim_threshold, m_top_pad, m_mmap_threshold = -1, -2, -3
    return all(
        mallopt(option, value) == 1
        for option, value in (
            (m_mmap_threshold, 32 * 2**20),
            (m_trim_threshold, 2**31 - 1),
            (m_top_pad, 256 * 2**20),
        )
    )


def matmul_rate(n: int = 2048, repeat: int = 3) -> float:
    """This machine's float32 (n × n) @ (n × n) rate in GFLOP/s, best of ``repeat`` (the benchmarks'
    yardstick)."""
    import torch

    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b
    best = math.inf
    for _ in range(repeat):
        t0 = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - t0)
    return 2 * n**3 / best / 1e9


def train_flops(
    objective: str,
    n_body: int,
    n_head: int,
    tokens: int,
    response_tokens: int,
    *,
    reference: bool = True,
    reference_tokens: int | None = None,
) -> float:
    """Useful FLOPs of one training pass over ``tokens`` tokens: 6 · N_body per token (forward +
    backward), plus, for objectives that read the LM's log-probs (IM-RMs), 6 · N_head per response
    position and (``reference``) 2 · (both) for the one reference pass, over ``reference_tokens``
    (default ``tokens``). EX-RMs never form logits. Attention-score FLOPs are left out (see
    :func:`attention_flops`). Counted on whole sequences, this is the work of a trainer that runs
    each; the scorer runs a prompt once for all its responses when that saves tokens
    (lm_probes.lm.scoring's cached mode), so fewer tokens run: benchmarks/_limit.TokensRun counts
    them, and the formula on those is what the profiled products check (``flop_check``)."""
    if objective.startswith("ex_rm"):
        return 6.0 * n_body * tokens
    ref_tokens = tokens if reference_tokens is None else reference_tokens
    train = 6.0 * (n_body * tokens + n_head * response_tokens)
    return train + (2.0 * (n_body * ref_tokens + n_head * response_tokens) if reference else 0.0)


def attention_flops(lengths, n_layers: int, width: int, *, passes: float = 3.0, keys=None) -> float:
    """Attention-score FLOPs (QKᵀ and AV, causal halves not exploited: 4 · T · S · width per layer for
    T queries attending S keys; S = T, whole sequences, unless ``keys`` gives each row's S) of rows of
    ``lengths`` queries, times ``passes`` (3 = forward + backward)."""
    keys = lengths if keys is None else keys
    return passes * sum(4.0 * T * S * width * n_layers for T, S in zip(lengths, keys, strict=True))


class Registry(dict):
    """Named entries, each defined once (the reward types, the transformations): ``add`` refuses a
    second definition of a name unless ``replace``; ``lookup`` names the registered ones when it fails."""

    def __init__(self, kind: str):
        super().__init__()
        self.kind = kind

    def add(self, item, *, replace: bool = False):
        if item.name in self and not replace:
            raise ValueError(f"{self.kind} {item.name!r} is already registered")
        self[item.name] = item
        return item

    def lookup(self, name: str):
        if name not in self:
            raise ValueError(f"unknown {self.kind} {name!r}; registered: {', '.join(self)}")
        return self[name]


LOCK = ".rmgap.lock"  # (a run folder's lock file: held while a run writes there)
_HELD: dict = {}  # folder → the lock this process holds there (released when it exits)


def claim_folder(out: Path, outputs: tuple[str, ...], *, resume: bool, overwrite: bool) -> Path:
    """Make ``out`` this run's folder before any work, or refuse in one line: a path that is a file or
    cannot be written; a folder that holds anything unless ``resume`` (continue it) or ``overwrite``
    (replace it: only where everything in it matches the glob patterns of ``outputs``, what the command
    writes, which are then deleted); a folder another live run holds (a lock, held while this process
    lives; of a distributed launch, only the main process claims)."""
    import fcntl

    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {out}: a file, not a folder")
    present = sorted(p.name for p in out.iterdir() if p.name != LOCK) if out.is_dir() else []
    if present and not (resume or overwrite):
        shown = ", ".join(present[:4]) + (", …" if len(present) > 4 else "")
        raise ValueError(
            f"--out {out}: holds a run ({shown}); --resume continues it, --overwrite replaces it, "
            "or give another --out"
        )
    foreign = [n for n in present if not any(Path(n).match(g) for g in outputs)]
    if overwrite and foreign:
        raise ValueError(
            f"--out {out}: --overwrite, but it holds files no run writes ({', '.join(foreign[:4])})"
        )
    if out.resolve() in _HELD:  # (a folder this process holds already: its own run)
        return out
    try:
        out.mkdir(parents=True, exist_ok=True)
        fd = os.open(out / LOCK, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as e:
        raise OSError(f"--out {out}: cannot be written ({e.strerror or e})") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "?"
        os.close(fd)
        raise ValueError(
            f"--out {out}: another run (pid {holder}) is writing here; wait for it or use another --out"
        ) from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, str(os.getpid()).encode(), 0)
    _HELD[out.resolve()] = fd
    for name in present if resume else ():  # a killed run's temporary files (no live writer: locked)
        if name.startswith(".") and ".tmp" in name and (out / name).is_file():
            (out / name).unlink()
    if overwrite:
        for name in present:
            target = out / name
            shutil.rmtree(target) if target.is_dir() else target.unlink()
    return out
