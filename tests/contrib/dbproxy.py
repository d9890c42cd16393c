"""A TCP proxy in front of PostgreSQL that a test can cut, to make the database unreachable."""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import Callable


class Proxy:
    """Forward 127.0.0.1:<port> to ``target``; ``cut()`` drops and refuses connections, ``restore()`` accepts again.

    ``accepted`` counts the connections made through it so far.
    """

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self._lock = threading.Lock()
        self._sockets: list[socket.socket] = []
        self.accepted = 0
        probe = socket.socket()
        probe.bind(("127.0.0.1", 0))
        self.port = probe.getsockname()[1]
        probe.close()
        self._listener: socket.socket | None = None
        self.restore()

    def restore(self) -> None:
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(32)
        self._listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()

    def cut(self) -> None:
        with self._lock:
            sockets, self._sockets = self._sockets, []
        if self._listener is not None:
            with contextlib.suppress(OSError):
                self._listener.shutdown(socket.SHUT_RDWR)
            self._listener.close()
            self._listener = None
        for sock in sockets:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()

    close = cut

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(self.target, timeout=5)
            except OSError:
                client.close()
                continue
            upstream.settimeout(None)
            with self._lock:
                self._sockets += [client, upstream]
                self.accepted += 1
            threading.Thread(
                target=self._pipe,
                args=(client, upstream, self.reader()),
                daemon=True,
            ).start()
            threading.Thread(
                target=self._answers, args=(upstream, client), daemon=True
            ).start()

    def _answers(self, source: socket.socket, sink: socket.socket) -> None:
        """The server's answers, passed on to the client."""
        self._pipe(source, sink)

    def reader(self) -> Callable[[bytes], None] | None:
        """What sees the bytes one new client sends (bench/bench_integrations.py counts statements)."""
        return None

    @staticmethod
    def _pipe(
        source: socket.socket,
        sink: socket.socket,
        read: Callable[[bytes], None] | None = None,
    ) -> None:
        try:
            while data := source.recv(65536):
                if read is not None:
                    read(data)
                sink.sendall(data)
        except OSError:
            pass
        finally:
            for sock in (source, sink):
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)


# The server's CommandComplete message for a COMMIT: 'C', length 11, "COMMIT\0".
COMMIT_DONE = b"C\x00\x00\x00\x0bCOMMIT\x00"


class LosingProxy(Proxy):
    """A Proxy that can lose the answer of the next COMMIT: the server has committed, and
    the connection drops before the client hears it, as a network failure at that
    instant does (``lose_next_commit_answer()``; ``lost`` is set once it happened)."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.armed = threading.Event()
        self.lost = threading.Event()
        super().__init__(target)

    def lose_next_commit_answer(self) -> None:
        self.lost.clear()
        self.armed.set()

    def _answers(self, source: socket.socket, sink: socket.socket) -> None:
        """The server's answers, passed on, but for a COMMIT's once armed: then the
        connection drops."""
        try:
            while data := source.recv(65536):
                if self.armed.is_set() and COMMIT_DONE in data:
                    self.armed.clear()
                    self.lost.set()
                    break  # the server committed; the client never hears it
                sink.sendall(data)
        except OSError:
            pass
        finally:
            for sock in (source, sink):
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
                with contextlib.suppress(OSError):
                    sock.close()
