"""The dial-back probe: can the platform open a connection to this machine? (issue 12)

The host agent listens on a TCP port (:class:`ProbeListener`, any free port unless told) and
reports it when it joins; the control plane dials the host's advertised address on it
(:func:`dial_back`). A connection that answers :data:`BANNER` means the host can be dialed and
its engines are served direct; anything else (a timeout behind NAT or a firewall, a refusal,
another service answering) means it cannot, and a host whose reachability is ``auto`` is then
served through the tunnel (``agent.tunnel``). Both sides import this module; it never imports
Django.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import threading

log = logging.getLogger(__name__)

BANNER = b"INVENTIV-AGENT-PROBE 1\n"
DIAL_TIMEOUT_S = 2.0


class ProbeListener:
    """Answers :data:`BANNER` to every connection, from a daemon thread, until :meth:`close`."""

    def __init__(self, host: str = "0.0.0.0", port: int = 0) -> None:
        self._sock = socket.create_server((host, port), reuse_port=False)
        self._sock.settimeout(0.5)
        self.port: int = self._sock.getsockname()[1]
        self._closed = threading.Event()
        self._thread = threading.Thread(target=self._serve, name="probe-listener", daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while not self._closed.is_set():
            try:
                conn, _ = self._sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            with contextlib.suppress(OSError), conn:
                conn.settimeout(1.0)
                conn.sendall(BANNER)

    def close(self) -> None:
        self._closed.set()
        with contextlib.suppress(OSError):
            self._sock.close()
        self._thread.join(2)


def dial_back(host: str, port: int, timeout_s: float = DIAL_TIMEOUT_S) -> bool:
    """True when ``host:port`` answers the probe's banner within ``timeout_s``."""
    try:
        with socket.create_connection((host, port), timeout=timeout_s) as sock:
            received = b""
            while len(received) < len(BANNER):
                chunk = sock.recv(len(BANNER) - len(received))
                if not chunk:
                    break
                received += chunk
            return received == BANNER
    except OSError:  # refused, unreachable, timed out (TimeoutError is an OSError)
        return False
