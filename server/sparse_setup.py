"""Server side of sparse prefill: pick and validate the profile, arm the vLLM plugin, verify it.

Before the engine starts: resolve the profile (``--profile``, else the shipped one whose
fingerprint matches the model, e.g. the YaRN x4 variant gets the profile calibrated on it), validate it against the model's fingerprint (errors name the file and the
field), create the shared counters file and export the plugin config that every vLLM process
inherits. After the engine started: check that vLLM really built our backend's layers, and
refuse to serve otherwise (never a silent dense fallback).
"""

from __future__ import annotations

import logging
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch

import profiles
from attention_backends.engine_stats import EngineStats
from attention_backends.head_plan import pattern_counts
from attention_backends.plugin_config import PluginConfig
from kvcache.head_policy import KvPlan, kv_policy_counts
from profiles.schema import Profile, ProfileError, check_fingerprint, fingerprint_from_dir, load_profile
from server.settings import ServerSettings

logger = logging.getLogger(__name__)

PROFILES_DIR = Path(profiles.__file__).resolve().parent
SHIPPED_PROFILE = PROFILES_DIR / "smollm2-135m-instruct.json"
"""The default model's profile, at its native RoPE: the retrieval-head split (:mod:`profiles.retrieval_heads`,
DuoAttention-style; F = 0.20 of the heads block-sparse top_k 32, every other one A-shape 64 + 256)."""
DUO_PROFILES_DIR = PROFILES_DIR / "duo"
"""The faster split (F = 0.10), same file names; never a default (one accuracy cell 3.9 points below dense)."""
RECALL_PROFILES_DIR = PROFILES_DIR / "recall"
"""Recall-target profiles (every sparse head keeps 95% of the attention mass; most heads dense), same file
names; the defaults until 2026-12-05; never a default."""


def shipped_profiles(folder: Path = PROFILES_DIR) -> list[Path]:
    """Every profile shipped in ``folder`` (default ``profiles/``: the defaults, one per model and RoPE variant)."""
    return sorted(folder.glob("*.json"))


class SparseSetupError(RuntimeError):
    """Sparse prefill cannot be enabled as asked; the message says why and what to pass."""


@dataclass
class SparseSetup:
    """An armed plugin: its config, the profile and the counters the server reads."""

    config: PluginConfig
    profile: Profile
    stats: EngineStats
    _tmpdir: tempfile.TemporaryDirectory
    window_layers: bool = False

    @property
    def pattern_counts(self) -> dict[str, int]:
        return pattern_counts(self.profile)

    @property
    def windowed_layers(self) -> tuple[int, ...]:
        """Layers given a sliding-window KV spec of ``kv_threshold`` tokens (``--kv-window-layers``)."""
        if not (self.config.kv_policies and self.window_layers):
            return ()
        m = self.profile.model
        return KvPlan.from_profile(self.profile, range(m.num_q_heads)).windowed_layers(m.num_kv_heads)

    def engine_overrides(self) -> dict[str, object]:
        """Engine arguments the armed plugin needs: the windowed layers' sliding window, no prefix caching.

        The window goes through vLLM's ``hf_overrides`` as per-layer ``layer_types`` (vLLM's Llama
        reads them), so vLLM's own KV-cache manager frees those layers' old blocks. Prefix caching
        is turned off: a prefix-cache hit would start a request past the window with no history.
        """
        windowed = set(self.windowed_layers)
        if not windowed:
            return {}
        types = ["sliding_attention" if i in windowed else "full_attention" for i in range(self.profile.model.num_layers)]
        return {"hf_overrides": {"layer_types": types, "sliding_window": self.config.kv_threshold},
                "enable_prefix_caching": False}

    @property
    def kv_counts(self) -> dict[str, int] | None:
        """KV heads per decode policy, or ``None`` when compressed decode is off."""
        return kv_policy_counts(self.profile) if self.config.kv_policies else None

    def verify_engine(self) -> None:
        """Raise :class:`SparseSetupError` unless the engine built the sparse backend's layers."""
        if self.stats.active_layers == 0:
            raise SparseSetupError(
                "vLLM did not select the sparse-serve attention backend (no layer was built with "
                "it; is the vllm.general_plugins entry point installed, or VLLM_PLUGINS excluding "
                "it?); serve with --no-sparse to run dense")
        counts = ", ".join(f"{n} {p}" for p, n in self.pattern_counts.items())
        logger.info("attention backend: sparse-serve SparseCPUAttentionBackend (wraps CPU_ATTN) on "
                    "%d layers, reading vLLM's %r KV-cache layout; profile %s: %s heads; sparse for prefill "
                    "context >= %d tokens", self.stats.active_layers, self.stats.cache_layout, self.config.profile,
                    counts, self.config.threshold)
        if self.kv_counts is not None:
            kv = ", ".join(f"{n} {p}" for p, n in self.kv_counts.items())
            windowed = self.windowed_layers
            pool = (f"{len(windowed)} windowed layers keep a {self.config.kv_threshold}-token window in vLLM's "
                    f"pool (layers {list(windowed)}; prefix caching off)" if windowed
                    else "vLLM's pool still holds the full KV")
            logger.info("compressed decode: KV heads %s; for context >= %d tokens; %s", kv,
                        self.config.kv_threshold, pool)

    def close(self) -> None:
        PluginConfig.clear_env()
        self._tmpdir.cleanup()


def resolve_profile(settings: ServerSettings, model_dir: Path) -> tuple[Path, Profile]:
    """The profile to serve ``model_dir`` with, validated; :class:`SparseSetupError` / ``ProfileError``."""
    model = fingerprint_from_dir(model_dir)
    if settings.profile is not None:
        profile = load_profile(settings.profile)
        check_fingerprint(profile, model, str(settings.profile))
        return settings.profile, profile
    errors = []
    for path in shipped_profiles():
        shipped = load_profile(path)
        try:
            check_fingerprint(shipped, model, str(path))
        except ProfileError as exc:
            errors.append(str(exc))
            continue
        return path, shipped
    raise SparseSetupError(
        f"no sparse profile for {model_dir}: no shipped profile matches it\n" + "\n".join(errors)
        + "\nbuild one with `sparse-serve profile build --model DIR` and pass --profile, or pass --no-sparse")


def arm(settings: ServerSettings, model_dir: Path) -> SparseSetup | None:
    """Validate the profile and export the plugin config; ``None`` when serving dense."""
    if settings.kv_window_layers and not settings.kv_policies:
        raise SparseSetupError("--kv-window-layers needs --kv-policies")
    if not settings.sparse:
        if settings.kv_policies:
            raise SparseSetupError("--kv-policies needs the sparse backend; drop --no-sparse or --kv-policies")
        PluginConfig.clear_env()
        logger.info("attention backend: vLLM default (dense), --no-sparse")
        return None
    if torch.cuda.is_available():
        raise SparseSetupError("the sparse prefill backend wraps vLLM's CPU attention only in this "
                               "version (no CUDA FlashAttention wrapper yet); pass --no-sparse on GPUs")
    path, profile = resolve_profile(settings, model_dir)
    tmpdir = tempfile.TemporaryDirectory(prefix="sparse-serve-")
    stats_path = Path(tmpdir.name) / "engine-stats.bin"
    stats = EngineStats(stats_path, profile.model.num_layers, create=True)
    config = PluginConfig(profile=path.resolve(), threshold=settings.sparse_threshold,
                          kv_policies=settings.kv_policies, kv_threshold=settings.kv_threshold,
                          stats_path=stats_path)
    config.to_env()
    setup = SparseSetup(config=config, profile=profile, stats=stats, _tmpdir=tmpdir,
                        window_layers=settings.kv_window_layers)
    if settings.kv_window_layers and not setup.windowed_layers:
        logger.warning("--kv-window-layers: no layer of profile %s has all its KV heads compressed; "
                       "vLLM's pool keeps the full KV of every layer", path)
    return setup
