"""The transport owns aiohttp: every aiohttp error maps to TransportError, with maybe_sent right."""

from __future__ import annotations

import inspect
import socket

import aiohttp
import anyio
import pytest

from syncengine.crm.transport import ERROR_MAP, Transport
from syncengine.errors import TransportError


def test_every_aiohttp_client_error_is_mapped_to_a_specific_entry() -> None:
    """No aiohttp.ClientError subclass falls through to the generic fallback unnoticed."""
    mapped = {cls for cls, *_ in ERROR_MAP}
    unmapped = [
        name
        for name, cls in vars(aiohttp).items()
        if inspect.isclass(cls)
        and issubclass(cls, aiohttp.ClientError)
        and cls is not aiohttp.ClientError
        and not any(issubclass(cls, m) and m is not aiohttp.ClientError for m in mapped)
    ]
    assert unmapped == []


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def test_refused_connection_was_not_sent() -> None:
    """Nothing listening: the error says the CRM cannot have seen the call."""
    url = f"http://127.0.0.1:{_free_port()}/crm/v7/Leads"
    async with Transport(timeout=5, max_connections=2) as transport:
        with pytest.raises(TransportError) as info:
            await transport.request("PUT", url, headers={}, body=b"{}")
    assert info.value.maybe_sent is False and info.value.retryable


async def test_dropped_connection_may_have_been_sent() -> None:
    """A server that reads the request and hangs up: maybe applied, reported, and never silently resent."""
    received = 0

    async def handle(stream: anyio.abc.SocketStream) -> None:
        nonlocal received
        async with stream:
            await stream.receive(65536)
            received += 1

    listener = await anyio.create_tcp_listener(local_host="127.0.0.1")
    port = listener.extra(anyio.abc.SocketAttribute.local_port)
    async with listener, anyio.create_task_group() as tg:
        tg.start_soon(listener.serve, handle)
        async with Transport(timeout=5, max_connections=2) as transport:
            with pytest.raises(TransportError) as info:
                await transport.request("PUT", f"http://127.0.0.1:{port}/x", headers={}, body=b"{}")
        tg.cancel_scope.cancel()
    assert info.value.maybe_sent is True
    assert received == 1


async def test_timeout_may_have_been_sent() -> None:
    """A server that never answers: a read timeout, maybe applied."""

    async def handle(stream: anyio.abc.SocketStream) -> None:
        async with stream:
            await stream.receive(65536)
            await anyio.sleep(10)

    listener = await anyio.create_tcp_listener(local_host="127.0.0.1")
    port = listener.extra(anyio.abc.SocketAttribute.local_port)
    async with listener, anyio.create_task_group() as tg:
        tg.start_soon(listener.serve, handle)
        async with Transport(timeout=0.3, max_connections=2) as transport:
            with pytest.raises(TransportError) as info:
                await transport.request("PUT", f"http://127.0.0.1:{port}/x", headers={}, body=b"{}")
        tg.cancel_scope.cancel()
    assert info.value.maybe_sent is True and "timed out" in info.value.reason
