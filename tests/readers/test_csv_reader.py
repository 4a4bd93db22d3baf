"""The CSV reader on real files: good rows, every kind of bad row, resume, and flat memory."""

from __future__ import annotations

import tracemalloc
from pathlib import Path

import pytest

from syncengine.config import SourceConfig
from syncengine.errors import SourceError
from syncengine.model import JSON
from syncengine.readers import BadRow, CsvReader, Reader, Row, SourceRow, open_reader


def csv_file(tmp_path: Path, content: bytes | str, **options: str) -> SourceConfig:
    path = tmp_path / "export.csv"
    path.write_bytes(content.encode() if isinstance(content, str) else content)
    return SourceConfig(kind="csv", path=path, **options)


async def read_all(source: SourceConfig, start_after: int = 0) -> list[Row]:
    async with open_reader(source, start_after=start_after) as reader:
        return [row async for row in reader]


async def test_rows_in_order_with_seq(tmp_path: Path) -> None:
    """Each data row is a SourceRow of strings; seq counts data rows, header excluded."""
    rows = await read_all(csv_file(tmp_path, "id,name\n1,Ada\n2,Grace\n"))
    assert rows == [
        SourceRow(seq=1, values={"id": "1", "name": "Ada"}),
        SourceRow(seq=2, values={"id": "2", "name": "Grace"}),
    ]


async def test_open_reader_returns_a_reader(tmp_path: Path) -> None:
    """open_reader picks the CSV reader, which satisfies the Reader protocol."""
    reader = open_reader(csv_file(tmp_path, "id\n1\n"))
    assert isinstance(reader, CsvReader)
    assert isinstance(reader, Reader)
    await reader.aclose()


@pytest.mark.parametrize(
    ("empty", "expected"),
    [("absent", {"id": "1", "c": "x"}), ("null", {"id": "1", "b": None, "c": "x"})],
    ids=["absent-leaves-key-out", "null-gives-none"],
)
async def test_empty_cells(tmp_path: Path, empty: str, expected: dict[str, JSON]) -> None:
    """An empty cell is left out (absent) or None (null), per the source's empty setting."""
    rows = await read_all(csv_file(tmp_path, 'id,b,c\n1,"",x\n', empty=empty))
    assert rows == [SourceRow(seq=1, values=expected)]


async def test_whitespace_cell_is_not_empty(tmp_path: Path) -> None:
    """Only a truly empty cell is empty; whitespace is kept for the mapping to judge."""
    rows = await read_all(csv_file(tmp_path, "id,b\n1, \n"))
    assert rows == [SourceRow(seq=1, values={"id": "1", "b": " "})]


@pytest.mark.parametrize(
    ("line", "reason"),
    [("1,2,3,4,5", "row has 5 cells, header has 4"), ("1,2", "row has 2 cells, header has 4")],
    ids=["too-many-cells", "too-few-cells"],
)
async def test_ragged_rows_are_bad_rows(tmp_path: Path, line: str, reason: str) -> None:
    """A row with more or fewer cells than the header is a BadRow; the rows around it come through."""
    rows = await read_all(csv_file(tmp_path, f"a,b,c,d\n1,2,3,4\n{line}\n5,6,7,8\n"))
    assert rows == [
        SourceRow(seq=1, values={"a": "1", "b": "2", "c": "3", "d": "4"}),
        BadRow(seq=2, raw=line, reason=reason),
        SourceRow(seq=3, values={"a": "5", "b": "6", "c": "7", "d": "8"}),
    ]


async def test_bad_quoting_is_a_bad_row(tmp_path: Path) -> None:
    """Text after a closing quote is refused, not guessed at; the next row still comes through."""
    rows = await read_all(csv_file(tmp_path, 'id,name\n1,"Ada"x\n2,Grace\n'))
    assert isinstance(rows[0], BadRow)
    assert rows[0].seq == 1
    assert rows[0].raw == '1,"Ada"x'
    assert rows[0].reason.startswith("bad CSV quoting")
    assert rows[1] == SourceRow(seq=2, values={"id": "2", "name": "Grace"})


async def test_unterminated_quote_at_end_is_a_bad_row(tmp_path: Path) -> None:
    """A quote left open at the end of the file is a BadRow, not a crash."""
    rows = await read_all(csv_file(tmp_path, 'id,name\n1,Ada\n2,"Gra\nce\n'))
    assert rows[0] == SourceRow(seq=1, values={"id": "1", "name": "Ada"})
    assert len(rows) == 2
    assert isinstance(rows[1], BadRow)
    assert rows[1].seq == 2
    assert rows[1].raw == '2,"Gra\nce'


async def test_quoted_cell_may_span_lines(tmp_path: Path) -> None:
    """A quoted newline stays in the cell, and seq counts records, not lines."""
    rows = await read_all(csv_file(tmp_path, 'id,note\n1,"two\nlines"\n2,"a ""quote"""\n'))
    assert rows == [
        SourceRow(seq=1, values={"id": "1", "note": "two\nlines"}),
        SourceRow(seq=2, values={"id": "2", "note": 'a "quote"'}),
    ]


async def test_invalid_bytes_spoil_only_their_row(tmp_path: Path) -> None:
    """A row with bytes that are not UTF-8 is a BadRow; the rows before and after come through."""
    content = b"id,name\n1,Ada\n2,Gr\xffce\n3,Alan\n"
    rows = await read_all(csv_file(tmp_path, content))
    assert rows[0] == SourceRow(seq=1, values={"id": "1", "name": "Ada"})
    assert rows[1] == BadRow(seq=2, raw="2,Gr\ufffdce", reason="line 3: byte 0xff at position 4 is not valid utf-8")
    assert rows[2] == SourceRow(seq=3, values={"id": "3", "name": "Alan"})


async def test_configured_encoding(tmp_path: Path) -> None:
    """cp1252 text decodes; a byte cp1252 does not define is a BadRow for that row only."""
    content = "id,name\n1,Café\n".encode("cp1252") + b"2,\x81\n" + "3,Zoë\n".encode("cp1252")
    rows = await read_all(csv_file(tmp_path, content, encoding="cp1252"))
    assert rows[0] == SourceRow(seq=1, values={"id": "1", "name": "Café"})
    assert isinstance(rows[1], BadRow) and "byte 0x81" in rows[1].reason and "cp1252" in rows[1].reason
    assert rows[2] == SourceRow(seq=3, values={"id": "3", "name": "Zoë"})


async def test_bom_is_stripped(tmp_path: Path) -> None:
    """A UTF-8 byte order mark does not end up in the first header name."""
    rows = await read_all(csv_file(tmp_path, b"\xef\xbb\xbfid,name\r\n1,Ada\r\n"))
    assert rows == [SourceRow(seq=1, values={"id": "1", "name": "Ada"})]


async def test_crlf_and_other_dialect(tmp_path: Path) -> None:
    """CRLF line ends, a custom delimiter and quote character all work."""
    source = csv_file(tmp_path, "id;name\r\n1;'Lovelace; Ada'\r\n", delimiter=";", quotechar="'")
    assert await read_all(source) == [SourceRow(seq=1, values={"id": "1", "name": "Lovelace; Ada"})]


async def test_header_names_are_stripped(tmp_path: Path) -> None:
    """Spaces around header names (a common export habit) are dropped."""
    assert await read_all(csv_file(tmp_path, "id , name\n1,Ada\n")) == [
        SourceRow(seq=1, values={"id": "1", "name": "Ada"})
    ]


async def test_blank_lines_are_skipped_but_counted(tmp_path: Path) -> None:
    """Blank lines yield nothing but keep seq in step with the line number."""
    rows = await read_all(csv_file(tmp_path, "\nid\n1\n\n3\n"))
    assert rows == [SourceRow(seq=1, values={"id": "1"}), SourceRow(seq=3, values={"id": "3"})]


@pytest.mark.parametrize(
    "content",
    ["", "id,name", "id,name\n", "id,name\r\n\r\n", "\n\n"],
    ids=["empty", "header", "header-newline", "header-blank", "blank-lines"],
)
async def test_nothing_to_read(tmp_path: Path, content: str) -> None:
    """An empty or header-only file yields no rows and no error."""
    assert await read_all(csv_file(tmp_path, content)) == []


@pytest.mark.parametrize(
    ("header", "message"),
    [
        ("id,name,id,x,x", "duplicate header name(s): 'id', 'x'"),
        ("id, name ,name", "duplicate header name(s): 'name'"),
        ("id,,name", "header column(s) 2 have no name"),
        ('id,"na"me', "the header cannot be parsed"),
        ("id,n\xe9", "the header is not valid utf-8"),
    ],
    ids=["duplicates", "duplicates-after-strip", "unnamed", "bad-quoting", "bad-bytes"],
)
async def test_unusable_header_is_a_source_error(tmp_path: Path, header: str, message: str) -> None:
    """A header no row could be mapped with makes the file unreadable, with a SourceError saying why."""
    source = csv_file(tmp_path, header.encode("latin-1") + b"\n1,2,3,4,5\n")
    with pytest.raises(SourceError) as caught:
        await read_all(source)
    assert caught.value.source == str(source.path)
    assert message in caught.value.reason


@pytest.mark.parametrize("name", ["missing.csv", "."], ids=["missing-file", "directory"])
async def test_unopenable_file_is_a_source_error(tmp_path: Path, name: str) -> None:
    """A file that cannot be opened at all is a SourceError naming it."""
    source = SourceConfig(kind="csv", path=tmp_path / name)
    with pytest.raises(SourceError, match="cannot open") as caught:
        await read_all(source)
    assert caught.value.source == str(tmp_path / name)


@pytest.mark.parametrize("start_after", [0, 1, 2, 4, 10], ids=lambda n: f"after-{n}")
async def test_start_after_skips_rows(tmp_path: Path, start_after: int) -> None:
    """Resuming after seq n yields exactly the rows after n, bad rows included, with unchanged seqs."""
    source = csv_file(tmp_path, 'id,x\n1,a\n2\n3,"multi\nline"\n4,d\n')
    everything = await read_all(source)
    assert [row.seq for row in everything] == [1, 2, 3, 4]
    assert await read_all(source, start_after) == [row for row in everything if row.seq > start_after]


async def test_reader_closes_and_stops(tmp_path: Path) -> None:
    """Leaving early closes the reader; it then yields nothing more."""
    source = csv_file(tmp_path, "id\n" + "".join(f"{i}\n" for i in range(5000)))
    reader = open_reader(source)
    async with reader:
        first = await reader.__anext__()
    assert first == SourceRow(seq=1, values={"id": "0"})
    assert [row async for row in reader] == []


@pytest.mark.slow
async def test_large_file_streams_in_flat_memory(tmp_path: Path) -> None:
    """A 200k-row file is read lazily: peak traced memory stays far below the file's size."""
    path = tmp_path / "big.csv"
    with path.open("w", encoding="utf-8") as out:
        out.write("id,name,email,city,note\n")
        for i in range(200_000):
            out.write(f"{i},Name {i},user{i}@example.com,City {i % 97},{'x' * 40}\n")
    size = path.stat().st_size
    tracemalloc.start()
    try:
        count = 0
        last = 0
        async with open_reader(SourceConfig(kind="csv", path=path)) as reader:
            async for row in reader:
                assert isinstance(row, SourceRow)
                count += 1
                last = row.seq
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert (count, last) == (200_000, 200_000)
    assert size > 15_000_000
    assert peak < 4_000_000, f"peak {peak} bytes for a {size}-byte file"
