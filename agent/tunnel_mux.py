"""The tunnel's wire: TCP connections carried as streams over one WebSocket (issue 12, hosts
behind NAT). Both sides import it (the agent, which never imports Django, and the gateway).

A machine that cannot be dialed keeps a WebSocket open to each gateway process
(``agent.tunnel``); the gateway turns each HTTP connection it would have opened to the engine
into a *stream* of that WebSocket (``apps.gateway.tunnel``) and the agent turns each stream into
a connection to its engine on loopback. The bytes are HTTP/1.1 as on a direct connection, so
streaming, usage and cancellation behave as they do direct: a gateway that closes its engine
connection (a client that left) closes the stream, and the agent closes the engine's
connection, which aborts the request.

Frames are binary WebSocket messages: a 5-byte header ``!BI`` (kind, stream id) and a payload.

* ``OPEN`` (gateway → agent): open a connection to the engine for this stream id;
* ``DATA``: bytes of the stream, at most :data:`CHUNK_BYTES`;
* ``CLOSE``: the sender's side of the stream is closed (the whole stream ends);
* ``WINDOW``: payload ``!I``, bytes the receiver has written out and the sender may send again.

Flow control is a credit window per stream and direction (:data:`WINDOW_BYTES`): a sender never
has more than that in flight, and the receiver grants credit back only once it has written the
bytes to its own socket (``drain``), so a slow reader slows its own stream and no other, and
memory per stream is bounded. A peer that sends beyond its window breaks the protocol: the
stream is closed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import struct
from collections.abc import Awaitable, Callable

log = logging.getLogger(__name__)

TUNNEL_PATH = "/internal/agent/v1/tunnel"
TUNNEL_VERSION = 1
VERSION_HEADER = "X-Inventiv-Tunnel-Version"

OPEN, DATA, CLOSE, WINDOW = 1, 2, 3, 4
HEADER = struct.Struct("!BI")
CREDIT = struct.Struct("!I")
WINDOW_BYTES = 256 * 1024
CHUNK_BYTES = 64 * 1024
MAX_STREAMS = 1024

SendFrame = Callable[[bytes], Awaitable[None]]
Connection = tuple[asyncio.StreamReader, asyncio.StreamWriter]
Opener = Callable[[], Awaitable[Connection | None]]


def frame(kind: int, stream_id: int, payload: bytes = b"") -> bytes:
    return HEADER.pack(kind, stream_id) + payload


class _Stream:
    __slots__ = ("credit", "credit_event", "id", "inbox", "queued", "task", "writer")

    def __init__(self, stream_id: int) -> None:
        self.id = stream_id
        self.credit = WINDOW_BYTES  # bytes we may still send
        self.credit_event = asyncio.Event()
        self.credit_event.set()
        self.inbox: asyncio.Queue[bytes | None] = asyncio.Queue()  # None: the peer closed
        self.queued = 0  # bytes received and not yet written out
        self.writer: asyncio.StreamWriter | None = None
        self.task: asyncio.Task[None] | None = None


class Mux:
    """The streams of one WebSocket. ``send`` sends one frame (a whole binary message); the
    WebSocket's reader calls :meth:`feed` with each frame received. The side that dials
    (the gateway) calls :meth:`carry` for each local connection; the side that answers (the
    agent) gives ``opener``, which connects a new stream to the engine."""

    def __init__(self, send: SendFrame, *, opener: Opener | None = None) -> None:
        self._send = send
        self._opener = opener
        self._streams: dict[int, _Stream] = {}
        self._next_id = 1
        self._sends: set[asyncio.Task[None]] = set()  # control frames sent from feed()
        self.closed = False

    @property
    def streams(self) -> int:
        return len(self._streams)

    # --- the dialing side ------------------------------------------------------------------
    async def carry(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """Carry one local connection as a new stream until either end closes it."""
        if self.closed or len(self._streams) >= MAX_STREAMS:
            writer.close()
            return
        stream = _Stream(self._next_id)
        self._next_id += 1
        stream.writer = writer
        stream.task = asyncio.current_task()
        self._streams[stream.id] = stream
        try:
            await self._send(frame(OPEN, stream.id))
        except Exception:
            self._drop(stream)
            writer.close()
            return
        await self._run(stream, reader)

    # --- frames from the peer --------------------------------------------------------------
    def feed(self, message: bytes) -> None:
        """Dispatch one frame; never blocks (data is queued, bounded by the window)."""
        if len(message) < HEADER.size:
            return
        kind, stream_id = HEADER.unpack_from(message)
        stream = self._streams.get(stream_id)
        if kind == DATA:
            if stream is None:
                return  # a stream we closed already
            payload = message[HEADER.size :]
            stream.queued += len(payload)
            if stream.queued > WINDOW_BYTES:
                log.warning("tunnel stream %s: peer sent beyond its window", stream_id)
                self._abort(stream)
                return
            stream.inbox.put_nowait(payload)
        elif kind == WINDOW:
            if stream is not None and len(message) >= HEADER.size + CREDIT.size:
                stream.credit += CREDIT.unpack_from(message, HEADER.size)[0]
                stream.credit_event.set()
        elif kind == CLOSE:
            if stream is not None:
                stream.inbox.put_nowait(None)
        elif kind == OPEN:
            self._open(stream_id)

    def _open(self, stream_id: int) -> None:
        if (
            self._opener is None
            or self.closed
            or stream_id in self._streams
            or len(self._streams) >= MAX_STREAMS
        ):
            self._spawn_send(frame(CLOSE, stream_id))
            return
        stream = _Stream(stream_id)
        self._streams[stream_id] = stream
        stream.task = asyncio.ensure_future(self._answer(stream))

    async def _answer(self, stream: _Stream) -> None:
        assert self._opener is not None
        try:
            connection = await self._opener()
        except (OSError, TimeoutError):
            connection = None
        if connection is None:
            self._drop(stream)
            with contextlib.suppress(Exception):
                await self._send(frame(CLOSE, stream.id))
            return
        reader, stream.writer = connection
        await self._run(stream, reader)

    # --- pumping ---------------------------------------------------------------------------
    async def _run(self, stream: _Stream, reader: asyncio.StreamReader) -> None:
        """Both directions of a stream until one ends; then the connection is closed and, if
        the peer did not close first, it is told."""
        outgoing = asyncio.ensure_future(self._pump_out(stream, reader))
        incoming = asyncio.ensure_future(self._pump_in(stream))
        peer_closed = False
        try:
            done, _ = await asyncio.wait({outgoing, incoming}, return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                if task.exception() is not None:  # a connection reset: the stream just ends
                    log.debug("tunnel stream %s: %r", stream.id, task.exception())
            peer_closed = incoming in done and incoming.exception() is None and incoming.result()
        finally:
            outgoing.cancel()
            incoming.cancel()
            self._drop(stream)
            if stream.writer is not None:
                stream.writer.close()
            if not peer_closed and not self.closed:
                with contextlib.suppress(Exception):
                    await self._send(frame(CLOSE, stream.id))

    async def _pump_out(self, stream: _Stream, reader: asyncio.StreamReader) -> None:
        """Local connection → peer, within the credit the peer granted."""
        while True:
            while stream.credit <= 0:
                stream.credit_event.clear()
                await stream.credit_event.wait()
            data = await reader.read(min(CHUNK_BYTES, stream.credit))
            if not data:
                return
            stream.credit -= len(data)
            await self._send(frame(DATA, stream.id, data))

    async def _pump_in(self, stream: _Stream) -> bool:
        """Peer → local connection; grants credit back once written out. True when the peer
        closed the stream."""
        writer = stream.writer
        assert writer is not None
        unacked = 0
        while True:
            data = await stream.inbox.get()
            if data is None:
                with contextlib.suppress(ConnectionError):
                    await writer.drain()
                return True
            writer.write(data)
            stream.queued -= len(data)
            unacked += len(data)
            if stream.inbox.empty() or unacked >= WINDOW_BYTES // 4:
                await writer.drain()
                await self._send(frame(WINDOW, stream.id, CREDIT.pack(unacked)))
                unacked = 0

    # --- ending ----------------------------------------------------------------------------
    def _drop(self, stream: _Stream) -> None:
        if self._streams.get(stream.id) is stream:
            del self._streams[stream.id]

    def _abort(self, stream: _Stream) -> None:
        self._drop(stream)
        if stream.task is not None:
            stream.task.cancel()
        if stream.writer is not None:
            stream.writer.close()
        self._spawn_send(frame(CLOSE, stream.id))

    def _spawn_send(self, message: bytes) -> None:
        async def send() -> None:
            with contextlib.suppress(Exception):
                await self._send(message)

        if not self.closed:
            task = asyncio.ensure_future(send())
            self._sends.add(task)
            task.add_done_callback(self._sends.discard)

    def close(self) -> None:
        """The WebSocket is gone: every stream's connection is closed at once (an engine sees
        its client leave; the gateway sees the engine connection break)."""
        self.closed = True
        for stream in list(self._streams.values()):
            self._drop(stream)
            if stream.task is not None and stream.task is not asyncio.current_task():
                stream.task.cancel()
            if stream.writer is not None:
                stream.writer.close()
