"""Container health probe: exit 0 when the server's ``GET /health`` answers 200, else 1.

Used by the images' ``HEALTHCHECK`` and the Compose healthcheck. Standard library only, so it
works in any image that has Python. The port comes from ``SPARSE_SERVE_PORT`` (default 8000);
the probe always targets loopback, whatever address the server binds.
"""

from __future__ import annotations

import os
import sys
import urllib.error
import urllib.request

DEFAULT_PORT = 8000
DEFAULT_TIMEOUT_S = 5.0


def health_url(env: dict[str, str]) -> str:
    """The loopback ``/health`` URL for the port in ``env`` (``SPARSE_SERVE_PORT``)."""
    raw = env.get("SPARSE_SERVE_PORT", str(DEFAULT_PORT)).strip()
    if not raw.isdigit() or not 0 < int(raw) < 65536:
        raise ValueError(f"SPARSE_SERVE_PORT must be a TCP port 1-65535, got {raw!r}")
    return f"http://127.0.0.1:{int(raw)}/health"


def probe(url: str, timeout_s: float = DEFAULT_TIMEOUT_S) -> tuple[bool, str]:
    """(healthy, reason): healthy only on HTTP 200 within ``timeout_s`` seconds."""
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as response:  # noqa: S310 (loopback)
            return response.status == 200, f"HTTP {response.status}"
    except urllib.error.HTTPError as exc:
        return False, f"HTTP {exc.code}"
    except (urllib.error.URLError, OSError) as exc:
        return False, f"unreachable: {exc}"


def main() -> int:
    try:
        url = health_url(dict(os.environ))
    except ValueError as exc:
        print(f"healthcheck: {exc}", file=sys.stderr)
        return 1
    healthy, reason = probe(url)
    print(f"healthcheck: {url} -> {reason}", file=sys.stderr if not healthy else sys.stdout)
    return 0 if healthy else 1


if __name__ == "__main__":
    sys.exit(main())
