"""How workers reach the flow's limiter: a small service in the flow's process.

One `multiprocessing.connection.Listener` per process, on 127.0.0.1, on a port the
system picks, with a random authentication key, serves the limiters of every flow run
of the process that workers need to reach. It starts when a run of a flow with limits
is first packed to travel (`TaskRun.call`), so processes whose flows run in one
process never open it, and stays for the life of the process: a flow run only adds
its limiter to it (`serve`) and takes it out again as it ends (`stop`), which costs
no thread and no socket. A `LimiterHandle` (the address, the key and the limiter's
token) travels in each `RunCall`; on a worker, `LimiterHandle.limiter()` gives a
`LimiterClient`, one connection per worker process and flow run, made when a run
there first takes a slot or books a call, which speaks the `Limiter` protocol over
it.

Messages are pickled tuples. A client first names its limiter: ``("limiter",
token)``; the service closes a connection whose limiter it does not serve (any
more). Then, client to service: ``("acquire", id, slots)``, answered ``("acquired",
id)`` or ``("queued", id)``, then ``("granted", id)`` once granted; ``("cancel",
id)``, answered ``("cancelled", id, withdrawn)``; ``("release", slots)``;
``("reserve", id, name, occupy)``, answered ``("delay", id, seconds)``. When a
worker's connection closes (it died), the service gives back the slots it held and
withdraws its queued requests; when its flow run ends, the service closes it.
"""

from __future__ import annotations

import itertools
import logging
import os
import pickle
import threading
from collections.abc import Callable, Mapping
from multiprocessing.connection import Client, Connection, Listener
from typing import TYPE_CHECKING, Any, final

if TYPE_CHECKING:
    from baton._admission import Limiter, Plans
    from baton._limits import LocalLimiter

__all__ = ["LimiterClient", "LimiterHandle", "RunLimits", "serve", "stop"]

logger = logging.getLogger("baton")

# The service of this process, once a limiter was served; a handle that comes back
# here (a runner that runs calls in the flow's own process) uses the limiter itself.
_service: _Service | None = None
_clients: dict[tuple[tuple[str, int], bytes], LimiterClient] = {}
_MAX_CLIENTS = 1024
_lock = threading.Lock()


@final
class LimiterHandle:
    """The address of a flow run's limiter: picklable, small, usable from any process
    that can reach the flow's process at that address."""

    __slots__ = ("address", "authkey", "concurrency_limits", "rate_limits", "token")

    def __init__(
        self,
        address: tuple[str, int],
        authkey: bytes,
        concurrency_limits: Mapping[str, int],
        rate_limits: Mapping[str, str],
        token: bytes = b"",
    ) -> None:
        self.address = address
        self.authkey = authkey
        self.concurrency_limits = dict(concurrency_limits)
        self.rate_limits = dict(rate_limits)
        self.token = token
        """Which of the limiters served at `address` this is."""

    def __reduce__(self) -> tuple[Any, ...]:
        return (
            LimiterHandle,
            (self.address, self.authkey, self.concurrency_limits, self.rate_limits, self.token),
        )

    def __repr__(self) -> str:
        return f"<LimiterHandle {self.address[0]}:{self.address[1]}>"

    def limiter(self) -> Limiter:
        service = _service
        if service is not None and service.address == self.address:
            served = service.limiters.get(self.token)
            if served is not None:
                return served
        key = (self.address, self.token)
        client = _clients.get(key)
        if client is None or client.closed:
            with _lock:
                client = _clients.get(key)
                if client is None or client.closed:
                    if len(_clients) >= _MAX_CLIENTS:
                        # Most are of flow runs long ended (a warm worker serves flow run
                        # after flow run); a run that holds one keeps it in its RunLimits.
                        _clients.clear()
                    client = _clients[key] = LimiterClient(self)
        return client


@final
class RunLimits:
    """The limits part of a `RunCall`: how a worker reaches the flow's limiter, and the
    limits whose slot the run holds (which the runs it submits share)."""

    __slots__ = ("_client", "_packed", "handle", "held")

    def __init__(self, handle: LimiterHandle, held: frozenset[str]) -> None:
        self.handle = handle
        self.held = held
        self._packed: bytes | None = None
        self._client: LimiterClient | None = None

    def __reduce__(self) -> tuple[Any, ...]:
        return (_unpack, (self.to_bytes(),))

    def to_bytes(self) -> bytes:
        """This, pickled: made once, and the same for every run that carries it (a
        runner that sends many runs can send these bytes beside each run's arguments;
        `from_bytes` turns them back into a `RunLimits` wherever the run executes)."""
        packed = self._packed
        if packed is None:
            packed = self._packed = pickle.dumps((self.handle, self.held), pickle.HIGHEST_PROTOCOL)
        return packed

    @staticmethod
    def from_bytes(data: bytes) -> RunLimits:
        """The `RunLimits` that `to_bytes` gave: one object per distinct value in each
        process, unpickled the first time only."""
        return _unpack(data)

    def limiter(self) -> Limiter:
        """The flow's limiter: itself in the flow's process, a client of it elsewhere."""
        client = self._client
        if client is not None and not client.closed:
            return client  # a worker's runs of one flow run, one after the other
        limiter = self.handle.limiter()
        if isinstance(limiter, LimiterClient):
            self._client = limiter
        return limiter


# The RunLimits unpickled in this process, by their pickle: one object for the runs that
# share one, each unpickled once.
_unpacked: dict[bytes, RunLimits] = {}


def _unpack(packed: bytes) -> RunLimits:
    limits = _unpacked.get(packed)
    if limits is None:
        handle, held = pickle.loads(packed)
        limits = RunLimits(handle, held)
        limits._packed = packed
        if len(_unpacked) >= 1024:
            _unpacked.clear()  # the limits of flow runs long ended
        _unpacked[packed] = limits
    return limits


# -- the service (in the flow's process) ------------------------------------------------


@final
class _Service:
    """The process's service: accepts workers' connections and serves each the limiter
    it names, for as long as that limiter's flow run goes on."""

    def __init__(self) -> None:
        self.limiters: dict[bytes, LocalLimiter] = {}
        self.authkey = os.urandom(32)
        self.listener = Listener(("127.0.0.1", 0), family="AF_INET", authkey=self.authkey)
        address = self.listener.address
        self.address: tuple[str, int] = (str(address[0]), int(address[1]))
        # Each open connection, with the token of the limiter it speaks to (None until
        # it names it).
        self.connections: dict[Connection, bytes | None] = {}
        self._connections_lock = threading.Lock()
        threading.Thread(target=self._accept, name="baton-limits", daemon=True).start()

    def add(self, limiter: LocalLimiter) -> bytes:
        """Serve `limiter`; the token its handle names it by."""
        token = os.urandom(16)
        self.limiters[token] = limiter
        return token

    def remove(self, token: bytes) -> None:
        """Stop serving the limiter of `token` (its flow run ended): its connections close,
        and what they held goes back to it."""
        self.limiters.pop(token, None)
        with self._connections_lock:
            ended = [c for c, named in self.connections.items() if named == token]
        for connection in ended:
            self._close_once(connection)

    def _accept(self) -> None:
        while True:  # for the life of the process
            try:
                connection = self.listener.accept()
            except Exception:
                logger.debug("A connection to the limits service failed", exc_info=True)
                continue
            with self._connections_lock:
                self.connections[connection] = None
            threading.Thread(
                target=self._serve, args=(connection,), name="baton-limits-client", daemon=True
            ).start()

    def _limiter_named(self, connection: Connection) -> LocalLimiter | None:
        """Read which limiter `connection` speaks to: None if this service does not serve
        it (its flow run ended) or the connection says something else first."""
        try:
            hello = connection.recv()
        except Exception:
            return None
        if not (isinstance(hello, tuple) and len(hello) == 2 and hello[0] == "limiter"):
            return None
        token = hello[1]
        if self.limiters.get(token) is None:
            return None
        with self._connections_lock:
            if connection not in self.connections:
                return None  # closed meanwhile
            self.connections[connection] = token
        # Its flow run may have ended between the look-up and the line above, after
        # `remove` closed the connections it knew of: read it again.
        return self.limiters.get(token)

    def _serve(self, connection: Connection) -> None:
        limiter = self._limiter_named(connection)
        if limiter is None:
            self._close_once(connection)
            return
        send_lock = threading.Lock()
        held: dict[str, int] = {}
        tickets: dict[int, object] = {}
        state_lock = threading.Lock()

        def send(message: tuple[Any, ...]) -> None:
            with send_lock:
                try:
                    connection.send(message)
                except (OSError, EOFError):
                    pass

        def take(slots: Mapping[str, int]) -> None:
            with state_lock:
                for name, count in slots.items():
                    held[name] = held.get(name, 0) + count

        def granted_later(request: int, slots: Mapping[str, int]) -> Callable[[], None]:
            def granted() -> None:
                with state_lock:
                    tickets.pop(request, None)
                take(slots)
                send(("granted", request))

            return granted

        try:
            while True:
                message = connection.recv()
                kind = message[0]
                if kind == "acquire":
                    _, request, slots = message
                    with state_lock:
                        ticket = limiter.acquire(slots, granted_later(request, slots))
                        if ticket is not None:
                            tickets[request] = ticket
                    if ticket is None:
                        take(slots)
                        send(("acquired", request))
                    else:
                        send(("queued", request))
                elif kind == "release":
                    slots = message[1]
                    with state_lock:
                        for name, count in slots.items():
                            held[name] = held.get(name, 0) - count
                    limiter.release(slots)
                elif kind == "reserve":
                    _, request, name, occupy = message
                    send(("delay", request, limiter.reserve(name, occupy)))
                elif kind == "cancel":
                    request = message[1]
                    with state_lock:
                        ticket = tickets.pop(request, None)
                    withdrawn = ticket is not None and limiter.cancel(ticket)
                    send(("cancelled", request, withdrawn))
        except (EOFError, OSError):
            pass  # the worker went away
        except Exception:
            # Closed under the reading thread as the flow run ended, or a message that
            # makes no sense: either way this connection is done.
            logger.debug("The limits service dropped a connection", exc_info=True)
        finally:
            self._close_once(connection)
            # The worker is gone: what it held or asked for goes back.
            with state_lock:
                waiting = list(tickets.values())
                tickets.clear()
            for ticket in waiting:
                limiter.cancel(ticket)
            with state_lock:
                left = {name: count for name, count in held.items() if count > 0}
                held.clear()
            if left:
                limiter.release(left)

    def _close_once(self, connection: Connection) -> None:
        """Close `connection` unless it was closed already: by the thread serving it as
        it ends, or by `remove` as its flow run ends, whichever comes first (closing a
        file descriptor twice could close another one that reused its number)."""
        with self._connections_lock:
            if connection not in self.connections:
                return
            del self.connections[connection]
        try:
            connection.close()
        except OSError:
            pass


def serve(limiter: LocalLimiter) -> LimiterHandle:
    """Serve `limiter` to workers (starting this process's service if need be); its
    handle."""
    global _service
    with _lock:
        service = _service
        if service is None:
            service = _service = _Service()
    token = service.add(limiter)
    return LimiterHandle(
        service.address, service.authkey, limiter.concurrency_limits, limiter.rate_limits, token
    )


def stop(handle: LimiterHandle) -> None:
    """Stop serving the limiter of `handle` (the flow run ended)."""
    service = _service
    if service is not None and service.address == handle.address:
        service.remove(handle.token)


def _after_fork_in_child() -> None:
    # A process forked from this one has the service's socket but not its threads: it
    # starts a service of its own if it needs one.
    global _service, _lock
    _service = None
    _lock = threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


# -- the client (on a worker) -------------------------------------------------------------


@final
class LimiterClient:
    """A flow's limiter as seen from a worker process: the `Limiter` protocol over one
    connection to the flow's process."""

    def __init__(self, handle: LimiterHandle) -> None:
        self.handle = handle
        self._run_limits: dict[frozenset[str], RunLimits] = {}
        self.plans: Plans = {}
        self.concurrency_limits = handle.concurrency_limits
        self.rate_limits = handle.rate_limits
        # Connected when first needed: runs that take no slot and book no call on the
        # worker (most of them) cost the flow's process no connection and no thread.
        self._connection: Connection | None = None
        self._send_lock = threading.Lock()
        self._lock = threading.Lock()
        self._ids = itertools.count(1)
        self._replies: dict[int, tuple[threading.Event, list[Any]]] = {}
        self._granted: dict[int, Callable[[], None]] = {}
        self.closed = False

    def _connect(self) -> Connection:
        """Under `_send_lock`: the connection to the flow's process, made on first use."""
        connection = self._connection
        if connection is None:
            handle = self.handle
            try:
                connection = Client(handle.address, family="AF_INET", authkey=handle.authkey)
            except OSError as exc:
                self.closed = True
                raise ConnectionError(
                    f"The flow's process, which keeps the flow run's limits, could not be "
                    f"reached at {handle.address[0]}:{handle.address[1]} ({exc}): the flow "
                    "run ended, or this worker cannot connect to the flow's machine."
                ) from exc
            try:
                connection.send(("limiter", handle.token))
            except OSError as exc:
                connection.close()
                self.closed = True
                raise ConnectionError(_LOST) from exc
            self._connection = connection
            threading.Thread(
                target=self._read, args=(connection,), name="baton-limits-reader", daemon=True
            ).start()
        return connection

    def _send(self, message: tuple[Any, ...]) -> None:
        with self._send_lock:
            connection = self._connect()
            try:
                connection.send(message)
            except OSError as exc:
                self.closed = True
                raise ConnectionError(_LOST) from exc

    def _ask(self, message: tuple[Any, ...], request: int) -> Any:
        event = threading.Event()
        box: list[Any] = []
        with self._lock:
            self._replies[request] = (event, box)
        try:
            self._send(message)
        except BaseException:
            with self._lock:
                self._replies.pop(request, None)
                self._granted.pop(request, None)
            raise
        event.wait()
        if not box:
            raise ConnectionError(_LOST)
        return box[0]

    def _read(self, connection: Connection) -> None:
        try:
            while True:
                message = connection.recv()
                kind, request = message[0], message[1]
                if kind == "granted":
                    with self._lock:
                        granted = self._granted.pop(request, None)
                    if granted is not None:
                        granted()
                    continue
                with self._lock:
                    waiter = self._replies.pop(request, None)
                if waiter is not None:
                    waiter[1].append(message)
                    waiter[0].set()
        except Exception:
            pass  # the flow run ended (its service closed), or the connection broke
        finally:
            self.closed = True
            with self._lock:
                waiters = list(self._replies.values())
                self._replies.clear()
            for event, _ in waiters:
                event.set()

    def acquire(self, slots: Mapping[str, int], granted: Callable[[], None]) -> object | None:
        request = next(self._ids)
        with self._lock:
            self._granted[request] = granted
        reply = self._ask(("acquire", request, dict(slots)), request)
        if reply[0] == "acquired":
            with self._lock:
                self._granted.pop(request, None)
            return None
        return request

    def try_acquire(self, slots: Mapping[str, int]) -> bool:
        ticket = self.acquire(slots, _nothing)
        # Queued: withdraw it, unless it was granted meanwhile.
        return ticket is None or not self.cancel(ticket)

    def cancel(self, ticket: object) -> bool:
        if not isinstance(ticket, int):
            return False
        with self._lock:
            if ticket not in self._granted:
                return False  # granted already
        # The reply is matched by the ticket's id: the service answers ("cancelled", id).
        reply = self._ask(("cancel", ticket), ticket)
        withdrawn = bool(reply[2])
        if withdrawn:
            with self._lock:
                self._granted.pop(ticket, None)
        return withdrawn

    def release(self, slots: Mapping[str, int]) -> None:
        self._send(("release", dict(slots)))

    def run_limits(self, held: frozenset[str]) -> RunLimits:
        """What travels with the call of a run submitted here that holds `held`."""
        limits = self._run_limits.get(held)
        if limits is None:
            limits = self._run_limits[held] = RunLimits(self.handle, held)
        return limits

    def reserve(self, name: str, occupy: int = 1) -> float:
        request = next(self._ids)
        reply = self._ask(("reserve", request, name, occupy), request)
        delay: float = reply[2]
        return delay


_LOST = (
    "The connection to the flow's process, which keeps the flow run's limits, was lost "
    "(the flow run ended, or its process is gone)."
)


def _nothing() -> None:
    pass
