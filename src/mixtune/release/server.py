"""Run an ASGI app with uvicorn on loopback, in a thread (tests, benchmarks) or in the foreground.

The socket is bound before uvicorn starts (port 0 means "any free port"), so the caller knows the
real port without the race of "find a free port, close it, hope nobody takes it". Start and stop
are bounded in time: a server that does not come up raises instead of hanging a test.
"""

from __future__ import annotations

import socket
import threading
import time
from typing import Any

from mixtune.errors import MixtuneError


def bind_socket(host: str = "127.0.0.1", port: int = 0) -> socket.socket:
    """Bind a listening TCP socket; raises :class:`MixtuneError` when the port is taken."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    try:
        sock.bind((host, port))
    except OSError as e:
        sock.close()
        raise MixtuneError(f"cannot bind {host}:{port}: {e.strerror or e}", where="--host/--port") from e
    sock.listen(2048)
    sock.setblocking(False)
    return sock


def _config(app: Any, log_level: str, graceful_timeout: float = 5.0):
    import uvicorn

    # graceful_timeout bounds how long shutdown waits for in-flight requests (e.g. a hanging upstream)
    # loop/http "auto" pick uvloop and httptools when installed (uvicorn[standard]): faster parsing
    return uvicorn.Config(app, log_level=log_level, access_log=False, lifespan="on", loop="auto", http="auto",
                          timeout_graceful_shutdown=graceful_timeout)


class ServerThread:
    """A uvicorn server on ``host``:``port`` (0 = free port) running in a daemon thread.

    Use as a context manager; ``url`` is ``http://host:port`` once started.
    """

    def __init__(self, app: Any, host: str = "127.0.0.1", port: int = 0, *,
                 log_level: str = "warning", start_timeout: float = 20.0, graceful_timeout: float = 5.0):
        import uvicorn

        self._sock = bind_socket(host, port)
        self.host, self.port = self._sock.getsockname()[:2]
        self.server = uvicorn.Server(_config(app, log_level, graceful_timeout))
        # uvicorn installs signal handlers only in the main thread; a thread server must not.
        self.server.install_signal_handlers = lambda: None  # type: ignore[method-assign]
        self._thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self._sock]},
                                        name=f"uvicorn-{self.port}", daemon=True)
        self._start_timeout = start_timeout

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self) -> ServerThread:
        """Start the thread and wait (bounded) until uvicorn accepts connections."""
        self._thread.start()
        deadline = time.monotonic() + self._start_timeout
        while not self.server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"server on {self.url} did not start within {self._start_timeout}s")
            time.sleep(0.01)
        return self

    def stop(self, timeout: float = 15.0) -> None:
        """Ask uvicorn to exit (runs the app's shutdown/lifespan) and join the thread."""
        self.server.should_exit = True
        if self._thread.is_alive():
            self._thread.join(timeout)
        if self._thread.is_alive():  # graceful shutdown overran: stop waiting for connections
            self.server.force_exit = True
            self._thread.join(5.0)
        self._sock.close()

    def __enter__(self) -> ServerThread:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def serve_forever(app: Any, host: str, port: int, *, log_level: str = "info",
                  graceful_timeout: float = 60.0) -> None:
    """Run ``app`` in the foreground until Ctrl-C or SIGTERM (used by the CLI commands).

    On SIGTERM uvicorn stops accepting connections and waits up to ``graceful_timeout`` seconds for
    in-flight requests before running the app's shutdown; callers pass at least their upstream
    timeout, so a slow but healthy answer is not cut off by a deploy.
    """
    import uvicorn

    sock = bind_socket(host, port)
    server = uvicorn.Server(_config(app, log_level, graceful_timeout))
    try:
        server.run(sockets=[sock])
    finally:
        sock.close()
