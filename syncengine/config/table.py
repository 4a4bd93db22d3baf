"""A TOML table under validation: typed getters that name the file, the key path and what was expected."""

from __future__ import annotations

import difflib
import os
import re
from collections.abc import Iterable
from pathlib import Path

from syncengine.errors import ConfigError

__all__ = ["Table", "describe"]


def describe(value: object) -> str:
    kind = {
        str: "a string", bool: "a boolean", int: "an integer", float: "a number", list: "an array",
        dict: "a table",
    }.get(type(value), type(value).__name__)  # fmt: skip
    if isinstance(value, dict | list):
        return kind
    shown = repr(value)
    return f"{shown[:60]}... ({kind})" if len(shown) > 60 else f"{shown} ({kind})"


class Table:
    """A TOML table under validation: knows its key path, and refuses keys it was not told about."""

    __slots__ = ("data", "file", "where")

    def __init__(self, file: str, path: str, data: dict[str, object], allowed: Iterable[str]) -> None:
        self.file = file
        self.where = path  # this table's key path
        self.data = data
        known = tuple(allowed)
        for key in data:
            if key not in known:
                hint = difflib.get_close_matches(key, known, n=1)
                maybe = f" (did you mean {hint[0]!r}?)" if hint else ""
                raise self.error(key, f"unknown key {key!r}{maybe}; expected one of: {', '.join(known)}")

    def key(self, key: str) -> str:
        return f"{self.where}.{key}" if self.where else key

    def error(self, key: str, expected: str) -> ConfigError:
        return ConfigError(self.file, self.key(key), expected)

    def wrong(self, key: str, expected: str) -> ConfigError:
        return self.error(key, f"{expected}, got {describe(self.data[key])}")

    def missing(self, key: str, expected: str) -> ConfigError:
        return self.error(key, f"{expected} (missing)")

    def __contains__(self, key: str) -> bool:
        return key in self.data

    def string(
        self, key: str, expected: str, *, default: str | None = None, pattern: re.Pattern[str] | None = None
    ) -> str:
        if key not in self.data:
            if default is None:
                raise self.missing(key, expected)
            return default
        value = self.data[key]
        if not isinstance(value, str) or not value.strip() or (pattern and not pattern.fullmatch(value)):
            raise self.wrong(key, expected)
        return value

    def optional_string(self, key: str, expected: str, pattern: re.Pattern[str] | None = None) -> str | None:
        return self.string(key, expected, pattern=pattern) if key in self.data else None

    def choice(self, key: str, choices: Iterable[str], *, default: str | None = None) -> str:
        choices = tuple(choices)
        expected = "one of " + ", ".join(repr(c) for c in choices)
        value = self.string(key, expected, default=default)
        if value not in choices:
            raise self.wrong(key, expected)
        return value

    def integer(self, key: str, low: int, high: int | None, default: int | None) -> int:
        expected = f"an integer from {low} to {high}" if high is not None else f"an integer >= {low}"
        if key not in self.data:
            if default is None:
                raise self.missing(key, expected)
            return default
        value = self.data[key]
        # bool is an int in Python; `true` is not a number in TOML.
        if type(value) is not int or value < low or (high is not None and value > high):
            raise self.wrong(key, expected)
        return value

    def number(self, key: str, expected: str, *, low: float, inclusive: bool) -> float | None:
        if key not in self.data:
            return None
        value = self.data[key]
        if type(value) not in (int, float):
            raise self.wrong(key, expected)
        assert isinstance(value, int | float)
        if value != value or value == float("inf") or value < low or (value == low and not inclusive):
            raise self.wrong(key, expected)
        return float(value)

    def boolean(self, key: str, default: bool) -> bool:
        if key not in self.data:
            return default
        value = self.data[key]
        if not isinstance(value, bool):
            raise self.wrong(key, "true or false")
        return value

    def path(self, key: str, base: Path) -> Path | None:
        value = self.optional_string(key, "a non-empty string naming a file")
        if value is None:
            return None
        # An absolute path replaces base; normpath folds "../" without following symlinks.
        return Path(os.path.normpath(base / Path(value).expanduser()))

    def strings(self, key: str, expected: str, check: re.Pattern[str] | tuple[str, ...]) -> tuple[str, ...]:
        value = self.data[key]
        if not isinstance(value, list):
            raise self.wrong(key, expected)
        for i, item in enumerate(value):
            ok = isinstance(item, str) and (
                check.fullmatch(item) is not None if isinstance(check, re.Pattern) else item in check
            )
            if not ok:
                raise ConfigError(self.file, f"{self.key(key)}[{i}]", f"{expected}, got {describe(item)}")
        if len(set(value)) != len(value):
            raise self.wrong(key, f"{expected}, without repeats")
        return tuple(value)

    def raw_table(self, key: str) -> dict[str, object]:
        if key not in self.data:
            raise self.missing(key, f"a {self.key(key)} table")
        value = self.data[key]
        if not isinstance(value, dict):
            raise self.wrong(key, "a table")
        return value

    def table(self, key: str, allowed: Iterable[str]) -> Table:
        return Table(self.file, self.key(key), self.raw_table(key), allowed)
