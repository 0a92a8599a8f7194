"""A TCP proxy on loopback that cuts the connection once, to test resumable uploads."""

from __future__ import annotations

import contextlib
import socket
import threading


class CuttingProxy:
    """Forwards to ``upstream``; the first connection that carries more than ``cut_after``
    bytes towards the hub is closed abruptly. Counts every byte sent upstream."""

    def __init__(self, upstream_port: int, cut_after: int) -> None:
        self.upstream_port = upstream_port
        self.cut_after = cut_after
        self.cuts = 0
        self.bytes_up = 0
        self._lock = threading.Lock()
        self._server = socket.create_server(("127.0.0.1", 0))
        self.port = self._server.getsockname()[1]
        self._stop = False
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _accept(self) -> None:
        while not self._stop:
            try:
                client, _ = self._server.accept()
            except OSError:
                return
            upstream = socket.create_connection(("127.0.0.1", self.upstream_port))
            threading.Thread(target=self._up, args=(client, upstream), daemon=True).start()
            threading.Thread(target=self._down, args=(upstream, client), daemon=True).start()

    def _up(self, src: socket.socket, dst: socket.socket) -> None:
        sent_here = 0
        try:
            while data := src.recv(65536):
                with self._lock:
                    cut = self.cuts == 0 and sent_here + len(data) > self.cut_after
                    if cut:
                        data = data[: self.cut_after - sent_here]
                        self.cuts += 1
                    self.bytes_up += len(data)
                dst.sendall(data)
                sent_here += len(data)
                if cut:
                    # shutdown, not just close: the other thread's recv holds the socket.
                    return
        except OSError:
            pass
        finally:
            for s in (src, dst):
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)

    def _down(self, src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            with contextlib.suppress(OSError):
                dst.shutdown(socket.SHUT_RDWR)

    def close(self) -> None:
        self._stop = True
        self._server.close()
