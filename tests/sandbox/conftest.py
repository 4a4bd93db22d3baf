"""Fixtures for the sandbox tests: a running sandbox seeded with the doc-sample records, and a client."""

from __future__ import annotations

from collections.abc import AsyncIterator

import aiohttp
import pytest

from syncengine.sandbox import Sandbox, SandboxOptions
from tests.sandbox.helpers import SEED, TOKEN, Api


@pytest.fixture
async def sb() -> AsyncIterator[Sandbox]:
    """A running sandbox with default options, a static token and the doc-sample records."""
    async with Sandbox(SandboxOptions(static_tokens=(TOKEN,))) as sandbox:
        sandbox.state.load(SEED)
        yield sandbox


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    """An aiohttp client session."""
    async with aiohttp.ClientSession() as s:
        yield s


@pytest.fixture
def api(sb: Sandbox, session: aiohttp.ClientSession) -> Api:
    """The HTTP helper bound to the default sandbox."""
    return Api(sb=sb, session=session)
