"""Shared command-line options: server selection and validation."""

from __future__ import annotations

import argparse

import pytest

from loadtests.cli_options import add_output_arguments, add_target_arguments, targets_from_args


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_target_arguments(parser)
    add_output_arguments(parser, "rows", "plots")
    return parser.parse_args(argv)


def test_default_single_server(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    (target,) = targets_from_args(parse([]))
    assert (target.label, target.base_url, target.api_key, target.model) == ("server", "http://127.0.0.1:8000", None, None)


def test_two_base_urls_or_compare(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "sk-x")
    labelled = targets_from_args(parse(["--base-url", "dense=http://127.0.0.1:1/v1", "--base-url", "sparse=http://localhost:2", "--model", "m"]))
    assert [(t.label, t.base_url, t.model, t.api_key) for t in labelled] == [
        ("dense", "http://127.0.0.1:1", "m", "sk-x"), ("sparse", "http://localhost:2", "m", "sk-x"),
    ]
    compared = targets_from_args(parse(["--compare", "http://127.0.0.1:1", "http://127.0.0.1:2"]))
    assert [t.label for t in compared] == ["A", "B"]
    assert compared[0].headers() == {"Authorization": "Bearer sk-x"}


def test_dense_prefill_marks_one_label_of_one_server() -> None:
    a, b = targets_from_args(parse(["--compare", "dense=http://127.0.0.1:1", "sparse=http://127.0.0.1:1",
                                    "--dense-prefill", "dense"]))
    assert (a.dense_prefill, b.dense_prefill) == (True, False) and a.base_url == b.base_url


@pytest.mark.parametrize(
    ("argv", "message"),
    [(["--base-url", "http://127.0.0.1:1"] * 3, "at most two"),
     (["--base-url", "x=http://127.0.0.1:1", "--base-url", "x=http://127.0.0.1:2"], "different labels"),
     (["--request-timeout", "0"], "request-timeout"),
     (["--base-url", "http://172.17.0.2:8000"], "loopback"),
     (["--compare", "a=http://127.0.0.1:1", "b=http://127.0.0.1:2", "--dense-prefill", "A"], "names no server label: A")],
)
def test_bad_server_options(argv: list[str], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        targets_from_args(parse(argv))
