"""server/listen.py: the port is bound before the engine starts, and a taken port fails clearly."""

from __future__ import annotations

import socket

import pytest

from server.listen import bind_listen_socket


def test_binds_the_port_and_a_second_bind_fails_with_the_address() -> None:
    first = bind_listen_socket("127.0.0.1", 0)
    try:
        host, port = first.getsockname()[:2]
        assert host == "127.0.0.1" and port > 0
        first.listen()
        with pytest.raises(SystemExit, match=f"cannot listen on 127.0.0.1:{port}"):
            bind_listen_socket("127.0.0.1", port)
    finally:
        first.close()


def test_unresolvable_host_is_a_clear_error() -> None:
    with pytest.raises(SystemExit, match="cannot resolve --host"):
        bind_listen_socket("no-such-host.invalid", 8000)


def test_ipv6_loopback_when_the_host_has_it() -> None:
    if not socket.has_ipv6:
        pytest.skip("no IPv6 on this host")
    try:
        sock = bind_listen_socket("::1", 0)
    except SystemExit:
        pytest.skip("IPv6 loopback not configured")
    try:
        assert sock.family == socket.AF_INET6
    finally:
        sock.close()
