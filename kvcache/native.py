"""Builds and loads the C decode kernel of the compressed KV stores (``kvcache/csrc/*.c``).

The kernel is plain C with no PyTorch headers, so a build takes about a second: gcc compiles it
once per source text (``csrc/*.c``, ``*.h``), flags and CPU into ``$SPARSE_SERVE_CACHE_DIR/native`` (default
``~/.cache/sparse-serve/native``) and :mod:`ctypes` loads it. Where it cannot be built (no C
compiler, not x86/ARM Linux) :func:`load_kernel` returns ``None`` and says why once in the log;
the stores then run their PyTorch path (same math, slower), which the engine counts.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import logging
import os
import platform
import shutil
import subprocess
import tempfile
from pathlib import Path

logger = logging.getLogger(__name__)

CSRC = Path(__file__).parent / "csrc"  # compressed_attend.c (entry points), selection.c, step.h, dots.h, vec_math.h
FLAGS = ("-O3", "-fno-math-errno", "-std=gnu11", "-fopenmp", "-shared", "-fPIC")  # and -march (default: native)


def build_dir() -> Path:
    """``$SPARSE_SERVE_CACHE_DIR/native`` or ``~/.cache/sparse-serve/native``."""
    root = os.environ.get("SPARSE_SERVE_CACHE_DIR")
    return (Path(root) if root else Path.home() / ".cache" / "sparse-serve") / "native"


def _cpu_id() -> str:
    """The CPU's model and feature flags (``-march=native`` code is valid on that CPU only)."""
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return platform.processor()
    keep = [ln for ln in lines if ln.startswith(("model name", "flags", "Features"))]
    return "\n".join(sorted(set(keep)))


def library_path(compiler: str, march: str = "native") -> Path:
    """Where the library of this source, compiler, flags, target and CPU is (or will be) built."""
    sources = [p.read_text() for p in sorted(CSRC.iterdir()) if p.suffix in (".c", ".h")]
    key = hashlib.sha256("\0".join((*sources, compiler, *FLAGS, march, _cpu_id())).encode()).hexdigest()[:16]
    return build_dir() / f"compressed_attend-{key}.so"


def build(compiler: str | None = None, march: str = "native") -> Path:
    """Compile the kernel for ``-march=march`` if needed; the library's path. Raises ``RuntimeError`` with the
    compiler's message. Targets other than ``native`` (e.g. ``haswell``: AVX2 without AVX-512) let the tests
    run the kernel's narrower code paths on any x86 host."""
    cc = compiler or os.environ.get("CC") or shutil.which("gcc") or shutil.which("cc")
    if not cc:
        raise RuntimeError("no C compiler found (install gcc)")
    target = library_path(cc, march)
    if target.exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent) as tmp:  # build aside, then rename: safe across processes
        out = Path(tmp) / target.name
        try:
            sources = [str(p) for p in sorted(CSRC.glob("*.c"))]
            proc = subprocess.run([cc, *FLAGS, f"-march={march}", "-o", str(out), *sources, "-lm"], capture_output=True,
                                  text=True)
        except OSError as exc:
            raise RuntimeError(f"cannot run {cc}: {exc}") from exc
        if proc.returncode != 0:
            raise RuntimeError(f"{cc} failed on {CSRC.name}/*.c:\n{proc.stderr.strip()[-2000:]}")
        os.replace(out, target)
    return target


@functools.cache
def load_kernel(march: str = "native") -> ctypes.CDLL | None:
    """The loaded kernel library, or ``None`` (logged once) where it cannot be built or loaded."""
    try:
        lib = ctypes.CDLL(str(build(march=march)))
    except (RuntimeError, OSError) as exc:
        logger.warning("compressed KV decode kernel unavailable, stores use the PyTorch path: %s", exc)
        return None
    lib.compressed_attend_many.restype = ctypes.c_int
    return lib
