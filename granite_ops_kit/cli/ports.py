"""Is a TCP port free to listen on, and if not, who holds it? Asked before a server loads
a model for minutes only to fail on bind."""

from __future__ import annotations

import errno
import os
import socket
from pathlib import Path

from granite_ops_kit.errors import UsageError


def _listening_inodes(port: int) -> set[str]:
    """Socket inodes listening on `port`, from /proc/net/tcp and tcp6 (Linux)."""
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            local, state, inode = fields[1], fields[3], fields[9]
            if state == "0A" and int(local.rsplit(":", 1)[1], 16) == port:  # 0A: LISTEN
                found.add(inode)
    return found


def holder(port: int) -> str | None:
    """'NAME (pid N)' of a process listening on `port`, where /proc lets us see it."""
    inodes = _listening_inodes(port)
    if not inodes:
        return None
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            for fd in os.listdir(f"/proc/{pid}/fd"):
                target = os.readlink(f"/proc/{pid}/fd/{fd}")
                if target.startswith("socket:[") and target[8:-1] in inodes:
                    name = Path(f"/proc/{pid}/comm").read_text().strip()
                    return f"{name} (pid {pid})"
        except OSError:
            continue
    return None


def check_port_free(host: str, port: int) -> None:
    """Exit 2 naming the port (and its holder when known) if it cannot be listened on."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn binds
        try:
            probe.bind((host, port))
        except OSError as bad:
            if bad.errno == errno.EADDRINUSE:
                who = holder(port)
                raise UsageError(
                    f"port {port} on {host} is already in use"
                    + (f" by {who}" if who else "")
                    + "; pick another with --port, or stop what holds it."
                ) from None
            raise UsageError(f"cannot listen on {host}:{port}: {bad.strerror}.") from None
