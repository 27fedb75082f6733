"""The controller's HTTP port.

GET  /healthz                   open    200 while the process runs
GET  /readyz                    open    200 once every source has finished a first reconcile, else 503
GET  /metrics                   open    Prometheus metrics
GET  /status                    open    every source's record (conditions, revisions, history) as JSON
GET  /console                   open    the web console (its script and style under /console/ too)
GET  /console/events            open    the console's live updates: server-sent events, MAX_STREAMS at once
POST /hook                      signed  a webhook (GitHub push, or the generic form): HMAC-SHA256 of the body
POST /sources/NAME/reconcile    token   reconcile NAME now (``gitmesh reconcile NAME``): a bearer token,
                                        the controller's own, or on a cluster one RBAC lets reconcile NAME

Served by asyncio on a thread of its own, one request per connection: a client costs a socket, never
a thread, and nothing here waits on the ADS server or slows it. Everything a client sends is bounded
before it is read: the head (16 KiB), the body (a Content-Length of at most 1 MiB, on POST only and
read only for /hook, 16 at once) and the time a request may take to arrive (10 s). Connections beyond
the cap wait in the listen queue, costing no file descriptor; while they wait, connections that have
not sent their head within 0.25 s are let go, so idle clients cannot hold the port. The console's event
streams are the one answer that lasts: at most MAX_STREAMS at once, each ended after STREAM_SECONDS
(the browser reconnects), and dropped like any answer the client does not take within 10 s.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import http.client
import io
import json
import logging
import re
import socket
import threading
from collections.abc import AsyncGenerator, Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from http import HTTPStatus
from typing import TYPE_CHECKING, Any

from prometheus_client import CONTENT_TYPE_LATEST

from gitmesh.controller import console
from gitmesh.controller.metrics import Metrics
from gitmesh.controller.schedule import Controller
from gitmesh.errors import ClusterError, ConfigError
from gitmesh.sync import webhook

if TYPE_CHECKING:
    from gitmesh.kube.review import Reviewed

log = logging.getLogger("gitmesh.controller.http")

MAX_HEAD = 16 << 10  # the request line and headers
MAX_BODY = 1 << 20  # GitHub caps push payloads at 25 MB, but a mesh repo's pushes are small
MAX_REVIEWS = 4  # bearer tokens being reviewed by the cluster at once; one waits 1 s for a place, then 503
MAX_BODIES = 16  # webhook bodies held at once (16 MiB at most); one waits 1 s for a place, then 503
MAX_CONNECTIONS = 256  # or a quarter of the open-file limit if lower: the rest is for xDS, the store, Git
REQUEST_TIMEOUT = 10.0  # seconds for a whole request to arrive, and for its answer to be taken
BUSY_TIMEOUT = 1.0  # ... for a webhook body while every body place is taken
EVICT_AFTER = 0.25  # seconds: while every connection slot is taken, one still without its head is let go
LISTEN_BACKLOG = 1024  # connections waiting for a slot, queued by the kernel
MAX_STREAMS = 16  # console event streams at once; each holds a connection slot while it lasts
STREAM_SECONDS = 60.0  # then it ends, and the browser's EventSource opens another
LINGER_SECONDS = 1.0  # after answering, how long to discard what the client still sends
_POLL = 0.25  # how often a request still arriving looks at its deadline
_LENGTH = re.compile(r"[0-9]{1,16}")


@dataclass(frozen=True)
class Response:
    status: int
    body: bytes
    content_type: str = "text/plain; charset=utf-8"
    headers: tuple[tuple[str, str], ...] = ()


def _text(status: int, text: str) -> Response:
    return Response(status, text.encode() + b"\n")


def _json(status: int, data: Any, headers: tuple[tuple[str, str], ...] = ()) -> Response:
    return Response(status, json.dumps(data, indent=2).encode() + b"\n", "application/json", headers)


@dataclass(frozen=True)
class Stream:
    """An answer sent as it is made: server-sent events until ``events`` ends; then ``done()``."""

    events: AsyncGenerator[bytes, None]
    done: Callable[[], None]


class _Refused(Exception):
    """A request answered before it was read in full."""

    def __init__(self, response: Response) -> None:
        super().__init__(response.status)
        self.response = response


class _Evicted(_Refused):
    """A connection let go to make room: it is answered and closed at once, its slot wanted."""


@dataclass(frozen=True)
class _Head:
    method: str
    path: str
    headers: http.client.HTTPMessage
    length: int  # of the body, as announced (0 for anything but POST)


class ControllerPort:
    def __init__(
        self,
        address: str,
        controller: Controller,
        metrics: Metrics,
        secret: bytes | None,
        token: bytes | None,
        review: Callable[[str, str], Reviewed] | None,
        open_files: int,
        web_console: console.Console | None = None,
    ) -> None:
        host, _, port = address.rpartition(":")
        if not port.isdigit():
            raise ConfigError(f"the HTTP address {address!r} is not HOST:PORT")
        self.controller = controller
        self.metrics = metrics
        self.secret = secret
        self.token = token
        self.review = review
        self.web_console = web_console
        # The console's readings (sidecars' stats, the store) block: one thread of their own, which
        # every viewer shares, so that they never wait on token reviews nor hold up the port's loop.
        self._console_thread = ThreadPoolExecutor(1, "console")
        self._streams = asyncio.Semaphore(MAX_STREAMS)
        self.max_connections = max(1, min(MAX_CONNECTIONS, open_files // 4))
        try:
            self._listener = socket.create_server((host or "127.0.0.1", int(port)), backlog=LISTEN_BACKLOG)
        except OSError as e:
            raise ConfigError(f"cannot serve HTTP on {address}: {e.strerror}") from e
        self._listener.setblocking(False)
        self.address = "{}:{}".format(*self._listener.getsockname()[:2])
        self._slots = asyncio.Semaphore(self.max_connections)
        self._bodies = asyncio.Semaphore(MAX_BODIES)
        self._reviews = asyncio.Semaphore(MAX_REVIEWS)
        self._heads: dict[asyncio.StreamReader, float] = {}  # connections waiting for their head, since
        self._stop = asyncio.Event()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._run, name="http", daemon=True)

    def start(self) -> None:
        self._thread.start()
        log.info("controller HTTP port on %s (at most %d connections)", self.address, self.max_connections)

    def stop(self) -> None:
        self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join()

    def _run(self) -> None:
        try:
            self._loop.run_until_complete(self._serve())
        finally:
            self._loop.close()
            self._listener.close()
            self._console_thread.shutdown(wait=False, cancel_futures=True)

    async def _serve(self) -> None:
        connections: set[asyncio.Task[None]] = set()
        accepting = asyncio.create_task(self._accept(connections))
        await self._stop.wait()
        for task in (accepting, *connections):
            task.cancel()
        await asyncio.gather(accepting, *connections, return_exceptions=True)

    async def _accept(self, connections: set[asyncio.Task[None]]) -> None:
        loop = asyncio.get_running_loop()
        while True:
            while self._slots.locked():  # until an evicted (or finished) connection has closed
                self._evict(loop.time())
                await asyncio.sleep(EVICT_AFTER / 5)
            await self._slots.acquire()
            try:
                sock, _ = await loop.sock_accept(self._listener)
            except OSError as e:
                # Out of file descriptors: the connections wait in the listen queue until some are free.
                self._slots.release()
                log.warning("the HTTP port cannot accept a connection now: %s", e.strerror)
                await asyncio.sleep(_POLL)
                continue
            task = asyncio.create_task(self._connection(sock))
            connections.add(task)
            task.add_done_callback(connections.discard)

    def _evict(self, now: float) -> None:
        """Let go of every connection that has not sent its request head within EVICT_AFTER: with
        the port full, idle or slow clients would otherwise keep quick ones waiting (connections
        queued in the kernel have had their head there all along)."""
        for reader, since in list(self._heads.items()):
            if now - since >= EVICT_AFTER:
                del self._heads[reader]
                reader.set_exception(_Evicted(_text(408, "the request did not arrive in time")))

    async def _connection(self, sock: socket.socket) -> None:
        accepted = asyncio.get_running_loop().time()
        try:
            reader, writer = await asyncio.open_connection(sock=sock, limit=MAX_HEAD)
        except OSError:
            sock.close()
            self._slots.release()
            return
        self._heads[reader] = accepted
        try:
            try:
                response = await self._handle(reader, accepted)
            except _Evicted as e:
                await self._write(writer, e.response)
                return
            except _Refused as e:
                response = e.response
            except (OSError, asyncio.IncompleteReadError):
                raise
            except Exception:
                log.exception("the HTTP port failed to answer a request")
                response = _text(500, "internal error (logged)")
            if isinstance(response, Stream):
                await self._stream(writer, response)
            else:
                await self._write(writer, response)
            # Closing with bytes unread would reset the connection and could lose the answer: half-close,
            # then discard what the client still sends (bounded in time and size) until it closes.
            writer.write_eof()
            async with asyncio.timeout(LINGER_SECONDS):
                discarded = 0
                while discarded <= MAX_BODY and (chunk := await reader.read(MAX_HEAD)):
                    discarded += len(chunk)
        except (OSError, TimeoutError, asyncio.IncompleteReadError):
            pass  # the client went away, or would not take the answer
        finally:
            self._heads.pop(reader, None)
            await _closed(writer)
            self._slots.release()

    async def _arrival(
        self, read: Callable[[], Awaitable[bytes]], accepted: float, busy: Callable[[], bool] = lambda: False
    ) -> bytes:
        """``read()``, given up once the request has taken too long to arrive: REQUEST_TIMEOUT, or
        BUSY_TIMEOUT while ``busy()`` (reads that time out keep what they buffered, so each poll
        carries on where the last one stopped)."""
        loop = asyncio.get_running_loop()
        while True:
            try:
                return await asyncio.wait_for(read(), _POLL)
            except TimeoutError:
                waited = loop.time() - accepted
                if waited >= REQUEST_TIMEOUT or (waited >= BUSY_TIMEOUT and busy()):
                    raise _Refused(_text(408, "the request did not arrive in time")) from None

    async def _handle(self, reader: asyncio.StreamReader, accepted: float) -> Response | Stream:
        try:
            raw = await self._arrival(lambda: reader.readuntil(b"\r\n\r\n"), accepted)
        except asyncio.LimitOverrunError:
            raise _Refused(_text(431, f"the request head is larger than {MAX_HEAD} bytes")) from None
        self._heads.pop(reader, None)  # (an eviction may have come between the head and this)
        head = _parse_head(raw)
        if head.method == "GET" and (head.path == "/console" or head.path.startswith("/console/")):
            return await self._console(head.path)
        if head.method == "GET":
            return self._get(head.path)
        if head.method != "POST":
            return _text(405, f"{head.method} is not served here")
        parts = head.path.strip("/").split("/")
        if head.path == "/hook":
            return await self._hook(head, reader, accepted)
        if len(parts) == 3 and parts[0] == "sources" and parts[2] == "reconcile":
            return await self._reconcile(parts[1], head)
        return _text(404, "not found")

    def _get(self, path: str) -> Response:
        reconciler = self.controller.reconciler
        if path == "/healthz":
            return _text(200, "ok")
        if path == "/readyz":
            waiting = reconciler.not_ready()
            if waiting:
                return _text(503, f"waiting for a first reconcile of: {', '.join(waiting)}")
            return _text(200, "ok")
        if path == "/metrics":
            return Response(200, self.metrics.exposition(), CONTENT_TYPE_LATEST)
        if path == "/status":
            return _json(200, {"sources": [r.to_json() for r in reconciler.records()]})
        return _text(404, "not found")

    async def _console(self, path: str) -> Response | Stream:
        if self.web_console is None:
            return _text(404, "not found")
        name = path.removeprefix("/console/")
        if name in console.STATIC:
            try:
                return Response(200, console.static(name), console.STATIC[name])
            except FileNotFoundError:  # an asset not fetched: a source tree without `make`
                return _text(404, f"{name} is not installed: python3 tools/fetch_assets.py fetches it")
        if path == "/console":
            parts = await asyncio.get_running_loop().run_in_executor(
                self._console_thread, self.web_console.fragments
            )
            return Response(200, console.page(parts).encode(), "text/html; charset=utf-8", _PAGE_HEADERS)
        if path == "/console/events":
            if self._streams.locked():
                return _text(503, f"{MAX_STREAMS} console streams are open already")
            await self._streams.acquire()  # at once: not locked, and nothing ran in between
            return Stream(self._events(self.web_console), self._streams.release)
        return _text(404, "not found")

    async def _events(self, web_console: console.Console) -> AsyncGenerator[bytes, None]:
        loop = asyncio.get_running_loop()
        end = loop.time() + STREAM_SECONDS
        sent: dict[str, str] = {}  # what this viewer has: the page it loaded may be older
        yield f"retry: {int(console.REFRESH * 1000)}\n\n".encode()
        while loop.time() < end:
            parts = await loop.run_in_executor(self._console_thread, web_console.fragments)
            yield console.event({k: v for k, v in parts.items() if sent.get(k) != v})  # what changed
            sent = parts
            await asyncio.sleep(console.REFRESH)

    async def _reconcile(self, name: str, head: _Head) -> Response:
        if self.token is None and self.review is None:
            return _json(403, {"error": "reconcile over HTTP is off: gitmesh run has no --http-token-file"})
        scheme, _, given = (head.headers.get("Authorization") or "").partition(" ")
        token = given.strip()
        if scheme.lower() != "bearer" or not token:
            return self._unauthorized(name)
        if self.token is None or not hmac.compare_digest(token.encode("latin-1"), self.token):
            refused = await self._reviewed(token, name) if self.review else self._unauthorized(name)
            if refused:
                return refused
        if self.controller.trigger(name, "manual"):
            return _json(202, {"triggered": [name]})
        return _json(404, {"error": f"no source {name!r}"})

    async def _reviewed(self, token: str, name: str) -> Response | None:
        """None when the cluster says the token's user may reconcile ``name``; else the refusal."""
        assert self.review is not None
        try:
            await asyncio.wait_for(self._reviews.acquire(), BUSY_TIMEOUT)
        except TimeoutError:
            return _json(503, {"error": "too many tokens under review"}, (("Retry-After", "1"),))
        try:
            reviewed = await asyncio.get_running_loop().run_in_executor(None, self.review, token, name)
        except ClusterError as e:
            log.warning("cannot review a bearer token with the cluster: %s", e)
            return _json(503, {"error": f"cannot review the token with the cluster: {e}"})
        finally:
            self._reviews.release()
        if not reviewed.user:
            return self._unauthorized(name)
        if not reviewed.allowed:
            log.warning("%s may not reconcile %r: refused", reviewed.user, name)
            return _json(403, {"error": f"{reviewed.user} may not reconcile sources.gitmesh.dev {name!r}"})
        return None

    @staticmethod
    def _unauthorized(name: str) -> Response:
        log.warning("a reconcile of %r without the right bearer token was refused", name)
        return _json(401, {"error": "missing or wrong bearer token"}, (("WWW-Authenticate", "Bearer"),))

    async def _hook(self, head: _Head, reader: asyncio.StreamReader, accepted: float) -> Response:
        metrics = self.metrics.webhooks
        if self.secret is None:
            metrics.labels("rejected").inc()
            return _json(404, {"error": "no webhook secret is configured: webhooks are off"})
        try:
            await asyncio.wait_for(self._bodies.acquire(), BUSY_TIMEOUT)
        except TimeoutError:
            return _json(503, {"error": "too many webhooks at once"}, (("Retry-After", "1"),))
        try:
            body = await self._arrival(lambda: reader.readexactly(head.length), accepted, self._bodies.locked)
        finally:
            self._bodies.release()
        if not webhook.verify(self.secret, body, head.headers.get(webhook.SIGNATURE_HEADER)):
            metrics.labels("rejected").inc()
            log.warning("a webhook with a missing or wrong signature was refused")
            return _json(401, {"error": f"missing or wrong {webhook.SIGNATURE_HEADER}"})
        try:
            push = webhook.parse(head.headers.get(webhook.EVENT_HEADER), body)
        except webhook.BadEvent as e:
            metrics.labels("invalid").inc()
            return _json(400, {"error": str(e)})
        except RecursionError:  # the JSON decoder's answer to nesting deeper than the interpreter's stack
            metrics.labels("invalid").inc()
            return _json(400, {"error": "the body nests too deeply"})
        controller = self.controller
        names = (
            sorted(n for n, s in controller.reconciler.sources.items() if webhook.concerns(push, s))
            if push
            else []
        )
        for name in names:
            controller.trigger(name, "webhook")
        metrics.labels("accepted" if names else "ignored").inc()
        return _json(202 if names else 200, {"triggered": names})

    async def _write(self, writer: asyncio.StreamWriter, response: Response) -> None:
        lines = [
            f"HTTP/1.1 {response.status} {HTTPStatus(response.status).phrase}",
            f"Content-Type: {response.content_type}",
            f"Content-Length: {len(response.body)}",
            "Connection: close",
            *(f"{k}: {v}" for k, v in response.headers),
        ]
        writer.write("\r\n".join(lines).encode("latin-1") + b"\r\n\r\n" + response.body)
        async with asyncio.timeout(REQUEST_TIMEOUT):  # a client that does not read its answer is let go
            await writer.drain()

    async def _stream(self, writer: asyncio.StreamWriter, stream: Stream) -> None:
        lines = [
            "HTTP/1.1 200 OK",
            "Content-Type: text/event-stream",
            "Cache-Control: no-store",
            "Connection: close",
        ]
        try:
            writer.write("\r\n".join(lines).encode("latin-1") + b"\r\n\r\n")
            async for data in stream.events:
                writer.write(data)
                async with asyncio.timeout(REQUEST_TIMEOUT):  # a client that stops reading is let go
                    await writer.drain()
        finally:
            await stream.events.aclose()
            stream.done()


# The page loads only its own script and style, and may not be framed: nothing else runs in it.
_PAGE_HEADERS = (
    ("Content-Security-Policy", "default-src 'self'; frame-ancestors 'none'"),
    ("X-Content-Type-Options", "nosniff"),
    ("Cache-Control", "no-store"),
)


async def _closed(writer: asyncio.StreamWriter) -> None:
    """The connection closed for good, its descriptor too (the slots count descriptors): an answer the
    client has not taken within LINGER_SECONDS is dropped."""
    writer.close()
    with contextlib.suppress(OSError):
        try:
            async with asyncio.timeout(LINGER_SECONDS):
                await writer.wait_closed()
        except TimeoutError:
            writer.transport.abort()
            await writer.wait_closed()


def _parse_head(raw: bytes) -> _Head:
    """The request line and headers; a POST's body length, refused before any of it is read when it
    is missing (411), malformed (400) or over the cap (413)."""
    line, _, rest = raw.partition(b"\r\n")
    parts = line.decode("latin-1").split(" ")
    if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
        raise _Refused(_text(400, "a malformed request line"))
    method, path, _ = parts
    try:
        headers = http.client.parse_headers(io.BytesIO(rest))
    except http.client.HTTPException as e:
        raise _Refused(_text(400, f"malformed headers: {e}")) from None
    if method != "POST":
        return _Head(method, path, headers, 0)
    if headers.get("Transfer-Encoding") is not None:
        raise _Refused(_text(411, "send the body with a Content-Length, not a Transfer-Encoding"))
    lengths = headers.get_all("Content-Length") or []
    if not lengths:
        raise _Refused(_text(411, "a POST needs a Content-Length"))
    if len(lengths) > 1 or not _LENGTH.fullmatch(lengths[0].strip()):
        raise _Refused(_text(400, f"Content-Length {', '.join(lengths)!r} is not a length"))
    length = int(lengths[0])
    if length > MAX_BODY:
        raise _Refused(_text(413, f"the body is larger than {MAX_BODY} bytes"))
    return _Head(method, path, headers, length)
