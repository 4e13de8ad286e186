"""The HTTP listening socket, bound before the engine starts.

Binding first means a taken port fails at once with a clear message (instead of after the engine's
start, tens of seconds to minutes), and that the port stays ours while the engine loads: the kernel
picks no ephemeral port that is bound, and a server binding without ``SO_REUSEADDR`` fails. (A
process that also sets ``SO_REUSEADDR`` could still bind it and listen first; this socket starts
listening only when uvicorn serves, so that clients see "connection refused", not a hang, while
the engine loads.) uvicorn then serves on this socket.
"""

from __future__ import annotations

import socket


def bind_listen_socket(host: str, port: int) -> socket.socket:
    """A TCP socket bound to ``host:port`` (IPv4 or IPv6, ``SO_REUSEADDR``); uvicorn starts listening on it.

    Raises ``SystemExit`` with the address and the reason when the address cannot be bound.
    """
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM,
                                                             flags=socket.AI_PASSIVE)[0]
    except socket.gaierror as exc:
        raise SystemExit(f"sparse-serve: cannot resolve --host {host!r}: {exc.strerror}") from None
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(address)
    except OSError as exc:
        sock.close()
        raise SystemExit(f"sparse-serve: cannot listen on {host}:{port}: {exc.strerror}") from None
    return sock
