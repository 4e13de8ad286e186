"""Loopback guard, URL normalisation and labels."""

from __future__ import annotations

import pytest

from loadtests.target import parse_labeled_url, require_loopback, resolve_api_key


@pytest.mark.parametrize(
    ("url", "normalised"),
    [
        ("http://127.0.0.1:8000", "http://127.0.0.1:8000"),
        ("http://127.0.0.1:8000/", "http://127.0.0.1:8000"),
        ("http://127.0.0.1:8000/v1", "http://127.0.0.1:8000"),
        ("http://127.3.2.1:9/v1/", "http://127.3.2.1:9"),
        ("http://localhost:8000", "http://localhost:8000"),
        ("https://[::1]:8443", "https://[::1]:8443"),
    ],
)
def test_loopback_accepted(url: str, normalised: str) -> None:
    assert require_loopback(url) == normalised


@pytest.mark.parametrize(
    "url",
    ["http://10.0.0.1:8000", "http://192.168.1.2", "http://example.com", "http://8.8.8.8",
     "http://127.0.0.1.nip.io", "ftp://127.0.0.1", "127.0.0.1:8000", "http://", "http://[::2]:80"],
)
def test_non_loopback_refused(url: str) -> None:
    with pytest.raises(ValueError):
        require_loopback(url)


def test_labels() -> None:
    assert parse_labeled_url("dense=http://127.0.0.1:1", "A") == ("dense", "http://127.0.0.1:1")
    assert parse_labeled_url("http://127.0.0.1:1", "A") == ("A", "http://127.0.0.1:1")
    with pytest.raises(ValueError):
        parse_labeled_url("=http://127.0.0.1:1", "A")


def test_api_key_from_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "sk-env")
    assert resolve_api_key(None) == "sk-env"
    assert resolve_api_key("sk-flag") == "sk-flag"
    monkeypatch.delenv("OPENAI_API_KEY")
    assert resolve_api_key(None) is None
