"""The server's listening socket, bound before anything slow starts (the model, Ray), so that a
port in use is one line naming it at once."""
from __future__ import annotations

import errno
import socket


def bind_socket(host: str, port: int) -> socket.socket:
    """A bound TCP socket; a port in use or a bad address is a ValueError naming them."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise ValueError(f"--host {host!r} is not an address of this machine: {exc}") from None
    family, _, _, _, address = infos[0]
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(address)
    except OSError as exc:
        sock.close()
        why = "is in use" if exc.errno == errno.EADDRINUSE else f"cannot be used: {exc.strerror}"
        raise ValueError(f"port {port} on {host} {why}") from None
    return sock
