"""Readers for a source that arrives as files: mongodump (``.bson``, ``--gzip``, ``--archive``)
and mongoexport (JSON lines or ``--jsonArray``, Extended JSON v2 relaxed / canonical, and v1).

Each reader streams (nothing reads a whole file into memory) and yields, per document, either
``("doc", where, raw_bson)`` or ``("bad", where, reason_code, reason)``: a piece of the file that
is not a document (a dump cut short, a length prefix that runs past the end, a line that is not
Extended JSON) becomes a reject naming the file and the byte offset or line number, never its
bytes. ``where`` is a byte offset (BSON) or a line number (JSON lines) or an element number
(a JSON array).

Formats follow the published specifications: BSON (bsonspec.org: a document starts with its
int32 little-endian total length and ends with a NUL byte), the mongodump archive
(mongodb/mongo-tools ``common/archive/spec.md``: magic number, header, collection metadata,
terminator, namespace segments and EOF headers carrying the CRC-64-ECMA of the namespace's
documents), and MongoDB Extended JSON (v2 relaxed and canonical; v1 ``{"$date": <ms>}``,
``{"$oid": ...}``, ``{"$numberLong": ...}``), read by pymongo's ``bson.json_util``.
"""
from __future__ import annotations

import gzip
import io
import json
import struct
from dataclasses import dataclass, field
from typing import BinaryIO, Iterator

MAX_BSON = 16 * 1024 * 1024 + 16 * 1024  # a server document is at most 16 MiB (plus mongodump's headroom)
ARCHIVE_MAGIC = b"\x6d\xe2\x99\x81"  # 0x8199e26d little-endian
TERMINATOR = b"\xff\xff\xff\xff"
_INT32 = struct.Struct("<i")


class DumpFormatError(ValueError):
    """A file that is not the format its name or content claims (a CSV, a tarball, ...): the
    message names what was expected, never the file's bytes."""


# --------------------------------------------------------------------------- CRC-64-ECMA
def crc64_ecma(data: bytes, crc: int = 0) -> int:
    """Go's ``crc64.Update(crc, crc64.MakeTable(crc64.ECMA), data)`` (CRC-64/XZ: the reflected
    ECMA-182 polynomial, all-ones init and xorout), chainable, at C speed (fastcrc, Rust's crc
    crate: ~1 GB/s fed one document at a time here, where a table-driven loop in Python did 6 MB/s)."""
    from fastcrc import crc64

    return crc64.xz(data, crc)


# --------------------------------------------------------------------------- opening
def open_maybe_gzip(fh: BinaryIO) -> BinaryIO:
    """A stream decompressed when it starts with the gzip magic (``--gzip`` output), else as is."""
    buffered = fh if hasattr(fh, "peek") else io.BufferedReader(fh)
    if buffered.peek(2)[:2] == b"\x1f\x8b":
        return gzip.GzipFile(fileobj=buffered)
    return buffered


def sniff(head: bytes) -> str:
    """What a file holds, from its first bytes: ``archive``, ``bson``, ``json`` — or a
    DumpFormatError naming what was expected (a CSV, a tarball, anything else)."""
    if head.startswith(ARCHIVE_MAGIC):
        return "archive"
    stripped = head.lstrip(b"\xef\xbb\xbf \t\r\n")
    if stripped[:1] in (b"{", b"["):
        return "json"
    if len(head) >= 5 and 5 <= _INT32.unpack_from(head)[0] <= MAX_BSON:
        return "bson"
    if len(head) >= 262 and head[257:262] == b"ustar":
        raise DumpFormatError("a tar archive: unpack it and point source_path at the dump folder, or use "
                              "mongodump --archive")
    if stripped[:1] and stripped[:1] not in (b"{", b"["):
        raise DumpFormatError("not a mongodump (.bson, --archive) or mongoexport JSON file (CSV loses types "
                              "and arrays: export with --type=json)")
    raise DumpFormatError("an empty or unreadable file: expected mongodump BSON or mongoexport JSON")


# --------------------------------------------------------------------------- BSON
def iter_bson(fh: BinaryIO, start: int = 0, end: int | None = None) -> Iterator[tuple]:
    """Concatenated BSON documents (a mongodump ``.bson`` file), from byte ``start`` (a
    document boundary) to ``end`` (exclusive; None: the end of the stream)."""
    offset = start
    while end is None or offset < end:
        head = fh.read(4)
        if not head:
            return
        if len(head) < 4:
            yield ("bad", offset, "truncated_document", f"byte offset {offset}: {len(head)} bytes left, "
                                                          "not even a length prefix (the dump was cut short)")
            return
        (length,) = _INT32.unpack(head)
        if length < 5 or length > MAX_BSON:
            yield ("bad", offset, "invalid_length", f"byte offset {offset}: a length prefix of {length} bytes is "
                                                       "not a BSON document's; the rest of the file cannot be read")
            return
        body = fh.read(length - 4)
        if len(body) < length - 4:
            yield ("bad", offset, "truncated_document",
                   f"byte offset {offset}: the document's length prefix says {length} bytes, the file ends after "
                   f"{len(body) + 4} (the dump was cut short)")
            return
        if body[-1:] != b"\x00":
            yield ("bad", offset, "invalid_length", f"byte offset {offset}: the {length}-byte document does not end "
                                                       "with a NUL byte")
        else:
            yield ("doc", offset, head + body)
        offset += length


class _Rest:
    """A stream's bytes already read (``head``) followed by the rest of the stream."""

    def __init__(self, head: bytes, fh: BinaryIO):
        self.head, self.fh = memoryview(head), fh

    def read(self, n: int) -> bytes:
        if not self.head:
            return self.fh.read(n)
        out, self.head = bytes(self.head[:n]), self.head[n:]
        return out + self.fh.read(n - len(out)) if len(out) < n else out


BSON_BLOCK = 8 * 1024 * 1024  # bytes read at a time by iter_bson_blocks


def iter_bson_blocks(fh: BinaryIO, start: int = 0, end: int | None = None, block: int = BSON_BLOCK) -> Iterator[tuple]:
    """:func:`iter_bson`'s items, whole documents a block at a time: ``("docs", offset, data,
    cuts)``, where ``data`` holds consecutive documents, the first at byte ``offset``, and
    ``cuts`` their boundaries in it (``cuts[0] == 0``, ``cuts[-1] == len(data)``). Only the length
    prefixes and the closing NUL bytes are looked at, as by :func:`iter_bson`; from the first
    piece that is not a whole document on, the rest of the stream goes through
    :func:`iter_bson` itself. Flattened, the items are exactly :func:`iter_bson`'s."""
    unpack = _INT32.unpack_from
    buf, base = b"", start
    while True:
        more = fh.read(block)
        buf = buf + more if buf else more
        n, pos, cuts, odd = len(buf), 0, [0], False
        while pos + 4 <= n and (end is None or base + pos < end):
            (length,) = unpack(buf, pos)
            stop = pos + length
            if length < 5 or length > MAX_BSON or (stop <= n and buf[stop - 1] != 0):
                odd = True
                break
            if stop > n:
                break  # the document goes on in the next block
            pos = stop
            cuts.append(pos)
        if len(cuts) > 1:
            yield ("docs", base, buf[:pos], cuts)
        if end is not None and base + pos >= end:
            return
        if odd or not more:
            if pos < n or odd:
                yield from iter_bson(_Rest(buf[pos:], fh), base + pos, end)
            return
        buf, base = buf[pos:], base + pos


def bson_boundaries(fh: BinaryIO, every: int) -> list[int]:
    """Byte offsets of every ``every``-th document, walking the length prefixes without decoding
    (the plan's document-aligned ranges)."""
    bounds, offset, n = [], 0, 0
    while True:
        head = fh.read(4)
        if len(head) < 4:
            return bounds
        (length,) = _INT32.unpack(head)
        if length < 5 or length > MAX_BSON:
            return bounds  # the reader rejects it where it stands
        n += 1
        offset += length
        if n % every == 0:
            bounds.append(offset)
        fh.seek(length - 4, io.SEEK_CUR)


# --------------------------------------------------------------------------- Extended JSON
def _options():
    from bson import json_util
    from bson.codec_options import CodecOptions

    # canonical, relaxed and v1 are all read by json_util.loads; dates stay naive UTC like pymongo's
    return json_util.JSONOptions(json_mode=json_util.JSONMode.RELAXED, document_class=dict,
                                 tz_aware=False, uuid_representation=CodecOptions().uuid_representation)


def _encode(text: str, options) -> bytes:
    import bson
    from bson import json_util

    doc = json_util.loads(text, json_options=options)
    if not isinstance(doc, dict):
        raise NotADocument(f"a JSON {type(doc).__name__}, not a document")
    return bson.encode(doc)


class NotADocument(ValueError):
    pass


def _json_reason(exc: Exception) -> str:
    """Where and what kind, never a value: json_util's messages can repeat one (a secret too)."""
    if isinstance(exc, json.JSONDecodeError):
        return f"not valid JSON ({exc.msg} at column {exc.colno})"
    if isinstance(exc, NotADocument):
        return str(exc)
    return f"not valid Extended JSON ({type(exc).__name__})"


def iter_json(fh: BinaryIO) -> Iterator[tuple]:
    """mongoexport output: JSON lines (the default) or one ``--jsonArray`` array, told apart by
    content: the first non-blank character."""
    buffered = fh if hasattr(fh, "peek") else io.BufferedReader(fh)
    head = buffered.peek(1 << 16)
    first = head.lstrip(b"\xef\xbb\xbf \t\r\n")[:1]
    if first == b"[":
        text = io.TextIOWrapper(buffered, encoding="utf-8-sig", errors="strict", newline="")
        try:
            while text.read(1) != "[":
                pass
            yield from _json_array(text)
        except UnicodeDecodeError:
            yield ("bad", None, "invalid_json", "the array is not valid UTF-8; the rest of it cannot be read")
        return
    options = _options()
    for number, raw in enumerate(buffered, start=1):
        try:
            line = raw.decode("utf-8-sig" if number == 1 else "utf-8")
        except UnicodeDecodeError:
            yield ("bad", number, "invalid_json", f"line {number}: not valid UTF-8")
            continue
        if not line.strip():
            continue
        try:
            yield ("doc", number, _encode(line, options))
        except Exception as exc:  # noqa: BLE001 - one bad line is one reject
            yield ("bad", number, "invalid_json", f"line {number}: {_json_reason(exc)}")


def _json_array(text, chunk: int = 1 << 16) -> Iterator[tuple]:
    """The elements of one top-level JSON array, decoded one at a time from a sliding buffer."""
    decoder, options = json.JSONDecoder(), _options()
    buf, pos, number, done = "", 0, 0, False

    def more() -> bool:
        nonlocal buf, pos
        data = text.read(chunk)
        buf, pos = buf[pos:] + data, 0
        return bool(data)

    eof = not more()
    while True:
        while True:  # skip blanks and separators
            while pos < len(buf) and buf[pos] in " \t\r\n,":
                pos += 1
            if pos < len(buf) or eof:
                break
            eof = not more()
        if pos >= len(buf):
            if not done:
                yield ("bad", number + 1, "invalid_json", f"element {number + 1}: the array is not closed (the export "
                                                          "was cut short)")
            return
        if buf[pos] == "]":
            return
        number += 1
        while True:
            try:
                value, end = decoder.raw_decode(buf, pos)
                break
            except json.JSONDecodeError as exc:
                if not eof:
                    eof = not more()
                    continue
                yield ("bad", number, "invalid_json", f"element {number}: {_json_reason(exc)}; the rest of the "
                                                      "array cannot be read")
                return
        pos = end
        try:
            yield ("doc", number, _encode(json.dumps(value), options))
        except Exception as exc:  # noqa: BLE001
            yield ("bad", number, "invalid_json", f"element {number}: {_json_reason(exc)}")


# --------------------------------------------------------------------------- mongodump --archive
@dataclass
class Namespace:
    db: str
    collection: str
    metadata: str = ""
    documents: int = 0
    crc: int = 0
    eof: bool = False
    crc_ok: bool | None = None


@dataclass
class Archive:
    header: dict = field(default_factory=dict)
    namespaces: dict[tuple[str, str], Namespace] = field(default_factory=dict)


def _read_document(fh: BinaryIO, what: str) -> bytes | None:
    head = fh.read(4)
    if head == TERMINATOR:
        return None
    if len(head) < 4:
        raise DumpFormatError(f"the archive ends inside its {what}")
    (length,) = _INT32.unpack(head)
    if length < 5 or length > MAX_BSON:
        raise DumpFormatError(f"the archive's {what} has an impossible length ({length} bytes)")
    body = fh.read(length - 4)
    if len(body) < length - 4:
        raise DumpFormatError(f"the archive ends inside its {what}")
    return head + body


def iter_archive(fh: BinaryIO, archive: Archive | None = None) -> Iterator[tuple[tuple[str, str], tuple]]:
    """A mongodump archive (already decompressed): yields ``((db, collection), item)`` per
    document, ``item`` as the other readers give it (``where`` = byte offset in the archive).
    ``archive`` receives the header, each namespace's metadata and, once its EOF header is
    read, whether the CRC-64-ECMA of its documents matches."""
    import bson

    archive = archive if archive is not None else Archive()
    fh = Counting(fh)
    if fh.read(4) != ARCHIVE_MAGIC:
        raise DumpFormatError("not a mongodump --archive file (no magic number)")
    raw = _read_document(fh, "header")
    archive.header = bson.decode(raw) if raw else {}
    while True:
        raw = _read_document(fh, "collection metadata")
        if raw is None:
            break
        meta = bson.decode(raw)
        key = (meta.get("db", ""), meta.get("collection", ""))
        archive.namespaces[key] = Namespace(*key, metadata=meta.get("metadata", ""))
    while True:
        if fh.peek_eof():  # the file ends at a block boundary: a namespace without EOF header keeps crc_ok None
            return
        raw = _read_document(fh, "namespace header")
        if raw is None:
            raise DumpFormatError("the archive has a terminator where a namespace header belongs")
        header = bson.decode(raw)
        key = (header.get("db", ""), header.get("collection", ""))
        ns = archive.namespaces.setdefault(key, Namespace(*key))
        if header.get("EOF"):
            ns.eof = True
            ns.crc_ok = (int(header.get("CRC", 0)) & 0xFFFFFFFFFFFFFFFF) == ns.crc
            if fh.read(4) != TERMINATOR:
                raise DumpFormatError(f"the archive's EOF header of {key[0]}.{key[1]} is not terminated")
            continue
        while True:
            start = fh.tell()
            head = fh.read(4)
            if head == TERMINATOR:
                break
            if not head:
                yield key, ("bad", start, "truncated_document", f"byte offset {start}: the archive ends inside "
                                                                 f"{key[0]}.{key[1]} (it was cut short)")
                return
            item = next(iter_bson(_Prefixed(head, fh), start, start + 1), None)
            if item is None or item[0] == "bad":
                if item is not None:
                    yield key, item
                return
            ns.documents += 1
            ns.crc = crc64_ecma(item[2], ns.crc)
            yield key, item


class Counting(io.RawIOBase):
    """A read-only stream that knows how many bytes it has handed out (``tell`` on a gzip or
    network stream that cannot seek)."""

    def __init__(self, inner: BinaryIO):
        self.inner, self.position, self._ahead = inner, 0, None

    def readable(self) -> bool:
        return True

    def read(self, n: int = -1) -> bytes:
        ahead, self._ahead = self._ahead or b"", None
        if n is not None and n >= 0:
            data = ahead + (self.inner.read(n - len(ahead)) if n > len(ahead) else b"")
        else:
            data = ahead + self.inner.read()
        self.position += len(data)
        return data

    def tell(self) -> int:
        return self.position

    def peek_eof(self) -> bool:
        """True at the end of the stream (one byte read ahead and kept)."""
        if self._ahead is None:
            self._ahead = self.inner.read(1)
        return self._ahead == b""


class _Prefixed(io.RawIOBase):
    """A stream with some bytes already read put back in front."""

    def __init__(self, head: bytes, rest: BinaryIO):
        self.head, self.rest = head, rest

    def readable(self) -> bool:
        return True

    def read(self, n: int = -1) -> bytes:
        if self.head:
            out, self.head = self.head[:n], self.head[n:]
            if len(out) < n:
                out += self.rest.read(n - len(out))
            return out
        return self.rest.read(n)
