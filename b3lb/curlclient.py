"""A lean asyncio driver for libcurl (pycurl): keep-alive HTTP to nodes with little Python per request.

Tornado's CurlAsyncHTTPClient sets some forty options, parses every header line in Python and
builds several objects per request; that glue was the largest cost of a forwarded call and of
a poll cycle. Here each easy handle is set up once, a request sets only what differs (URL,
method, body, timeouts), and the status and Content-Type are read from libcurl afterwards.
"""

from __future__ import annotations

import asyncio
import io
from collections.abc import Callable

import pycurl


class CurlError(Exception):
    """A transfer that produced no HTTP answer (refused, timed out, reset, bad URL)."""


class CurlClient:
    def __init__(self, *, max_connections: int, user_agent: str, keep_connections: int = 5000) -> None:
        self._loop: asyncio.AbstractEventLoop | None = None  # the running loop, on first use
        self._multi = pycurl.CurlMulti()
        self._multi.setopt(pycurl.M_SOCKETFUNCTION, self._on_socket)
        self._multi.setopt(pycurl.M_TIMERFUNCTION, self._on_timer)
        self._multi.setopt(pycurl.M_MAXCONNECTS, keep_connections)
        self._free: list[pycurl.Curl] = []
        self._user_agent = user_agent
        self._slots = asyncio.Semaphore(max_connections)
        self._timer: asyncio.TimerHandle | None = None
        self._watched: dict[int, int] = {}  # fd -> pycurl POLL_* flags being watched
        self._pending: dict[pycurl.Curl, tuple[asyncio.Future[tuple[int, bytes, str]], io.BytesIO]] = {}
        self._closed = False

    def _handle(self) -> pycurl.Curl:
        if self._free:
            return self._free.pop()
        curl = pycurl.Curl()
        curl.setopt(pycurl.NOSIGNAL, 1)
        curl.setopt(pycurl.FOLLOWLOCATION, 0)
        curl.setopt(pycurl.USERAGENT, self._user_agent)
        curl.setopt(pycurl.ACCEPT_ENCODING, "")  # any encoding libcurl can decode
        curl.setopt(pycurl.TCP_NODELAY, 1)
        return curl

    async def fetch(
        self,
        url: str,
        *,
        method: str = "GET",
        body: bytes | None = None,
        headers: list[str] | None = None,
        connect_timeout: float,
        timeout: float,
    ) -> tuple[int, bytes, str]:
        """(status, body, Content-Type) of one request; CurlError when there is no answer."""
        if self._closed:
            raise CurlError("client closed")
        if self._loop is None:
            self._loop = asyncio.get_running_loop()
        async with self._slots:
            curl = self._handle()
            buffer = io.BytesIO()
            curl.setopt(pycurl.URL, url)
            curl.setopt(pycurl.WRITEDATA, buffer)
            curl.setopt(pycurl.CONNECTTIMEOUT_MS, int(connect_timeout * 1000))
            curl.setopt(pycurl.TIMEOUT_MS, int(timeout * 1000))
            curl.setopt(pycurl.HTTPHEADER, headers or [])
            if method == "POST":
                curl.setopt(pycurl.POST, 1)
                curl.setopt(pycurl.POSTFIELDS, body or b"")
            else:
                curl.setopt(pycurl.HTTPGET, 1)
            future: asyncio.Future[tuple[int, bytes, str]] = self._loop.create_future()
            self._pending[curl] = (future, buffer)
            self._multi.add_handle(curl)
            self._drive(pycurl.SOCKET_TIMEOUT, 0)
            try:
                return await future
            finally:
                if curl in self._pending and not self._closed:  # cancelled while running
                    del self._pending[curl]
                    self._multi.remove_handle(curl)
                if not self._closed:
                    self._free.append(curl)

    def _on_socket(self, event: int, fd: int, multi: object, data: object) -> None:
        assert self._loop is not None
        watched = self._watched.get(fd, 0)
        if watched & pycurl.POLL_IN and not event & pycurl.POLL_IN:
            self._loop.remove_reader(fd)
        if watched & pycurl.POLL_OUT and not event & pycurl.POLL_OUT:
            self._loop.remove_writer(fd)
        if event == pycurl.POLL_REMOVE:
            self._watched.pop(fd, None)
            return
        if event & pycurl.POLL_IN and not watched & pycurl.POLL_IN:
            self._loop.add_reader(fd, self._drive, fd, pycurl.CSELECT_IN)
        if event & pycurl.POLL_OUT and not watched & pycurl.POLL_OUT:
            self._loop.add_writer(fd, self._drive, fd, pycurl.CSELECT_OUT)
        self._watched[fd] = event

    def _on_timer(self, timeout_ms: int) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if timeout_ms >= 0 and self._loop is not None:
            callback: Callable[[], None] = lambda: self._drive(pycurl.SOCKET_TIMEOUT, 0)  # noqa: E731
            self._timer = self._loop.call_later(timeout_ms / 1000.0, callback)

    def _drive(self, fd: int, action: int) -> None:
        while True:
            try:
                code, _running = self._multi.socket_action(fd, action)
            except pycurl.error as exc:
                code = exc.args[0]
            if code != pycurl.E_CALL_MULTI_PERFORM:
                break
        self._collect()

    def _collect(self) -> None:
        while True:
            _queued, done, failed = self._multi.info_read()
            for curl in done:
                self._finish(curl, None)
            for curl, _errno, message in failed:
                self._finish(curl, message or "transfer failed")
            if _queued == 0:
                break

    def _finish(self, curl: pycurl.Curl, error: str | None) -> None:
        self._multi.remove_handle(curl)
        future, buffer = self._pending.pop(curl, (None, None))
        if future is None or future.done():
            return
        if error is not None:
            future.set_exception(CurlError(error))
            return
        status = curl.getinfo(pycurl.RESPONSE_CODE)
        content_type = curl.getinfo(pycurl.CONTENT_TYPE) or ""
        future.set_result((status, buffer.getvalue(), content_type))

    def close(self) -> None:
        self._closed = True
        if self._timer is not None:
            self._timer.cancel()
        for fd in list(self._watched):
            if self._loop is not None and not self._loop.is_closed():
                self._loop.remove_reader(fd)
                self._loop.remove_writer(fd)
        self._watched.clear()
        for curl, (future, _buffer) in list(self._pending.items()):
            self._multi.remove_handle(curl)
            if not future.done():
                future.set_exception(CurlError("client closed"))
        self._pending.clear()
        for curl in self._free:
            curl.close()
        self._free.clear()
        self._multi.close()
