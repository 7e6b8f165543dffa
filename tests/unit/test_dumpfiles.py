"""The dump-file readers against files of known bytes: BSON assembled by hand (bsonspec.org), a
mongodump archive assembled byte by byte from mongo-tools' common/archive/spec.md, and
mongoexport lines in relaxed, canonical and v1 Extended JSON."""
from __future__ import annotations

import datetime as dt
import gzip
import io
import struct
import uuid

import bson
import pytest
from bson import Binary, Decimal128, Int64, ObjectId

from authmigrate.dumpfiles import (ARCHIVE_MAGIC, Archive, DumpFormatError, bson_boundaries, crc64_ecma, iter_archive,
                                   iter_bson, iter_bson_blocks, iter_json, open_maybe_gzip, sniff)

OID = ObjectId("65a000000000000000000001")
WHEN = dt.datetime(2024, 3, 1, 12, 0, 0, 123000)
TYPED = {"_id": OID, "userId": "000000000001", "createdAt": WHEN, "signCount": Int64(7), "small": 3,
         "score": Decimal128("1.50"), "blob": Binary(b"\x00\x01\xff", 0), "flag": True, "none": None,
         "roles": ["standardUser", {"nested": 1.5}]}
LIVE = bson.decode(bson.encode(TYPED))  # what a live read (pymongo's decoder) gives back


def docs(items) -> list:
    return [bson.decode(i[2]) if i[0] == "doc" else i for i in items]


# --------------------------------------------------------------------------- BSON
def test_a_hand_assembled_bson_file_two_documents_then_a_truncated_third():
    # {"a": 1}: int32 length 12, 0x10 "a\0" int32 1, NUL — assembled by hand from the BSON spec
    one = struct.pack("<i", 12) + b"\x10a\x00" + struct.pack("<i", 1) + b"\x00"
    assert one == bson.encode({"a": 1})
    two = bson.encode({"b": "x"})
    third = bson.encode({"c": "cut short"})[:9]
    items = list(iter_bson(io.BytesIO(one + two + third)))
    assert docs(items[:2]) == [{"a": 1}, {"b": "x"}]
    (bad,) = items[2:]
    assert bad[:3] == ("bad", len(one) + len(two), "truncated_document")
    assert bad[3].startswith(f"byte offset {len(one) + len(two)}: ") and "cut short" in bad[3]


def test_a_length_prefix_running_past_the_end_and_an_impossible_one_are_explained():
    good = bson.encode({"a": 1})
    items = list(iter_bson(io.BytesIO(good + struct.pack("<i", 1000) + b"\x00" * 10)))
    assert items[1][:3] == ("bad", len(good), "truncated_document") and "says 1000 bytes" in items[1][3]
    items = list(iter_bson(io.BytesIO(good + struct.pack("<i", 3) + b"\x00")))
    assert items[1][:3] == ("bad", len(good), "invalid_length")


def test_document_aligned_ranges_come_from_the_length_prefixes():
    raws = [bson.encode({"i": i, "pad": "x" * i}) for i in range(10)]
    data = b"".join(raws)
    bounds = bson_boundaries(io.BytesIO(data), 4)
    assert bounds == [sum(map(len, raws[:4])), sum(map(len, raws[:8]))]
    edges = [0, *bounds, None]
    got = [i for lo, hi in zip(edges, edges[1:])
           for i in docs(iter_bson(_at(data, lo), lo, hi))]
    assert [d["i"] for d in got] == list(range(10))


def _flat(items) -> list[tuple]:
    out = []
    for item in items:
        if item[0] == "docs":
            _, offset, data, cuts = item
            out += [("doc", offset + a, data[a:b]) for a, b in zip(cuts, cuts[1:])]
        else:
            out.append(item)
    return out


@pytest.mark.parametrize("block", [1, 5, 64, 1000, 1 << 20])
@pytest.mark.parametrize("damage", ["none", "no_nul", "impossible_length", "cut_short", "prefix_cut"])
def test_bson_blocks_flatten_to_exactly_the_per_document_reader(block, damage):
    import random

    rng = random.Random(block)
    raws = [bson.encode({"i": i, "pad": "x" * rng.randint(0, 300)}) for i in range(60)]
    at = sum(map(len, raws[:37]))
    data = b"".join(raws)
    if damage == "no_nul":  # document 37 does not end with NUL; the reader goes on after it
        data = data[:at + len(raws[37]) - 1] + b"\x01" + data[at + len(raws[37]):]
    elif damage == "impossible_length":
        data = data[:at] + struct.pack("<i", 2) + data[at + 4:]
    elif damage == "cut_short":
        data = data[:at + 10]
    elif damage == "prefix_cut":
        data = data[:at + 2]
    want = list(iter_bson(io.BytesIO(data)))
    assert _flat(iter_bson_blocks(io.BytesIO(data), block=block)) == want
    assert len([w for w in want if w[0] == "bad"]) == (damage != "none")
    bounds = bson_boundaries(io.BytesIO(data), 16)
    edges = [0, *bounds, None]
    for lo, hi in zip(edges, edges[1:]):  # document-aligned ranges, as the plan makes them
        assert _flat(iter_bson_blocks(_at(data, lo), lo, hi, block=block)) == list(iter_bson(_at(data, lo), lo, hi))


def _at(data: bytes, offset: int) -> io.BytesIO:
    fh = io.BytesIO(data)
    fh.seek(offset)
    return fh


def test_gzip_is_read_through_and_the_content_tells_the_format():
    raw = bson.encode(TYPED)
    assert docs(iter_bson(open_maybe_gzip(io.BytesIO(gzip.compress(raw))))) == [bson.decode(raw)]
    assert sniff(raw) == "bson" and sniff(b'{"a": 1}') == "json" and sniff(b" [\n{") == "json"
    assert sniff(ARCHIVE_MAGIC + raw) == "archive"
    with pytest.raises(DumpFormatError, match="CSV loses types"):
        sniff(b"userId,username\n1,alice\n")
    tar = bytearray(512)
    tar[257:262] = b"ustar"
    with pytest.raises(DumpFormatError, match="tar archive"):
        sniff(bytes(tar))


# --------------------------------------------------------------------------- mongodump --archive
def _crc64_by_the_definition(data: bytes, crc: int = 0) -> int:
    """Go's hash/crc64 Update with the ECMA table, written out (reflected polynomial)."""
    poly = 0xC96C5795D7870F42
    crc ^= 0xFFFFFFFFFFFFFFFF
    for b in data:
        crc ^= b
        for _ in range(8):
            crc = (crc >> 1) ^ poly if crc & 1 else crc >> 1
    return crc ^ 0xFFFFFFFFFFFFFFFF


def test_crc64_ecma_matches_the_check_value_and_the_definition():
    import os

    assert crc64_ecma(b"123456789") == 0x995DC9BBDF1939FA  # CRC-64/XZ, Go's crc64 ECMA
    assert crc64_ecma(b"6789", crc64_ecma(b"12345")) == crc64_ecma(b"123456789")
    assert crc64_ecma(b"") == 0
    data = os.urandom(3000)
    assert crc64_ecma(data) == _crc64_by_the_definition(data)
    assert crc64_ecma(data[1000:], crc64_ecma(data[:1000])) == _crc64_by_the_definition(data[1000:],
                                                                                       _crc64_by_the_definition(data[:1000]))


def _archive(bad_crc: bool = False, cut: int = 0) -> bytes:
    users = [bson.encode({"_id": ObjectId(), "userId": f"{i:012d}"}) for i in range(3)]
    apps = [bson.encode({"_id": ObjectId(), "oauthClientAppId": "000001"})]
    crc = {"users": crc64_ecma(b"".join(users)), "apps": crc64_ecma(b"".join(apps))}
    if bad_crc:
        crc["apps"] ^= 1

    def ns(coll, eof=False, value=0):
        # int64 CRC as Go writes it (signed)
        return bson.encode({"db": "idp", "collection": coll, "EOF": eof,
                            "CRC": Int64(value - (1 << 64) if value >= 1 << 63 else value)})

    out = ARCHIVE_MAGIC
    out += bson.encode({"concurrent_collections": 4, "version": "0.1", "server_version": "7.0.0",
                        "tool_version": "100.9.0"})
    for coll in ("users", "apps"):
        out += bson.encode({"db": "idp", "collection": coll, "metadata": '{"indexes":[]}', "size": 0})
    out += b"\xff\xff\xff\xff"
    # interleaved: two users, the app, the third user
    out += ns("users") + users[0] + users[1] + b"\xff\xff\xff\xff"
    out += ns("apps") + apps[0] + b"\xff\xff\xff\xff"
    out += ns("users") + users[2] + b"\xff\xff\xff\xff"
    out += ns("users", True, crc["users"]) + b"\xff\xff\xff\xff"
    out += ns("apps", True, crc["apps"]) + b"\xff\xff\xff\xff"
    return out[:len(out) - cut] if cut else out


def test_an_archive_assembled_byte_by_byte_is_read_with_its_crcs_checked():
    meta = Archive()
    items = list(iter_archive(io.BytesIO(_archive()), meta))
    assert [k for k, _ in items] == [("idp", "users")] * 2 + [("idp", "apps")] + [("idp", "users")]
    assert all(i[0] == "doc" for _, i in items)
    assert meta.header["version"] == "0.1"
    assert {k: (n.documents, n.crc_ok, n.metadata) for k, n in meta.namespaces.items()} == {
        ("idp", "users"): (3, True, '{"indexes":[]}'), ("idp", "apps"): (1, True, '{"indexes":[]}')}


def test_an_archive_crc_mismatch_is_reported_for_its_collection():
    meta = Archive()
    list(iter_archive(io.BytesIO(_archive(bad_crc=True)), meta))
    assert meta.namespaces[("idp", "users")].crc_ok is True
    assert meta.namespaces[("idp", "apps")].crc_ok is False


def test_a_gzipped_archive_and_a_not_archive():
    assert len(list(iter_archive(open_maybe_gzip(io.BytesIO(gzip.compress(_archive())))))) == 4
    with pytest.raises(DumpFormatError, match="no magic number"):
        list(iter_archive(io.BytesIO(bson.encode({"a": 1}))))


# --------------------------------------------------------------------------- mongoexport
RELAXED = ('{"_id":{"$oid":"65a000000000000000000001"},"userId":"000000000001",'
           '"createdAt":{"$date":"2024-03-01T12:00:00.123Z"},"signCount":{"$numberLong":"7"},"small":3,'
           '"score":{"$numberDecimal":"1.50"},"blob":{"$binary":{"base64":"AAH/","subType":"00"}},'
           '"flag":true,"none":null,"roles":["standardUser",{"nested":1.5}]}')
CANONICAL = ('{"_id":{"$oid":"65a000000000000000000001"},"userId":"000000000001",'
             '"createdAt":{"$date":{"$numberLong":"1709294400123"}},"signCount":{"$numberLong":"7"},'
             '"small":{"$numberInt":"3"},"score":{"$numberDecimal":"1.50"},'
             '"blob":{"$binary":{"base64":"AAH/","subType":"00"}},"flag":true,"none":null,'
             '"roles":["standardUser",{"nested":{"$numberDouble":"1.5"}}]}')
V1 = ('{"_id":{"$oid":"65a000000000000000000001"},"userId":"000000000001","createdAt":{"$date":1709294400123},'
      '"signCount":{"$numberLong":"7"},"small":3,"score":{"$numberDecimal":"1.50"},'
      '"blob":{"$binary":"AAH/","$type":"00"},"flag":true,"none":null,"roles":["standardUser",{"nested":1.5}]}')
V1_ISO = V1.replace('{"$date":1709294400123}', '{"$date":"2024-03-01T12:00:00.123Z"}')


@pytest.mark.parametrize("line", [RELAXED, CANONICAL, V1, V1_ISO], ids=["relaxed", "canonical", "v1", "v1-iso"])
def test_every_extended_json_mode_gives_the_documents_types_back(line):
    (doc,) = docs(iter_json(io.BytesIO(line.encode())))
    assert doc == LIVE
    assert type(doc["signCount"]) is Int64 and type(doc["small"]) is int and type(doc["_id"]) is ObjectId
    assert type(doc["score"]) is Decimal128 and doc["blob"] == b"\x00\x01\xff"


def test_json_lines_with_a_bad_line_give_a_reject_naming_the_line_and_never_its_text():
    data = f"{RELAXED}\n\n{{\"userId\": \"secret-ish\", oops}}\n{CANONICAL}\n".encode()
    items = list(iter_json(io.BytesIO(data)))
    assert [i[0] for i in items] == ["doc", "bad", "doc"]
    assert items[1][1:3] == (3, "invalid_json") and items[1][3].startswith("line 3: not valid JSON")
    assert "secret-ish" not in items[1][3]


def test_a_json_array_is_told_apart_by_content_and_a_cut_array_is_explained():
    data = f"  [ {RELAXED},\n{CANONICAL} ]".encode()
    assert docs(iter_json(io.BytesIO(data))) == [LIVE, LIVE]
    items = list(iter_json(io.BytesIO(f"[{RELAXED}, {CANONICAL[:40]}".encode())))
    assert items[0][0] == "doc" and items[1][:3] == ("bad", 2, "invalid_json")


def test_an_element_that_is_not_a_document_is_a_reject():
    items = list(iter_json(io.BytesIO(b'[1, {"a": 2}]')))
    assert items[0][:3] == ("bad", 1, "invalid_json") and "not a document" in items[0][3]
    assert docs(items[1:]) == [{"a": 2}]


def test_uuid_binary_round_trips():
    value = uuid.UUID("12345678-1234-5678-1234-567812345678")
    line = '{"u": {"$binary": {"base64": "EjRWeBI0VngSNFZ4EjRWeA==", "subType": "04"}}}'
    (doc,) = docs(iter_json(io.BytesIO(line.encode())))
    assert doc["u"] == Binary(value.bytes, 4)


def test_a_document_without_its_closing_nul_is_one_reject_and_the_next_document_is_read():
    one, two = bson.encode({"a": 1}), bson.encode({"b": 2})
    broken = one[:-1] + b"\x01"
    items = list(iter_bson(io.BytesIO(broken + two)))
    assert items[0][:3] == ("bad", 0, "invalid_length") and docs(items[1:]) == [{"b": 2}]


def test_a_reason_never_repeats_a_value_and_bad_utf8_is_a_reject():
    data = b'{"password": {"$oid": "hunter2"}}\n{"u": "\xff\xfe"}\n{"a": 1}\n'
    items = list(iter_json(io.BytesIO(data)))
    assert [i[:3] for i in items[:2]] == [("bad", 1, "invalid_json"), ("bad", 2, "invalid_json")]
    assert "hunter2" not in items[0][3] and items[1][3] == "line 2: not valid UTF-8"
    assert docs(items[2:]) == [{"a": 1}]
