"""Who we send traffic to: loopback-only base URLs, API keys, served model ids.

Every client in this repo (load tests, accuracy eval) goes through
`require_loopback`, so the harness can never be pointed at a remote host.
"""

from __future__ import annotations

import ipaddress
import os
from urllib.parse import urlsplit

import httpx
from pydantic import BaseModel, ConfigDict

_LOOPBACK_NAMES = {"localhost", "localhost.localdomain", "ip6-localhost", "ip6-loopback"}


class Target(BaseModel):
    """One OpenAI-compatible server under test."""

    model_config = ConfigDict(frozen=True)

    label: str
    base_url: str  # scheme://host:port, without the trailing /v1
    api_key: str | None = None
    model: str | None = None
    dense_prefill: bool = False  # send `sparse: false`: dense prefill on a sparse-serve server

    def headers(self) -> dict[str, str]:
        """HTTP headers for every request (bearer auth when a key is set)."""
        if self.api_key:
            return {"Authorization": f"Bearer {self.api_key}"}
        return {}

    def url(self, path: str) -> str:
        """Absolute URL of `path` (e.g. "/v1/models") on this server."""
        return self.base_url + path


def require_loopback(url: str) -> str:
    """Validate `url` points at a loopback host and normalise it.

    Returns "scheme://host[:port]" with any trailing "/" or "/v1" removed.
    Raises ValueError for non-http(s) URLs and for any host that is not a
    loopback address (127.0.0.0/8, ::1, localhost).
    """
    parts = urlsplit(url.strip())
    if parts.scheme not in ("http", "https"):
        raise ValueError(f"base URL must start with http:// or https://, got {url!r}")
    host = parts.hostname
    if not host:
        raise ValueError(f"base URL has no host: {url!r}")
    if not _is_loopback_host(host):
        raise ValueError(
            f"refusing to send traffic to {host!r}: only loopback addresses "
            "(127.0.0.1, ::1, localhost) are allowed"
        )
    if parts.query or parts.fragment:
        raise ValueError(f"base URL must not carry a query or fragment: {url!r}")
    path = parts.path.rstrip("/")
    if path.endswith("/v1"):
        path = path[: -len("/v1")]
    return f"{parts.scheme}://{parts.netloc}{path}"


def _is_loopback_host(host: str) -> bool:
    if host.lower() in _LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def resolve_api_key(explicit: str | None) -> str | None:
    """The API key from the flag, else $OPENAI_API_KEY, else None."""
    if explicit:
        return explicit
    return os.environ.get("OPENAI_API_KEY") or None


def parse_labeled_url(spec: str, default_label: str) -> tuple[str, str]:
    """Split "label=URL" (or a bare URL) into (label, normalised URL)."""
    label, sep, url = spec.partition("=")
    if not sep or "://" in label:
        label, url = default_label, spec
    if not label:
        raise ValueError(f"empty label in {spec!r}")
    return label, require_loopback(url)


async def served_models(client: httpx.AsyncClient, target: Target) -> list[dict]:
    """The `data` list of GET /v1/models (raises ValueError on a bad reply)."""
    try:
        response = await client.get(target.url("/v1/models"), headers=target.headers())
    except httpx.HTTPError as exc:
        raise ValueError(f"cannot reach {target.base_url}: {exc!r}") from exc
    if response.status_code != 200:
        raise ValueError(
            f"GET {target.url('/v1/models')} returned {response.status_code}: "
            f"{response.text[:200]}"
        )
    try:
        data = response.json()["data"]
    except (ValueError, KeyError, TypeError) as exc:
        raise ValueError(f"malformed /v1/models reply from {target.base_url}") from exc
    if not isinstance(data, list) or not data:
        raise ValueError(f"{target.base_url} serves no models")
    return data


async def resolve_target(client: httpx.AsyncClient, target: Target) -> Target:
    """Fill in `model` from /v1/models when it was not given (first id)."""
    if target.model:
        return target
    models = await served_models(client, target)
    return target.model_copy(update={"model": str(models[0]["id"])})


async def max_model_len(client: httpx.AsyncClient, target: Target) -> int | None:
    """The served model's context length if /v1/models reports it (vLLM does)."""
    for entry in await served_models(client, target):
        if entry.get("id") == target.model and isinstance(entry.get("max_model_len"), int):
            return int(entry["max_model_len"])
    return None
