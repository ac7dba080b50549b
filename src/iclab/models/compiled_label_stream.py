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
temporary file and renamed (concurrent workers cannot see half a library). Where there is no
compiler or the build fails, :func:`library` returns None after one warning and the caller uses
the torch pass; ``ICLAB_COMPILED_KERNELS=0`` turns the compiled path off.

**Threads and determinism.** The batch is cut into fixed units of :data:`UNIT` prompts, run on
``torch.get_num_threads()`` Python threads (the C call releases the GIL); each unit writes its
own float64 partial sums, added in unit order: the result does not depend on the thread count.
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
UNIT = 1024
"""Prompts per C call (all ensemble members): a unit's partial sums are one float64 array."""
ACTIVATION_CODES = {"linear": 0, "relu": 1, "exp": 2, "softmax": 3}
_FLAG_SETS = (["-O3", "-march=native"], ["-O3"])
_TYPES = {torch.float32: ("float", ctypes.c_float), torch.float64: ("double", ctypes.c_double)}

_lock = threading.Lock()
_state: dict[str, object] = {}
_pools: dict[tuple[int, int], ThreadPoolExecutor] = {}


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
    source = SOURCE.read_bytes()
    version = subprocess.run(
        [compiler, "--version"], capture_output=True, text=True, check=True, timeout=60
    ).stdout
    errors = []
    for flags in _FLAG_SETS:
        key = hashlib.sha256(
            b"\0".join(
                [
                    source,
                    version.encode(),
                    " ".join(flags).encode(),
                    platform.machine().encode(),
                    _cpu_signature().encode(),
                ]
            )
        ).hexdigest()[:20]
        target = cache_dir() / f"label_stream_{key}.so"
        if target.exists():
            return target
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(suffix=".so", dir=target.parent)
        os.close(fd)
        cmd = [compiler, *flags, "-std=gnu11", "-fPIC", "-shared", str(SOURCE), "-o", tmp]
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
        if done.returncode == 0:
            os.replace(tmp, target)
            return target
        os.unlink(tmp)
        errors.append(f"{' '.join(cmd)}: {done.stderr.strip()[-300:]}")
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
                    "attention trains with the torch pass (same results, slower)",
                    RuntimeWarning,
                    stacklevel=2,
                )
    return _state["lib"]  # type: ignore[return-value]


def supports(x: torch.Tensor) -> bool:
    """Whether :func:`label_stream_mse` takes these covariates (CPU, float32 or float64)."""
    return x.device.type == "cpu" and x.dtype in _TYPES and library() is not None


def _pool(threads: int) -> ThreadPoolExecutor:
    """A pool of ``threads`` threads of this process (keyed by pid too: a forked child inherits
    the parent's pool objects but not their threads, and would wait on them for ever)."""
    key = (os.getpid(), threads)
    with _lock:
        if key not in _pools:
            _pools[key] = ThreadPoolExecutor(threads, thread_name_prefix="iclab-label-stream")
        return _pools[key]


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
    lib = library()
    if lib is None:
        raise RuntimeError("the compiled label stream is not available")
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
    tensors = (x, r, q, target)

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

    for t in tensors:
        if t.dtype != x.dtype or t.device.type != "cpu":
            raise ValueError("label_stream_mse: tensors must share x's dtype, on the CPU")
    threads = max(1, min(torch.get_num_threads(), units))
    results = list(_pool(threads).map(run, range(units))) if threads > 1 else map(run, range(units))
    codes_out = list(results)
    if any(code < 0 for code in codes_out):
        raise MemoryError("label_stream_mse: the compiled kernel could not allocate its block")
    overflow = any(code > 0 for code in codes_out)
    dtype = x.dtype
    total = loss.sum(0).div_(B).to(dtype)
    if not grad:
        return total, None, None, overflow
    return total, gM.sum(0).to(dtype), gc.sum(0).to(dtype), overflow
