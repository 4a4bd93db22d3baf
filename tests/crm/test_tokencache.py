"""The token cache file: private, replaced whole, keyed by hashes, locked across processes, never trusted blindly."""

from __future__ import annotations

import os
import time
from pathlib import Path

import anyio
import pytest

from syncengine.crm.tokencache import CachedToken, TokenCache, cache_key

TOKEN = "1000.c0ffee0123456789abcd.0123456789abcdef0123"
KEY = cache_key("https://accounts.zoho.com/oauth/v2/token", "client-id-1", "client-secret-1", "refresh-token-1")


def entry(**changes: object) -> CachedToken:
    values: dict[str, object] = {
        "access_token": TOKEN,
        "api_domain": "https://www.zohoapis.com",
        "expires_at": time.time() + 3600,
        "lifetime": 3600.0,
        **changes,
    }
    return CachedToken(**values)  # type: ignore[arg-type]


def test_an_entry_round_trips_in_a_file_only_its_owner_can_read(tmp_path: Path) -> None:
    """Written, the file is mode 0600, holds the token under a hash key, and no temporary file is left behind."""
    cache = TokenCache(tmp_path / "tokens.json")
    cache.write(KEY, entry())
    got = cache.read(KEY)
    assert got is not None and got.access_token == TOKEN and got.api_domain == "https://www.zohoapis.com"
    assert (tmp_path / "tokens.json").stat().st_mode & 0o777 == 0o600
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tokens.json"]
    text = (tmp_path / "tokens.json").read_text()
    for credential in ("client-id-1", "client-secret-1", "refresh-token-1", "accounts.zoho.com"):
        assert credential not in text
    assert cache.read(cache_key("https://accounts.zoho.com/oauth/v2/token", "client-id-1", "other", "x")) is None


def test_the_key_changes_with_every_credential() -> None:
    """Another accounts server, client, secret or refresh token is another entry: a token is never reused for it."""
    base = ("https://accounts.zoho.com/oauth/v2/token", "id", "secret", "refresh")
    keys = {cache_key(*base)}
    for i in range(4):
        changed = list(base)
        changed[i] += "x"
        keys.add(cache_key(*changed))
    assert len(keys) == 5 and all(len(k) == 64 for k in keys)


def test_repr_never_shows_the_token() -> None:
    """A cached token prints as ***."""
    assert TOKEN not in repr(entry()) and "***" in repr(entry())
    assert "unset" in repr(CachedToken(locked_until=1.0))


def test_other_keys_survive_a_write_and_dead_entries_go(tmp_path: Path) -> None:
    """Writing one key keeps the live entries of others; expired entries without a lockout are dropped."""
    cache = TokenCache(tmp_path / "tokens.json")
    cache.write("other", entry(access_token="1000.other"))
    cache.write("dead", entry(expires_at=time.time() - 1))
    cache.write("locked", CachedToken(locked_until=time.time() + 60))
    cache.write(KEY, entry())
    assert cache.read("dead") is None
    assert (cache.read("other") or CachedToken()).access_token == "1000.other"
    assert (cache.read("locked") or CachedToken()).locked_until > time.time()
    cache.write(KEY, None)
    assert cache.read(KEY) is None and cache.read("other") is not None


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604], ids=["world-readable", "group-readable", "other-readable"])
def test_a_file_others_can_read_is_ignored_and_replaced_private(tmp_path: Path, mode: int) -> None:
    """A cache someone loosened is not trusted (a planted token, a leaked one); the next write makes it 0600."""
    path = tmp_path / "tokens.json"
    cache = TokenCache(path)
    cache.write(KEY, entry())
    os.chmod(path, mode)
    assert cache.read(KEY) is None
    cache.write(KEY, entry())
    assert path.stat().st_mode & 0o777 == 0o600 and cache.read(KEY) is not None


@pytest.mark.parametrize(
    "content", [b"", b"{not json", b'{"version": 99, "entries": {}}', b"[1, 2]"], ids=["empty", "junk", "v99", "list"]
)
def test_a_broken_file_is_no_cache_not_an_error(tmp_path: Path, content: bytes) -> None:
    """A file that is not the cache's own JSON is read as empty, and a write replaces it."""
    path = tmp_path / "tokens.json"
    path.write_bytes(content)
    os.chmod(path, 0o600)
    cache = TokenCache(path)
    assert cache.read(KEY) is None
    cache.write(KEY, entry())
    assert cache.read(KEY) is not None


def test_an_unwritable_place_is_left_aside(tmp_path: Path) -> None:
    """A cache whose directory cannot be made is a warning, never a failed run."""
    blocker = tmp_path / "file"
    blocker.write_text("")
    cache = TokenCache(blocker / "sub" / "tokens.json")
    cache.write(KEY, entry())
    assert cache.read(KEY) is None


async def test_the_lock_is_exclusive_across_holders(tmp_path: Path) -> None:
    """Two holders of the lock (two processes, or two caches in one) never hold it at once."""
    path = tmp_path / "tokens.json"
    holding: list[int] = []
    overlaps = 0

    async def hold(cache: TokenCache, n: int) -> None:
        nonlocal overlaps
        async with cache.locked():
            overlaps += bool(holding)
            holding.append(n)
            await anyio.sleep(0.05)
            holding.remove(n)

    async with anyio.create_task_group() as tg:
        for n in range(5):
            tg.start_soon(hold, TokenCache(path, poll=0.01), n)
    assert overlaps == 0
    assert (tmp_path / "tokens.json.lock").stat().st_mode & 0o777 == 0o600


async def test_a_hung_holder_is_given_up_on(tmp_path: Path) -> None:
    """A lock held past the timeout (a hung process) does not stall the run for ever."""
    path = tmp_path / "tokens.json"
    async with TokenCache(path).locked():
        with anyio.fail_after(5):
            async with TokenCache(path, lock_timeout=0.2, poll=0.01).locked():
                pass
