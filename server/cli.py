"""The `sparse-serve` console script: `serve`, `prepare-model` and the tools of the other packages."""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
import types
import typing
from pathlib import Path
from typing import Any, Sequence

from pydantic import SecretStr, ValidationError

from server.model_prep import ModelPrepError, default_cache_dir, ensure_model
from server.settings import ServerSettings


def _field_type(annotation: Any) -> tuple[Any, tuple[Any, ...] | None]:
    """(argparse type, choices) for a settings field annotation."""
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType) and len(args) == 1:
        return _field_type(args[0])
    if origin is typing.Literal:
        return type(args[0]), tuple(args)
    if annotation is SecretStr:
        return str, None
    return annotation, None


def add_settings_arguments(parser: argparse.ArgumentParser, model: type[ServerSettings]) -> None:
    """One flag per settings field, help text from the field description, env var named in it."""
    prefix = model.model_config.get("env_prefix", "")
    for name, field in model.model_fields.items():
        flag = "--" + name.replace("_", "-")
        env = f"{prefix}{name.upper()}"
        default = field.default
        shown = "unset" if default is None else default
        help_text = f"{field.description} [env {env}; default {shown}]"
        ftype, choices = _field_type(field.annotation)
        if ftype is bool:
            parser.add_argument(flag, action=argparse.BooleanOptionalAction,
                                default=argparse.SUPPRESS, help=help_text)
        else:
            parser.add_argument(flag, type=ftype, choices=choices, default=argparse.SUPPRESS,
                                help=help_text, metavar=None if choices else name.upper())


def settings_from_args(args: argparse.Namespace) -> ServerSettings:
    """Settings from the given flags; anything not given comes from env vars or defaults."""
    given = {k: v for k, v in vars(args).items() if k in ServerSettings.model_fields}
    return ServerSettings(**given)


def _cmd_serve(args: argparse.Namespace) -> int:
    from server.launch import serve

    settings = settings_from_args(args)
    return serve(settings)


def _cmd_prepare_model(args: argparse.Namespace) -> int:
    from server.rope_variant import yarn_variant

    path = ensure_model(args.cache_dir)
    print(yarn_variant(path, args.context) if args.context else path)
    return 0


# Subcommands provided by the other packages: (name, module with add_arguments/run, summary).
_TOOLS = [
    ("profile", "profiles.cli", "build, show or check a per-head sparse attention profile"),
    ("loadtest", "loadtests.cli", "load-test an OpenAI-compatible server on a loopback address"),
    ("eval", "accuracy.cli", "RULER-style accuracy suite against an OpenAI-compatible server"),
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sparse-serve",
        description="Long-context LLM inference server with sparse attention over vLLM.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    serve = sub.add_parser("serve", help="start the OpenAI-compatible HTTP server",
                           description="Start the OpenAI-compatible HTTP server over a vLLM engine.")
    add_settings_arguments(serve, ServerSettings)
    serve.set_defaults(func=_cmd_serve)

    prep = sub.add_parser("prepare-model", help="build the default model folder (idempotent)",
                          description="Fetch, dequantize and cache the default model "
                          "(SmolLM2-135M-Instruct); print its folder.")
    prep.add_argument("--cache-dir", type=Path, default=None,
                      help=f"cache root [env SPARSE_SERVE_CACHE_DIR; default {default_cache_dir()}]")
    prep.add_argument("--context", type=int, default=None, metavar="TOKENS",
                      help="also make the YaRN-extended variant covering TOKENS (factor: next power of 2 "
                      "over the native 8K; weights shared by symlinks) and print that folder instead")
    prep.set_defaults(func=_cmd_prepare_model)

    for name, module, summary in _TOOLS:
        tool = importlib.import_module(module)
        tool_parser = sub.add_parser(name, help=summary, description=summary)
        tool.add_arguments(tool_parser)
        tool_parser.set_defaults(func=tool.run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        return args.func(args)
    except ValidationError as exc:
        errors = "; ".join(
            f"--{'.'.join(str(p) for p in e['loc']).replace('_', '-')}: {e['msg']}"
            for e in exc.errors()
        )
        print(f"sparse-serve: invalid settings: {errors}", file=sys.stderr)
        return 2
    except ModelPrepError as exc:
        print(f"sparse-serve: could not prepare the model: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
