"""The JSONL reader on real files: JSON types kept, null vs absent, bad lines, resume, flat memory."""

from __future__ import annotations

import tracemalloc
from pathlib import Path

import orjson
import pytest

from syncengine.config import SourceConfig
from syncengine.errors import SourceError
from syncengine.readers import BadRow, JsonlReader, Row, SourceRow, open_reader


def jsonl_file(tmp_path: Path, content: bytes | str, **options: str) -> SourceConfig:
    path = tmp_path / "export.jsonl"
    path.write_bytes(content.encode() if isinstance(content, str) else content)
    return SourceConfig(kind="jsonl", path=path, **options)


async def read_all(source: SourceConfig, start_after: int = 0) -> list[Row]:
    async with open_reader(source, start_after=start_after) as reader:
        return [row async for row in reader]


async def test_objects_keep_json_types(tmp_path: Path) -> None:
    """Values keep their JSON types; null stays None, a missing key stays missing."""
    source = jsonl_file(tmp_path, '{"id": 1, "name": "Ada", "vip": true, "tags": ["a"], "x": null}\n{"id": 2}\n')
    assert isinstance(open_reader(source), JsonlReader)
    assert await read_all(source) == [
        SourceRow(seq=1, values={"id": 1, "name": "Ada", "vip": True, "tags": ["a"], "x": None}),
        SourceRow(seq=2, values={"id": 2}),
    ]


async def test_seq_is_the_line_number(tmp_path: Path) -> None:
    """Blank lines are skipped but counted, so seq names the line; a last line without newline counts."""
    rows = await read_all(jsonl_file(tmp_path, '\n{"a": 1}\n   \n\r\n{"a": 2}'))
    assert rows == [SourceRow(seq=2, values={"a": 1}), SourceRow(seq=5, values={"a": 2})]


@pytest.mark.parametrize(
    ("line", "reason"),
    [
        ("[1, 2]", "line is an array, not a JSON object"),
        ('"text"', "line is a string, not a JSON object"),
        ("42", "line is a number, not a JSON object"),
        ("null", "line is null, not a JSON object"),
        ('{"a": 1', "not valid JSON"),
        ("id,name", "not valid JSON"),
        ('{"a": 1} {"b": 2}', "not valid JSON"),
    ],
    ids=["array", "string", "number", "null", "truncated", "csv", "two-objects"],
)
async def test_bad_lines_are_bad_rows(tmp_path: Path, line: str, reason: str) -> None:
    """A line that is not one JSON object is a BadRow with its text; the lines around it come through."""
    rows = await read_all(jsonl_file(tmp_path, f'{{"n": 1}}\n{line}\n{{"n": 3}}\n'))
    assert rows[0] == SourceRow(seq=1, values={"n": 1})
    assert isinstance(rows[1], BadRow)
    assert (rows[1].seq, rows[1].raw) == (2, line)
    assert rows[1].reason.startswith(reason)
    assert rows[2] == SourceRow(seq=3, values={"n": 3})


async def test_invalid_utf8_spoils_only_its_line(tmp_path: Path) -> None:
    """Bytes that are not UTF-8 make that line a BadRow naming the byte."""
    rows = await read_all(jsonl_file(tmp_path, b'{"n": 1}\n{"n": "\xff"}\n{"n": 3}\n'))
    assert rows[1] == BadRow(seq=2, raw='{"n": "\ufffd"}', reason="byte 0xff at position 7 is not valid utf-8")
    assert [r.seq for r in rows if isinstance(r, SourceRow)] == [1, 3]


async def test_other_encoding(tmp_path: Path) -> None:
    """A configured single-byte encoding is decoded before parsing."""
    source = jsonl_file(tmp_path, '{"name": "Zoë"}\n'.encode("latin-1"), encoding="iso8859-1")
    assert await read_all(source) == [SourceRow(seq=1, values={"name": "Zoë"})]


async def test_bom_is_stripped(tmp_path: Path) -> None:
    """A UTF-8 byte order mark before the first object is ignored."""
    rows = await read_all(jsonl_file(tmp_path, b'\xef\xbb\xbf{"a": 1}\n'))
    assert rows == [SourceRow(seq=1, values={"a": 1})]


@pytest.mark.parametrize("content", ["", "\n", "\n \n"], ids=["empty", "newline", "blank-lines"])
async def test_nothing_to_read(tmp_path: Path, content: str) -> None:
    """An empty file yields nothing and no error."""
    assert await read_all(jsonl_file(tmp_path, content)) == []


async def test_missing_file_is_a_source_error(tmp_path: Path) -> None:
    """A file that cannot be opened is a SourceError naming it."""
    with pytest.raises(SourceError, match="cannot open"):
        await read_all(SourceConfig(kind="jsonl", path=tmp_path / "nope.jsonl"))


@pytest.mark.parametrize("start_after", [0, 1, 3, 5, 99], ids=lambda n: f"after-{n}")
async def test_start_after_skips_lines(tmp_path: Path, start_after: int) -> None:
    """Resuming after seq n yields exactly what came after n, with the same seqs."""
    source = jsonl_file(tmp_path, '{"a": 1}\nnope\n\n{"a": 4}\n{"a": 5}\n')
    everything = await read_all(source)
    assert [row.seq for row in everything] == [1, 2, 4, 5]
    assert await read_all(source, start_after) == [row for row in everything if row.seq > start_after]


@pytest.mark.slow
async def test_large_file_streams_in_flat_memory(tmp_path: Path) -> None:
    """A 200k-line file is read lazily: peak traced memory stays far below the file's size."""
    path = tmp_path / "big.jsonl"
    with path.open("wb") as out:
        for i in range(200_000):
            out.write(orjson.dumps({"id": i, "name": f"Name {i}", "note": "x" * 60}) + b"\n")
    size = path.stat().st_size
    tracemalloc.start()
    try:
        count = 0
        async with open_reader(SourceConfig(kind="jsonl", path=path)) as reader:
            async for row in reader:
                assert isinstance(row, SourceRow)
                count += 1
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert count == 200_000
    assert size > 15_000_000
    assert peak < 4_000_000, f"peak {peak} bytes for a {size}-byte file"
