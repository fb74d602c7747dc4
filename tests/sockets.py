"""Which TCP addresses Ray's processes listen on, read from /proc (the same facts `ss -ltnp` shows)."""

from __future__ import annotations

import ipaddress
import os


def _listen_table() -> dict[str, str]:
    """inode -> 'address:port' for every LISTEN socket (IPv4 and IPv6) of this network namespace."""
    out = {}
    for name, v6 in (("/proc/net/tcp", False), ("/proc/net/tcp6", True)):
        with open(name) as f:
            next(f)
            for line in f:
                parts = line.split()
                local, state, inode = parts[1], parts[3], parts[9]
                if state != "0A":
                    continue
                hexaddr, hexport = local.split(":")
                raw = bytes.fromhex(hexaddr)
                if v6:
                    raw = b"".join(raw[i:i + 4][::-1] for i in range(0, 16, 4))
                    addr = ipaddress.IPv6Address(raw)
                    addr = addr.ipv4_mapped or addr
                else:
                    addr = ipaddress.IPv4Address(raw[::-1])
                out[inode] = f"{addr}:{int(hexport, 16)}"
    return out


def ray_listeners() -> list[tuple[str, str]]:
    """(process name, address) of every listening socket held by a Ray or boostray process."""
    table = _listen_table()
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                cmd = f.read().replace(b"\0", b" ").decode(errors="replace")
            if "ray" not in cmd:
                continue
            for fd in os.listdir(f"/proc/{pid}/fd"):
                link = os.readlink(f"/proc/{pid}/fd/{fd}")
                if link.startswith("socket:[") and link[8:-1] in table:
                    found.append((cmd.split()[0], table[link[8:-1]]))
        except (FileNotFoundError, ProcessLookupError, PermissionError):
            continue
    return found


def is_loopback(address: str) -> bool:
    host = address.rsplit(":", 1)[0]
    return ipaddress.ip_address(host).is_loopback
