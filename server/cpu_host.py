"""Defaults for serving on a CPU host (vLLM's CPU backend): the dtype and the OpenMP core binding.

Both were measured on the 2-core development machine (AVX2, no AVX-512), one 3,180-token dense
prefill of the default model:
- float32 22.1 s vs bfloat16 83.6 s (each engine bound to its own core, same minute): without
  native bf16 instructions (`avx512_bf16` / `amx_bf16`) every bf16 matmul converts, so `auto`
  picks float32 there and bfloat16 where the CPU has them (and leaves the model's dtype on CUDA).
- 10.3 s with the engine's threads on both cores vs 22.1 s on one: vLLM's own binding reserves
  one core for the HTTP front end, half of a 2-core host. On small hosts (<= 4 CPUs) `auto`
  binds every CPU; on larger ones it keeps vLLM's NUMA-aware binding.
"""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path

logger = logging.getLogger(__name__)

BIND_ENV = "VLLM_CPU_OMP_THREADS_BIND"
SMALL_HOST_CPUS = 4
BIND_KEYWORDS = ("auto", "all", "vllm")
_CPU_LIST = re.compile(r"^[0-9]+(-[0-9]+)?(,[0-9]+(-[0-9]+)?)*$")


def check_bind(value: str, ranks: int) -> None:
    """Raise ValueError unless `value` is a keyword or one CPU list per engine rank ('0-3|4-7')."""
    if value in BIND_KEYWORDS:
        return
    groups = value.split("|")
    if not all(_CPU_LIST.match(g) for g in groups):
        raise ValueError(f"{value!r} is not auto, all, vllm or CPU lists like '0-3' or '0,1|2,3'")
    if len(groups) != ranks:
        raise ValueError(f"{value!r} has {len(groups)} CPU list(s) for {ranks} engine rank(s) "
                         "(tensor x pipeline parallel size); separate them with '|'")


def _first_cpu_field(cpuinfo: Path, name: str) -> str | None:
    """The value of the first ``name`` line of ``cpuinfo`` (``None`` when absent or unreadable)."""
    try:
        for line in cpuinfo.read_text().splitlines():
            if line.startswith(name):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return None


def cpu_flags(cpuinfo: Path = Path("/proc/cpuinfo")) -> set[str]:
    """The instruction-set flags of the first CPU (empty when unreadable)."""
    return set((_first_cpu_field(cpuinfo, "flags") or "").split())


def cpu_model(cpuinfo: Path = Path("/proc/cpuinfo")) -> str:
    """The first CPU's model name with its widest vector ISA (``amx``, ``avx512``, ``avx2``), for benchmark records."""
    flags = cpu_flags(cpuinfo)
    isa = next((i for i, f in (("amx", "amx_bf16"), ("avx512", "avx512f"), ("avx2", "avx2")) if f in flags), "other")
    return f"{_first_cpu_field(cpuinfo, 'model name') or 'unknown CPU'} ({isa})"


def resolve_dtype(requested: str, cuda: bool, flags: set[str]) -> str:
    """The dtype to give vLLM: `requested` unless it is `auto` on a CPU host."""
    if requested != "auto" or cuda:
        return requested
    return "bfloat16" if flags & {"avx512_bf16", "amx_bf16"} else "float32"


def _span(cores: list[int]) -> str:
    if cores == list(range(cores[0], cores[-1] + 1)) and len(cores) > 1:
        return f"{cores[0]}-{cores[-1]}"
    return ",".join(map(str, cores))


def omp_bind(setting: str, cores: list[int], ranks: int) -> str | None:
    """The `VLLM_CPU_OMP_THREADS_BIND` value for `setting` (None: leave vLLM's own).

    `cores`: the CPUs this process may run on; `ranks`: engine worker processes (TP x PP), one
    `|`-separated group each. With more ranks than cores, ranks share cores round-robin.
    """
    if setting == "vllm" or (setting == "auto" and len(cores) > SMALL_HOST_CPUS):
        return None
    if setting not in ("auto", "all"):
        return setting
    cores = sorted(cores)
    if ranks > len(cores):
        return "|".join(str(cores[r % len(cores)]) for r in range(ranks))
    per = len(cores) // ranks
    return "|".join(_span(cores[r * per:(r + 1) * per]) for r in range(ranks))


def apply_cpu_binding(setting: str, ranks: int) -> None:
    """Set the binding for the engine processes about to be spawned (an explicit env var wins)."""
    if BIND_ENV in os.environ:
        logger.info("CPU binding from %s=%s", BIND_ENV, os.environ[BIND_ENV])
        return
    value = omp_bind(setting, list(os.sched_getaffinity(0)), ranks)
    if value is None:
        logger.info("CPU binding: vLLM's own (--cpu-bind %s)", setting)
        return
    os.environ[BIND_ENV] = value
    logger.info("CPU binding: engine OpenMP threads on cores %s (--cpu-bind %s)", value, setting)
