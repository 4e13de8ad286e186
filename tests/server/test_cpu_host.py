"""CPU-host defaults: dtype by instruction set, OpenMP core binding per engine rank (no engine)."""

from __future__ import annotations

import os

import pytest

from server.cpu_host import BIND_ENV, apply_cpu_binding, check_bind, cpu_flags, cpu_model, omp_bind, resolve_dtype


def test_cpu_flags_reads_first_flags_line(tmp_path):
    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nflags\t\t: fpu avx2 fma\n\nprocessor\t: 1\nflags\t\t: other\n")
    assert cpu_flags(info) == {"fpu", "avx2", "fma"}
    assert cpu_flags(tmp_path / "missing") == set()


def test_cpu_model_names_the_widest_vector_isa(tmp_path):
    info = tmp_path / "cpuinfo"
    info.write_text("model name\t: Some Xeon\nflags\t\t: avx2 avx512f amx_bf16\n")
    assert cpu_model(info) == "Some Xeon (amx)"
    info.write_text("model name\t: Some EPYC\nflags\t\t: avx2 fma\n")
    assert cpu_model(info) == "Some EPYC (avx2)"
    assert cpu_model(tmp_path / "missing") == "unknown CPU (other)"


@pytest.mark.parametrize("requested,cuda,flags,expected", [
    ("auto", False, {"avx2"}, "float32"),
    ("auto", False, {"avx2", "avx512_bf16"}, "bfloat16"),
    ("auto", False, {"amx_bf16"}, "bfloat16"),
    ("auto", True, set(), "auto"),
    ("bfloat16", False, {"avx2"}, "bfloat16"),
    ("float32", True, set(), "float32"),
])
def test_resolve_dtype(requested, cuda, flags, expected):
    assert resolve_dtype(requested, cuda, flags) == expected


@pytest.mark.parametrize("setting,cores,ranks,expected", [
    ("auto", [0, 1], 1, "0-1"),          # small host: every core, none reserved
    ("auto", [0, 1], 3, "0|1|0"),        # more ranks than cores: shared round-robin
    ("auto", list(range(16)), 1, None),  # large host: vLLM's NUMA-aware binding
    ("all", list(range(8)), 2, "0-3|4-7"),
    ("all", [0, 2, 5], 1, "0,2,5"),
    ("all", [3], 1, "3"),
    ("vllm", [0, 1], 1, None),
    ("0|1", [0, 1], 2, "0|1"),
])
def test_omp_bind(setting, cores, ranks, expected):
    assert omp_bind(setting, cores, ranks) == expected


@pytest.mark.parametrize("value,ranks,error", [
    ("auto", 3, None), ("0-3,6", 1, None), ("0|1|0", 3, None),
    ("0|1", 3, "2 CPU list(s) for 3 engine rank(s)"), ("0-", 1, "not auto, all, vllm"),
    ("cores", 1, "not auto, all, vllm"), ("", 1, "not auto, all, vllm"),
])
def test_check_bind(value, ranks, error):
    if error is None:
        check_bind(value, ranks)
    else:
        with pytest.raises(ValueError, match=error.replace("(", r"\(").replace(")", r"\)")):
            check_bind(value, ranks)


def test_apply_cpu_binding_respects_explicit_env(monkeypatch):
    monkeypatch.setenv(BIND_ENV, "nobind")
    apply_cpu_binding("all", 1)
    assert os.environ[BIND_ENV] == "nobind"
    monkeypatch.delenv(BIND_ENV)
    monkeypatch.setattr("os.sched_getaffinity", lambda pid: {0, 1})
    apply_cpu_binding("all", 1)
    assert os.environ[BIND_ENV] == "0-1"
