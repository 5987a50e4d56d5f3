"""Copy-through assembly of Parquet parts: one file made of the parts' row groups, copied
byte for byte, and one new footer.

A Parquet file is `PAR1`, its column chunks (and any page indexes or bloom filters),
the footer (a Thrift compact-protocol `FileMetaData`), the footer's length and `PAR1`.
Every position the footer holds is an offset from the start of the file, so the parts'
bytes between their leading `PAR1` and their footer can be laid one after another if each
part's offsets are shifted by where its bytes land. The merged footer is the first part's
`FileMetaData` (schema, key/value metadata with the Arrow schema, column orders) with the
row groups of all parts in order (shifted, renumbered) and their rows summed.

The footer is decoded and encoded field by field with Apache Thrift's compact protocol
(`thrift` package) into plain values, without the Parquet IDL: what is not rewritten is
kept as it was read, also fields newer than any IDL we could ship (a decoder generated
from an IDL drops fields it does not know). Field ids are those of parquet-format's
parquet.thrift; only the ones named below are looked at.

Copy-through applies only when the parts agree: the same schema, key/value metadata and
writer, no encryption, every column chunk in the file itself, compressed with the codec
asked for, with statistics and row groups no longer than asked for. Otherwise the caller
re-encodes the rows (`ParquetFormat.assemble`)."""

from __future__ import annotations

import struct
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from thrift.protocol.TCompactProtocol import TCompactProtocol
from thrift.Thrift import TType
from thrift.transport.TTransport import TMemoryBuffer

from exportd.storage import Piece, Span, Storage

MAGIC = b"PAR1"
TAIL = 64 * 1024  # read from a part's end at first: its footer is usually within
MAX_ROW_GROUPS = 32_767  # RowGroup.ordinal is an i16

Fields = dict[int, tuple[int, Any]]  # field id -> (Thrift type, value)

# parquet.thrift field ids
FMD_VERSION, FMD_SCHEMA, FMD_NUM_ROWS, FMD_ROW_GROUPS, FMD_KV = 1, 2, 3, 4, 5
FMD_CREATED_BY, FMD_COLUMN_ORDERS, FMD_ENCRYPTION, FMD_SIGNING_KEY = 6, 7, 8, 9
RG_COLUMNS, RG_NUM_ROWS, RG_FILE_OFFSET, RG_ORDINAL = 1, 3, 5, 7
CC_FILE_PATH, CC_FILE_OFFSET, CC_META = 1, 2, 3
CC_OFFSET_INDEX, CC_COLUMN_INDEX, CC_CRYPTO, CC_ENCRYPTED_META = 4, 6, 8, 9
CMD_CODEC, CMD_STATISTICS = 4, 12
CMD_DATA_PAGE, CMD_INDEX_PAGE, CMD_DICTIONARY_PAGE, CMD_BLOOM_FILTER = 9, 10, 11, 14
CODEC_IDS = {"none": 0, "snappy": 1, "gzip": 2, "zstd": 6, "lz4": 7}  # pyarrow's lz4: LZ4_RAW


# ---- Thrift values, kept as read ---------------------------------------------------------


def decode(data: bytes) -> Fields:
    return _read_struct(TCompactProtocol(TMemoryBuffer(data)))


def encode(fields: Fields) -> bytes:
    buf = TMemoryBuffer()
    _write_struct(TCompactProtocol(buf), fields)
    return bytes(buf.getvalue())


def _read_struct(p: TCompactProtocol) -> Fields:
    p.readStructBegin()
    fields: Fields = {}
    while True:
        _, ttype, fid = p.readFieldBegin()
        if ttype == TType.STOP:
            break
        fields[fid] = (ttype, _read(p, ttype))
        p.readFieldEnd()
    p.readStructEnd()
    return fields


_SCALAR_READ = {
    TType.BOOL: "readBool", TType.BYTE: "readByte", TType.I16: "readI16",
    TType.I32: "readI32", TType.I64: "readI64", TType.DOUBLE: "readDouble",
    TType.STRING: "readBinary",
}  # fmt: skip
_SCALAR_WRITE = {
    TType.BOOL: "writeBool", TType.BYTE: "writeByte", TType.I16: "writeI16",
    TType.I32: "writeI32", TType.I64: "writeI64", TType.DOUBLE: "writeDouble",
    TType.STRING: "writeBinary",
}  # fmt: skip


def _read(p: TCompactProtocol, ttype: int) -> Any:
    if ttype == TType.STRUCT:
        return _read_struct(p)
    if ttype in _SCALAR_READ:
        return getattr(p, _SCALAR_READ[ttype])()
    if ttype in (TType.LIST, TType.SET):
        etype, size = p.readListBegin() if ttype == TType.LIST else p.readSetBegin()
        items = [_read(p, etype) for _ in range(size)]
        p.readListEnd() if ttype == TType.LIST else p.readSetEnd()
        return (etype, items)
    if ttype == TType.MAP:
        ktype, vtype, size = p.readMapBegin()
        pairs = [(_read(p, ktype), _read(p, vtype)) for _ in range(size)]
        p.readMapEnd()
        return (ktype, vtype, pairs)
    raise ValueError(f"unknown Thrift type {ttype} in a Parquet footer")


def _write_struct(p: TCompactProtocol, fields: Fields) -> None:
    p.writeStructBegin("")
    for fid in sorted(fields):
        ttype, value = fields[fid]
        p.writeFieldBegin("", ttype, fid)
        _write(p, ttype, value)
        p.writeFieldEnd()
    p.writeFieldStop()
    p.writeStructEnd()


def _write(p: TCompactProtocol, ttype: int, value: Any) -> None:
    if ttype == TType.STRUCT:
        _write_struct(p, value)
    elif ttype in _SCALAR_WRITE:
        getattr(p, _SCALAR_WRITE[ttype])(value)
    elif ttype in (TType.LIST, TType.SET):
        etype, items = value
        (p.writeListBegin if ttype == TType.LIST else p.writeSetBegin)(etype, len(items))
        for item in items:
            _write(p, etype, item)
        p.writeListEnd() if ttype == TType.LIST else p.writeSetEnd()
    elif ttype == TType.MAP:
        ktype, vtype, pairs = value
        p.writeMapBegin(ktype, vtype, len(pairs))
        for k, v in pairs:
            _write(p, ktype, k)
            _write(p, vtype, v)
        p.writeMapEnd()
    else:
        raise ValueError(f"unknown Thrift type {ttype} in a Parquet footer")


# ---- parts and the merged file -----------------------------------------------------------


@dataclass(frozen=True)
class PartFooter:
    """A stored Parquet part: its key, where its footer starts, and the footer."""

    key: str
    body_end: int
    meta: Fields

    def row_groups(self) -> list[Fields]:
        return list(self.meta.get(FMD_ROW_GROUPS, (TType.LIST, (TType.STRUCT, [])))[1][1])


def read_footer(storage: Storage, key: str, size: int) -> PartFooter | None:
    """The part's footer, or None when the object is not a plain Parquet file."""
    if size < 12:
        return None
    start = max(0, size - TAIL)
    tail = storage.read_range(key, start, size)
    if len(tail) != size - start or tail[-4:] != MAGIC:  # "PARE": an encrypted footer
        return None
    (length,) = struct.unpack("<I", tail[-8:-4])
    body_end = size - 8 - length
    if body_end < 4:
        return None
    if body_end >= start:
        footer = tail[body_end - start : -8]
    else:
        footer = storage.read_range(key, body_end, size - 8)
    try:
        meta = decode(footer)
    except Exception:  # not a footer we can read: the re-encoding path reports it
        return None
    return PartFooter(key, body_end, meta)


def copy_through(
    parts: Sequence[PartFooter], codec: str, row_group_size: int
) -> list[Piece] | None:
    """The pieces of the file made of `parts` (to `Storage.compose`), or None when the
    parts cannot be copied through (see the module docstring)."""
    if not parts or not all(_plain(p, CODEC_IDS[codec], row_group_size) for p in parts):
        return None
    first = parts[0].meta
    same = (FMD_VERSION, FMD_SCHEMA, FMD_KV, FMD_CREATED_BY, FMD_COLUMN_ORDERS)
    if any(p.meta.get(f) != first.get(f) for p in parts[1:] for f in same):
        return None
    if sum(len(p.row_groups()) for p in parts) > MAX_ROW_GROUPS:
        return None
    pieces: list[Piece] = [MAGIC]
    groups: list[Fields] = []
    pos = len(MAGIC)
    for part in parts:
        delta = pos - len(MAGIC)
        groups.extend(
            _shifted(rg, delta, len(groups) + i) for i, rg in enumerate(part.row_groups())
        )
        pieces.append(Span(part.key, len(MAGIC), part.body_end))
        pos += part.body_end - len(MAGIC)
    meta = dict(first)
    meta[FMD_NUM_ROWS] = (TType.I64, sum(p.meta[FMD_NUM_ROWS][1] for p in parts))
    meta[FMD_ROW_GROUPS] = (TType.LIST, (TType.STRUCT, groups))
    footer = encode(meta)
    pieces.append(footer + struct.pack("<I", len(footer)) + MAGIC)
    return pieces


def _plain(part: PartFooter, codec_id: int, row_group_size: int) -> bool:
    """Unencrypted, every chunk in this file, in the codec asked for, with statistics."""
    meta = part.meta
    if FMD_ENCRYPTION in meta or FMD_SIGNING_KEY in meta or FMD_NUM_ROWS not in meta:
        return False
    for rg in part.row_groups():
        if rg[RG_NUM_ROWS][1] > row_group_size:
            return False
        for chunk in rg[RG_COLUMNS][1][1]:
            if any(f in chunk for f in (CC_FILE_PATH, CC_CRYPTO, CC_ENCRYPTED_META)):
                return False
            cmd = chunk.get(CC_META, (0, None))[1]
            if cmd is None or cmd[CMD_CODEC][1] != codec_id or CMD_STATISTICS not in cmd:
                return False
    return True


def _shifted(rg: Fields, delta: int, ordinal: int) -> Fields:
    """A row group whose bytes moved by `delta`: every offset shifted (0 is "not set")."""
    rg = _shift(rg, (RG_FILE_OFFSET,), delta)
    if RG_ORDINAL in rg:
        rg[RG_ORDINAL] = (TType.I16, ordinal)
    etype, chunks = rg[RG_COLUMNS][1]
    moved = []
    for chunk in chunks:
        chunk = _shift(chunk, (CC_FILE_OFFSET, CC_OFFSET_INDEX, CC_COLUMN_INDEX), delta)
        offsets = (CMD_DATA_PAGE, CMD_INDEX_PAGE, CMD_DICTIONARY_PAGE, CMD_BLOOM_FILTER)
        chunk[CC_META] = (TType.STRUCT, _shift(chunk[CC_META][1], offsets, delta))
        moved.append(chunk)
    rg[RG_COLUMNS] = (TType.LIST, (etype, moved))
    return rg


def _shift(fields: Fields, ids: Sequence[int], delta: int) -> Fields:
    out = dict(fields)
    for fid in ids:
        if fid in out and out[fid][1] > 0:
            out[fid] = (out[fid][0], out[fid][1] + delta)
    return out
