"""The fused label-stream objective of kernel attention, compiled from C on first use (CPU).

:func:`label_stream_mse` computes what
:func:`iclab.models.kernel_label_stream.label_stream_mse` computes — the mean squared error of
the predictions and its gradient in ``M`` and ``c`` — with the per-prompt recursion written in C
(``label_stream_kernel.c``, next to this file): a block of prompts' covariates, label slots and
scores of every layer and head stay in cache, each score is formed, activated and used in one
place, and every loop runs over a block's prompts in vector instructions. The torch pass walks
the same recursion as element-wise torch operations over whole chunks, each one a trip through
memory.

**Building.** The source is compiled once per machine with the C compiler (``$CC``, else
``cc``; ``-O3 -march=native``) into ``$ICLAB_CACHE_DIR/kernels`` (default
``~/.cache/iclab/kernels``), under a name hashing the source, compiler and CPU, written to a
temporary file and renamed (concurrent workers cannot see half a library), readable by all
(a shared cache). Without ``-march=native`` where that fails; a cached file that does not load
is rebuilt once. Where there is no compiler or the build fails, :func:`library` returns None
after one warning and the caller uses the torch pass; ``ICLAB_COMPILED_KERNELS=0`` turns the
compiled path off.

**Arguments.** The C reads raw memory: :func:`rejects` says why a call cannot be taken (other
dtypes or devices, shapes that only broadcast, an empty batch, unknown activations), and
:func:`iclab.models.kernel_label_stream.label_stream_mse` then runs the torch pass.

**Threads and determinism.** The batch is cut into fixed units of :data:`UNIT` prompts, run on
``torch.get_num_threads()`` Python threads (the C call releases the GIL); each unit writes its
own float64 partial sums, added in unit order: the result does not depend on the thread count.
A forked child starts its own threads.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
import threading
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch

__all__ = ["ACTIVATION_CODES", "UNIT", "label_stream_mse", "library"]

SOURCE = Path(__file__).with_name("label_stream_kernel.c")
UNIT = 512
"""Prompts per C call (all ensemble members): a unit's partial sums are one float64 array.
Small enough that a quick run's batch (2000 prompts) keeps two threads busy."""
ACTIVATION_CODES = {"linear": 0, "relu": 1, "exp": 2, "softmax": 3}
_FLAG_SETS = (["-O3", "-march=native"], ["-O3"])
_TYPES = {torch.float32: ("float", ctypes.c_float), torch.float64: ("double", ctypes.c_double)}

_lock = threading.Lock()
_state: dict[str, object] = {}
_pools: dict[int, ThreadPoolExecutor] = {}


def cache_dir() -> Path:
    root = os.environ.get("ICLAB_CACHE_DIR")
    if root:
        return Path(root) / "kernels"
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "iclab" / "kernels"


def _cpu_signature() -> str:
    """The CPU model and feature flags (``-march=native`` code runs only where they match)."""
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return platform.processor()
    keep = [ln for ln in lines if ln.split(":")[0].strip() in ("model name", "flags", "Features")]
    return "\n".join(dict.fromkeys(keep))


def _build(compiler: str) -> Path:
    """The library for this source, compiler and CPU: the cached one if any flag set has been
    built before (so a flag set that failed once is not retried by every process), else the
    first flag set that compiles, written to a temporary file and renamed into place."""
    source = SOURCE.read_bytes()
    version = subprocess.run(
        [compiler, "--version"], capture_output=True, text=True, check=True, timeout=60
    ).stdout
    parts = [source, version.encode(), platform.machine().encode(), _cpu_signature().encode()]
    targets = []
    for flags in _FLAG_SETS:
        key = hashlib.sha256(b"\0".join([*parts, " ".join(flags).encode()])).hexdigest()[:20]
        targets.append((flags, cache_dir() / f"label_stream_{key}.so"))
    for _, target in targets:
        if target.exists():
            return target
    errors = []
    for flags, target in targets:
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(suffix=".so.tmp", dir=target.parent)
        os.close(fd)
        cmd = [compiler, *flags, "-std=gnu11", "-fPIC", "-shared", str(SOURCE), "-o", tmp]
        try:
            done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
            if done.returncode == 0:
                os.chmod(tmp, 0o755)  # readable by every user of a shared cache
                os.replace(tmp, target)
                return target
            errors.append(f"{' '.join(cmd)}: {done.stderr.strip()[-300:]}")
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
    raise RuntimeError("; ".join(errors))


def _load(path: Path) -> ctypes.CDLL:
    lib = ctypes.CDLL(str(path))
    i64, ptr = ctypes.c_int64, ctypes.c_void_p
    for name, real in _TYPES.values():
        fn = getattr(lib, f"label_stream_mse_{name}")
        fn.restype = ctypes.c_int
        fn.argtypes = [
            *(ptr, i64, i64, i64, i64),  # x
            *(ptr, i64, i64, i64),  # r
            *(ptr, i64, i64),  # q
            *(ptr, i64, i64),  # target
            *(ptr, ptr, ptr),  # M, c, heads
            *(i64,) * 7,  # E, b0, b1, N, d, L, H
            real,
            real,
            ctypes.c_int,  # sign, grad_scale, grad
            *(ptr, ptr, ptr),  # loss, grad_M, grad_c
        ]
    return lib


def library() -> ctypes.CDLL | None:
    """The compiled kernel, built on first call; None (after one warning) where it cannot be
    built, or when ``ICLAB_COMPILED_KERNELS=0``."""
    if os.environ.get("ICLAB_COMPILED_KERNELS", "1").strip() == "0":
        return None
    with _lock:
        if "lib" not in _state:
            compiler = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
            try:
                if not compiler:
                    raise RuntimeError("no C compiler found (set $CC)")
                path = _build(compiler)
                try:
                    _state["lib"] = _load(path)
                except OSError:  # a damaged cached file: build it again, once
                    path.unlink(missing_ok=True)
                    _state["lib"] = _load(_build(compiler))
            except (OSError, RuntimeError, subprocess.SubprocessError) as err:
                _state["lib"] = None
                warnings.warn(
                    f"iclab: the compiled label stream could not be built ({err}); kernel "
                    "attention trains with the torch pass (the same function to rounding, slower)",
                    RuntimeWarning,
                    stacklevel=2,
                )
    return _state["lib"]  # type: ignore[return-value]


def supports(x: torch.Tensor) -> bool:
    """Whether :func:`label_stream_mse` takes these covariates (CPU, float32 or float64)."""
    return x.device.type == "cpu" and x.dtype in _TYPES and library() is not None


def _pool(threads: int) -> ThreadPoolExecutor:
    """A pool of ``threads`` threads of this process."""
    with _lock:
        if threads not in _pools:
            _pools[threads] = ThreadPoolExecutor(threads, thread_name_prefix="iclab-label-stream")
        return _pools[threads]


def _after_fork_in_child() -> None:
    """A forked child inherits the pools but not their threads (it would wait on them for
    ever), and the lock possibly held by a thread of the parent: start afresh."""
    global _lock
    _lock = threading.Lock()
    _pools.clear()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


def rejects(
    x: torch.Tensor,
    r: torch.Tensor,
    q: torch.Tensor,
    target: torch.Tensor,
    M: torch.Tensor,
    c: torch.Tensor,
    heads: tuple[str, ...],
) -> str | None:
    """Why :func:`label_stream_mse` cannot take these arguments (None: it can). The C reads
    raw memory, so shapes must match exactly (no broadcasting), and all tensors must be CPU
    tensors of one dtype, float32 or float64; and the library must have been built here."""
    tensors = {"x": x, "r": r, "q": q, "target": target, "M": M, "c": c}
    if x.dtype not in _TYPES:
        return f"dtype {x.dtype} (float32 or float64 only)"
    for name, t in tensors.items():
        if t.device.type != "cpu" or t.dtype != x.dtype:
            return f"{name} is {t.dtype} on {t.device}, not {x.dtype} on the CPU"
    if x.dim() != 4 or x.shape[0] < 1 or x.shape[1] < 1 or x.shape[2] < 2 or x.shape[3] < 1:
        return f"x of shape {tuple(x.shape)}, not (E, B ≥ 1, n + 1 ≥ 2, d)"
    E, B, N, d = x.shape
    if M.dim() != 5 or M.shape[0] != E or M.shape[3:] != (d, d) or M.shape[2] != len(heads):
        return f"M of shape {tuple(M.shape)} for {len(heads)} heads, not (E, L, H, d, d)"
    expected = {"r": (E, B, N - 1), "q": (E, B), "target": (E, B), "c": tuple(M.shape[:3])}
    for name, shape in expected.items():
        if tuple(tensors[name].shape) != shape:
            return f"{name} of shape {tuple(tensors[name].shape)}, not {shape}"
    unknown = [h for h in heads if h not in ACTIVATION_CODES]
    if unknown:
        return f"head activations {unknown} (known: {', '.join(ACTIVATION_CODES)})"
    if library() is None:
        return "no C compiler built it here (see iclab.models.compiled_label_stream)"
    return None


def label_stream_mse(
    x: torch.Tensor,
    r: torch.Tensor,
    q: torch.Tensor,
    target: torch.Tensor,
    M: torch.Tensor,
    c: torch.Tensor,
    heads: tuple[str, ...],
    sign: float,
    grad: bool,
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None, bool]:
    """The loss per member (E,), ``∂loss/∂M``, ``∂loss/∂c`` (None without ``grad``) and the
    overflow flag; arguments as :func:`iclab.models.kernel_label_stream.label_stream_mse`."""
    reason = rejects(x, r, q, target, M, c, heads)  # the boundary of raw memory checks itself
    if reason is not None:
        raise ValueError(f"label_stream_mse (compiled): {reason}")
    lib = library()
    name, real = _TYPES[x.dtype]
    fn = getattr(lib, f"label_stream_mse_{name}")
    E, B, N, d = x.shape
    L, H = M.shape[1], M.shape[2]
    Mc = M.detach().contiguous()
    cc = c.detach().contiguous()
    codes = torch.tensor([ACTIVATION_CODES[h] for h in heads], dtype=torch.int32)
    units = max(1, -(-B // UNIT))
    f64 = torch.float64
    loss = torch.zeros(units, E, dtype=f64)
    gM = torch.zeros(units, E, L, H, d, d, dtype=f64) if grad else loss
    gc = torch.zeros(units, E, L, H, dtype=f64) if grad else loss

    def run(u: int) -> int:
        b0, b1 = u * UNIT, min(B, (u + 1) * UNIT)
        return fn(
            x.data_ptr(), *x.stride(),
            r.data_ptr(), *r.stride(),
            q.data_ptr(), *q.stride(),
            target.data_ptr(), *target.stride(),
            Mc.data_ptr(), cc.data_ptr(), codes.data_ptr(),
            E, b0, b1, N, d, L, H,
            real(sign), real(1.0 / B), int(grad),
            loss[u].data_ptr(),
            gM[u].data_ptr() if grad else None,
            gc[u].data_ptr() if grad else None,
        )  # fmt: skip

    threads = max(1, min(torch.get_num_threads(), units))
    codes_out = list(
        _pool(threads).map(run, range(units)) if threads > 1 else map(run, range(units))
    )
    if any(code < 0 for code in codes_out):
        raise MemoryError("label_stream_mse: the compiled kernel could not allocate its block")
    overflow = any(code > 0 for code in codes_out)
    dtype = x.dtype
    total = loss.sum(0).div_(B).to(dtype)
    if not grad:
        return total, None, None, overflow
    return total, gM.sum(0).to(dtype), gc.sum(0).to(dtype), overflow
