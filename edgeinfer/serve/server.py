"""Running the app under uvicorn: a listening socket, a deadline for request headers, a bounded graceful stop.

uvicorn keeps waiting for a request whose headers trickle in a byte at a time (slowloris) and, after a signal,
raises it again once it has stopped (a SIGTERM would then kill the process instead of letting it exit 0).
Both are changed here, in a subclass each.
"""

from __future__ import annotations

import asyncio
import json
import signal
import socket

import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol

from ..errors import EdgeInferError
from .app import create_app
from .settings import ServeSettings

SHUTDOWN_MARGIN_S = 3.0  # after the app's own graceful period: time for the current model step and the last bytes


def header_deadline_protocol(timeout_s: float) -> type[H11Protocol]:
    """uvicorn's h11 protocol where each request's headers must arrive within TIMEOUT_S of the connection
    opening (or of the previous response): a client that trickles them gets a 408 and the connection ends."""
    body = json.dumps({"error": {"message": f"the request headers did not arrive within {timeout_s:g} s: send them "
                                 "at once", "type": "invalid_request_error", "param": None,
                                 "code": "request_timeout"}}).encode()
    response = (b"HTTP/1.1 408 Request Timeout\r\ncontent-type: application/json\r\n"
                b"content-length: %d\r\nconnection: close\r\n\r\n" % len(body)) + body

    class HeaderDeadlineProtocol(H11Protocol):
        _deadline: asyncio.TimerHandle | None = None

        def _arm(self) -> None:
            self._disarm()
            self._deadline = self.loop.call_later(timeout_s, self._expire)

        def _disarm(self) -> None:
            if self._deadline is not None:
                self._deadline.cancel()
                self._deadline = None

        def _expire(self) -> None:
            self._deadline = None
            if not self.transport.is_closing():
                # Written raw: h11 allows a response only after a whole request, which never came.
                self.transport.write(response)
                self.transport.close()

        def connection_made(self, transport) -> None:
            super().connection_made(transport)
            self._arm()

        def handle_events(self) -> None:
            cycle = self.cycle
            super().handle_events()
            if self.cycle is not cycle:  # a request's headers arrived
                self._disarm()

        def on_response_complete(self) -> None:
            self._arm()  # before: a pipelined request handled in there disarms it again
            super().on_response_complete()

        def connection_lost(self, exc) -> None:
            self._disarm()
            super().connection_lost(exc)

    return HeaderDeadlineProtocol


class GracefulServer(uvicorn.Server):
    """A signal stops admission at once (queued requests get a 503), gives running requests the graceful period,
    and ends with a normal return instead of re-raising the signal."""

    def __init__(self, config: uvicorn.Config, on_signal):
        super().__init__(config)
        self._on_signal = on_signal

    def handle_exit(self, sig: int, frame) -> None:
        super().handle_exit(sig, frame)
        self._captured_signals.clear()  # a handled stop, not a death by signal: exit 0
        try:
            asyncio.get_running_loop().call_soon_threadsafe(self._on_signal)
        except RuntimeError:  # not inside the loop (before it started): nothing is admitted yet
            pass


def listen(host: str, port: int) -> socket.socket:
    """A listening socket on HOST:PORT (port 0: any free one), or one line saying why not."""
    try:
        info = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)[0]
        # With the protocol number (IPPROTO_TCP) asyncio turns Nagle's algorithm off on accepted connections;
        # without it each streamed chunk after the first waited for the client's delayed ACK (~40 ms).
        sock = socket.socket(info[0], info[1], info[2])
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(info[4])
        sock.listen(2048)
    except OSError as exc:
        raise EdgeInferError(f"cannot listen on {host}:{port} ({exc.strerror or exc}): pick another --port or --host") from None
    sock.setblocking(False)
    return sock


def run_server(model, settings: ServeSettings, announce) -> None:
    """Serve MODEL until a signal; ANNOUNCE(url) is called once the socket listens."""
    app = create_app(model, settings)
    sock = listen(settings.host, settings.port)
    config = uvicorn.Config(
        app, http=header_deadline_protocol(settings.read_timeout_s), lifespan="on", log_level="info",
        # The app ends running requests after shutdown_timeout_s; uvicorn cancels what is left a little later.
        timeout_graceful_shutdown=settings.shutdown_timeout_s + SHUTDOWN_MARGIN_S, timeout_keep_alive=5,
        # A backstop against connection floods; the scheduler's queue answers with 503s long before this.
        limit_concurrency=max(256, 4 * (settings.parallel + settings.queue)),
    )
    server = GracefulServer(config, app.state.serve.begin_shutdown)
    host, port = sock.getsockname()[:2]
    announce(f"http://{host if ':' not in host else f'[{host}]'}:{port}")
    server.run(sockets=[sock])
