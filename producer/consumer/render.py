"""Output formats as field tables over columns: one Arrow table per block, and NDJSON written from it.

A format that has a columnar form (ECS today) declares its event as a tree of
``Obj`` nodes whose leaves say where each value comes from (``Int("src_port")``,
``Ip("src_ip")``, ``Const("network")`` ...).  ``Block`` evaluates that tree
over the ``Columns`` of many messages (reader.py) at once: numpy and Arrow
compute for the arithmetic and the lookups, ``_render.c`` for the text a
field needs (addresses, MACs, times, event ids, Community IDs).  The result
is an Arrow record batch -- the Parquet sink writes it as it is -- and
``_render.ndjson`` writes the same values as JSON lines, leaving out null
leaves and the objects left empty, as the dict path does.

The dict path (the format's per-record function) stays the reference and the
fallback: tests/test_render.py requires the same JSON bytes and the same
Arrow table on thousands of random records, and a block any part of which
the columnar path refuses (ValueError: an address of the wrong length, a
string that is not UTF-8, an identity field missing) is mapped message by
message by the dict path, which raises the MappingError that dead-letters the
message at fault.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
import orjson
import pyarrow as pa
import pyarrow.compute as pc

from producer.consumer import _render  # type: ignore[attr-defined]
from producer.consumer.reader import Columns

Bools = npt.NDArray[np.bool_]
L_INT64, L_BOOL, L_STRING, L_LIST_STRING = 1, 2, 3, 4
J_OPEN, J_CLOSE, J_LEAF = 1, 2, 3


def text_array(parts: tuple[bytes, bytes, bytes], n: int) -> pa.Array:
    """An Arrow string array from ``_render``'s (data, int32 offsets, uint8 valid)."""
    data, offsets, valid = parts
    ok = np.frombuffer(valid, dtype=np.uint8, count=n) != 0
    nulls = n - int(np.count_nonzero(ok))
    bitmap = pa.py_buffer(_bits(ok)) if nulls else None
    return pa.Array.from_buffers(pa.string(), n, [bitmap, pa.py_buffer(offsets), pa.py_buffer(data)], nulls)


def repeated_text(value: str, n: int) -> pa.Array:
    raw = value.encode()
    offsets = (np.arange(n + 1, dtype=np.int32) * len(raw)).tobytes()
    return pa.Array.from_buffers(pa.string(), n, [None, pa.py_buffer(offsets), pa.py_buffer(raw * n)], 0)


def _bits(flags: npt.NDArray[np.bool_]) -> bytes:
    return np.packbits(flags, bitorder="little").tobytes()


def _bitmap(present: npt.NDArray[np.uint8]) -> pa.Buffer | None:
    """Arrow's validity bitmap for a presence column (None: no nulls)."""
    return None if present.all() else pa.py_buffer(_bits(present != 0))


def int_array(vals: npt.NDArray[np.int64], valid: Bools) -> pa.Array:
    """An Arrow int64 array of numpy values (shared, not copied) and where they are valid."""
    nulls = len(valid) - int(np.count_nonzero(valid))
    bitmap = pa.py_buffer(_bits(valid)) if nulls else None
    return pa.Array.from_buffers(pa.int64(), len(vals), [bitmap, pa.py_buffer(np.ascontiguousarray(vals))], nulls)


def bool_array(flags: Bools) -> pa.Array:
    return pa.Array.from_buffers(pa.bool_(), len(flags), [None, pa.py_buffer(_bits(flags))], 0)


def _valid(arr: pa.Array) -> Bools:
    return np.asarray(arr.is_valid().to_numpy(zero_copy_only=False), dtype=bool)


class Ctx:
    """One block's columns and what its leaves computed (a field used twice is computed once)."""

    def __init__(self, cols: Columns) -> None:
        self.cols = cols
        self.n = cols.n
        self._memo: dict[Any, pa.Array] = {}

    def memo(self, key: Any, make: Callable[[], pa.Array]) -> pa.Array:
        found = self._memo.get(key)
        if found is None:
            found = self._memo[key] = make()
        return found

    def field(self, name: str) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.uint8]]:
        if name not in self.cols.fields:
            raise ValueError(f"the schema has no field {name}")
        return self.cols.long(name)

    def span(self, name: str) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64], npt.NDArray[np.uint8]]:
        if name not in self.cols.fields:
            raise ValueError(f"the schema has no field {name}")
        return self.cols.span(name)

    def span_text(self, name: str, render: Callable[..., tuple[bytes, bytes, bytes]]) -> pa.Array:
        """The text column ``render`` (a ``_render`` function of (buf, off, len, present, n))
        makes of a bytes or string field; computed once per block."""
        def make() -> pa.Array:
            off, length, present = self.span(name)
            return text_array(render(self.cols.buf, off, length, present, self.n), self.n)
        return self.memo((render.__name__, name), make)

    def symbol_index(self, name: str, symbol: str) -> int:
        symbols = self.cols.fields[name].symbols
        if symbol not in symbols:
            raise ValueError(f"{name} has no symbol {symbol}")
        return symbols.index(symbol)


# -- leaves ------------------------------------------------------------------------------------


class Leaf:
    def arrow(self, ctx: Ctx) -> pa.Array:
        raise NotImplementedError


@dataclass(frozen=True)
class Int(Leaf):
    name: str

    def arrow(self, ctx: Ctx) -> pa.Array:
        vals, present = ctx.field(self.name)
        return int_array(vals, present != 0)


@dataclass(frozen=True)
class Bool(Leaf):
    name: str

    def arrow(self, ctx: Ctx) -> pa.Array:
        vals, present = ctx.field(self.name)
        return pa.Array.from_buffers(pa.bool_(), ctx.n, [_bitmap(present), pa.py_buffer(_bits(vals != 0))],
                                     ctx.n - int(np.count_nonzero(present)))


@dataclass(frozen=True)
class Str(Leaf):
    """An Avro string field."""

    name: str

    def arrow(self, ctx: Ctx) -> pa.Array:
        return ctx.span_text(self.name, _render.strings)


@dataclass(frozen=True)
class IntText(Leaf):
    """str() of an int field, or of item ``item`` of an array field (null where it is shorter)."""

    name: str
    item: int | None = None

    def arrow(self, ctx: Ctx) -> pa.Array:
        if self.item is None:
            return pc.cast(Int(self.name).arrow(ctx), pa.string())
        count, present = ctx.field(self.name)
        return pc.cast(int_array(ctx.cols.item(self.name, self.item), (present != 0) & (count > self.item)),
                       pa.string())


@dataclass(frozen=True)
class Ip(Leaf):
    name: str

    def arrow(self, ctx: Ctx) -> pa.Array:
        return ctx.span_text(self.name, _render.ip_texts)


@dataclass(frozen=True)
class Mac(Leaf):
    name: str
    sep: str = ":"
    upper: bool = False

    def arrow(self, ctx: Ctx) -> pa.Array:
        off, _present = ctx.field(self.name)
        return text_array(_render.mac_texts(ctx.cols.buf, off, ctx.n, self.upper, self.sep), ctx.n)


@dataclass(frozen=True)
class Time(Leaf):
    """RFC 3339 UTC with nanoseconds, of a nanosecond field (mapping.Texts.time)."""

    name: str

    def arrow(self, ctx: Ctx) -> pa.Array:
        ns, _present = ctx.field(self.name)
        return ctx.memo(("time", self.name), lambda: text_array(_render.time_texts(ns, ctx.n), ctx.n))


@dataclass(frozen=True)
class EventId(Leaf):
    """mapping.event_id from (host_id, capture_id, capture_cpu, capture_seq)."""

    def arrow(self, ctx: Ctx) -> pa.Array:
        def make() -> pa.Array:
            c = ctx.cols
            for name in ("host_id", "capture_id", "capture_cpu", "capture_seq"):
                if name not in c.fields or not c.present[c.fields[name].column, :c.n].all():
                    raise ValueError(f"a record without {name} (its id comes from its Kafka position)")
            host_off, host_len, _ = c.span("host_id")
            cap_off, cap_len, _ = c.span("capture_id")
            return text_array(_render.event_ids(c.buf, host_off, host_len, cap_off, cap_len, c.long("capture_cpu")[0],
                                                c.long("capture_seq")[0], c.n), c.n)
        return ctx.memo("event_id", make)


@dataclass(frozen=True)
class CommunityId(Leaf):
    """mapping.flow_hash: ICMP type and code where the record has them, the ports otherwise."""

    def arrow(self, ctx: Ctx) -> pa.Array:
        def make() -> pa.Array:
            c = ctx.cols
            proto, proto_p = ctx.field("ip_proto")
            src_off, src_len, src_p = ctx.span("src_ip")
            dst_off, dst_len, dst_p = ctx.span("dst_ip")
            icmp, icmp_p = ctx.field("icmp_type")
            code, code_p = ctx.field("icmp_code")
            sport, sport_p = ctx.field("src_port")
            dport, dport_p = ctx.field("dst_port")
            is_icmp = icmp_p != 0
            a = np.where(is_icmp, icmp, sport)
            a_p = np.where(is_icmp, icmp_p, sport_p).astype(np.uint8)
            b = np.where(is_icmp, code, dport)
            b_p = np.where(is_icmp, code_p, dport_p).astype(np.uint8)
            return text_array(_render.community_ids(c.buf, proto, proto_p, src_off, src_len, src_p, dst_off, dst_len,
                                                    dst_p, a, a_p, b, b_p, c.n), c.n)
        return ctx.memo("community_id", make)


Value = str | list[str]


def _value_array(values: Sequence[Value | None]) -> pa.Array:
    kinds = {type(v) for v in values if v is not None}
    return pa.array(list(values), pa.list_(pa.string()) if list in kinds else pa.string())


@dataclass(frozen=True)
class Const(Leaf):
    value: Value

    def arrow(self, ctx: Ctx) -> pa.Array:
        if isinstance(self.value, str):
            return repeated_text(self.value, ctx.n)
        raw = [v.encode() for v in self.value]
        k = len(raw)
        lengths = np.tile(np.array([len(r) for r in raw], dtype=np.int32), ctx.n)
        child_offsets = np.zeros(ctx.n * k + 1, dtype=np.int32)
        np.cumsum(lengths, out=child_offsets[1:])
        child = pa.Array.from_buffers(pa.string(), ctx.n * k, [None, pa.py_buffer(child_offsets.tobytes()),
                                                               pa.py_buffer(b"".join(raw) * ctx.n)], 0)
        return pa.ListArray.from_arrays(pa.array(np.arange(ctx.n + 1, dtype=np.int32) * k), child)


@dataclass(frozen=True)
class Lookup(Leaf):
    """table[value & mask] of an int or enum field (null where the field is null or the value is
    not in the table).  An enum's table is by symbol."""

    name: str
    table: Mapping[Any, Value]
    mask: int | None = None

    def arrow(self, ctx: Ctx) -> pa.Array:
        vals, present = ctx.field(self.name)
        symbols = ctx.cols.fields[self.name].symbols
        table = {symbols.index(k): v for k, v in self.table.items() if k in symbols} if symbols else self.table
        if self.mask is not None:
            vals = vals & self.mask
        keys = np.array(sorted(table), dtype=np.int64)
        at = np.searchsorted(keys, vals)
        found = (present != 0) & (at < len(keys)) & (keys[np.minimum(at, max(len(keys) - 1, 0))] == vals) \
            if len(keys) else np.zeros(ctx.n, dtype=bool)
        texts = [table[k] for k in keys.tolist()]
        if all(isinstance(t, str) for t in texts):
            raw = [str(t).encode() for t in texts] or [b""]
            return text_array(_render.lookup(np.where(found, at, 0), found.view(np.uint8), raw, ctx.n), ctx.n)
        values = _value_array([*texts, None])
        return values.take(pa.array(np.where(found, at, len(keys))))


@dataclass(frozen=True)
class Computed(Leaf):
    """A leaf computed by a function of the block (what the other leaves do not say)."""

    make: Callable[[Ctx], pa.Array]

    def arrow(self, ctx: Ctx) -> pa.Array:
        return self.make(ctx)


# -- objects -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class When:
    """Only where enum field ``name`` is (or, ``negate``, is not) ``symbol``."""

    name: str
    symbol: str
    negate: bool = False

    def mask(self, ctx: Ctx) -> Bools:
        vals, _present = ctx.field(self.name)
        hit: Bools = vals == ctx.symbol_index(self.name, self.symbol)
        return ~hit if self.negate else hit


@dataclass(frozen=True)
class Obj:
    members: tuple[tuple[str, Obj | Leaf], ...]
    when: When | None = None


def obj(*members: tuple[str, Obj | Leaf], when: When | None = None) -> Obj:
    return Obj(tuple(members), when)


def _masked(arr: pa.Array, keep: Bools | None) -> pa.Array:
    if keep is None or keep.all():
        return arr
    return pc.if_else(bool_array(keep), arr, pa.scalar(None, arr.type))


def _evaluate(node: Obj, ctx: Ctx, keep: Bools | None,
              leaves: list[pa.Array]) -> tuple[list[pa.Array], Bools | None]:
    """The node's member arrays (a struct's children) and where the node is present (None: in
    every row, the common case, computed without an array)."""
    if node.when is not None:
        cond = node.when.mask(ctx)
        keep = cond if keep is None else keep & cond
    arrays: list[pa.Array] = []
    valid: Bools | None = np.zeros(ctx.n, dtype=bool)
    for _key, member in node.members:
        v: Bools | None
        if isinstance(member, Obj):
            children, v = _evaluate(member, ctx, keep, leaves)
            # a struct's children in name order: what pyarrow infers from dicts (sinks/parquet.schema_for)
            named = sorted(zip((k for k, _ in member.members), children, strict=True), key=lambda kv: kv[0])
            arr = pa.StructArray.from_arrays([a for _, a in named], names=[k for k, _ in named],
                                             mask=None if v is None or v.all() else bool_array(~v))
        else:
            arr = _masked(member.arrow(ctx), keep)
            if arr.offset:
                arr = pa.concat_arrays([arr])
            leaves.append(arr)
            v = None if arr.null_count == 0 else _valid(arr)
        arrays.append(arr)
        if v is None:
            valid = None
        elif valid is not None:
            valid |= v
    return arrays, valid


def _plan(node: Obj, plan: list[tuple[int, int, int]], keys: list[bytes], leaf_no: list[int]) -> None:
    for key, member in node.members:
        keys.append(orjson.dumps(key) + b":")
        if isinstance(member, Obj):
            plan.append((J_OPEN, len(keys) - 1, 0))
            _plan(member, plan, keys, leaf_no)
            plan.append((J_CLOSE, 0, 0))
        else:
            plan.append((J_LEAF, len(keys) - 1, leaf_no[0]))
            leaf_no[0] += 1


def _leaf_buffers(arr: pa.Array) -> tuple[Any, ...]:
    bufs = arr.buffers()
    if pa.types.is_int64(arr.type):
        return (L_INT64, bufs[0], bufs[1])
    if pa.types.is_boolean(arr.type):
        return (L_BOOL, bufs[0], bufs[1])
    if pa.types.is_string(arr.type):
        return (L_STRING, bufs[0], bufs[1], bufs[2])
    if pa.types.is_list(arr.type) and pa.types.is_string(arr.type.value_type) and arr.values.offset == 0:
        return (L_LIST_STRING, bufs[0], bufs[1], bufs[3], bufs[4])
    raise TypeError(f"no JSON leaf for {arr.type}")


Path = tuple[str, ...]


class Template:
    """A format's event as a field table: ``block`` evaluates it over columns; ``plan`` writes its JSON.

    ``id_path``: where the event id is; ``time_path``/``host_path``: the RFC 3339 time and the host
    that make an event's Parquet partition (the formatter's ``partition``)."""

    def __init__(self, root: Obj, *, id_path: Path, time_path: Path, host_path: Path) -> None:
        self.root = root
        self.id_path = id_path
        self.time_path = time_path
        self.host_path = host_path
        plan: list[tuple[int, int, int]] = []
        self.keys: list[bytes] = []
        _plan(root, plan, self.keys, [0])
        self.plan = np.array(plan, dtype=np.int64).reshape(-1).tobytes()

    def block(self, cols: Columns) -> Block:
        """The block's events; ValueError if the columnar path refuses any of them."""
        ctx = Ctx(cols)
        leaves: list[pa.Array] = []
        arrays = _evaluate(self.root, ctx, None, leaves)[0]
        names = [k for k, _ in self.root.members]
        return Block(self, pa.RecordBatch.from_arrays(arrays, names=names), leaves, cols)


class Block:
    """The events of a ``Columns``: an Arrow record batch, and its NDJSON on demand."""

    def __init__(self, template: Template, batch: pa.RecordBatch, leaves: list[pa.Array], cols: Columns) -> None:
        self.template = template
        self.batch = batch
        self.cols = cols
        self._leaves = leaves
        self._ndjson: tuple[bytes, npt.NDArray[np.int64]] | None = None

    def __len__(self) -> int:
        return int(self.batch.num_rows)

    def column(self, path: Path) -> pa.Array:
        arr = self.batch.column(path[0])
        return pc.struct_field(arr, list(path[1:])) if len(path) > 1 else arr

    def ids(self) -> list[str]:
        return list(self.column(self.template.id_path).to_pylist())

    def dates(self) -> pa.Array:
        """Each event's UTC date, YYYY-MM-DD."""
        return pc.utf8_slice_codeunits(self.column(self.template.time_path), 0, 10)

    def partitions(self) -> list[tuple[tuple[str, str], pa.RecordBatch]]:
        """The rows by (UTC date, host): mostly one partition, taken as it is."""
        dates = self.dates()
        hosts = self.column(self.template.host_path)
        if pc.count_distinct(dates).as_py() == 1 and pc.count_distinct(hosts).as_py() == 1:
            return [((dates[0].as_py(), hosts[0].as_py()), self.batch)]
        keys = pc.binary_join_element_wise(dates, hosts, "\x00")
        out = []
        for key in pc.unique(keys).to_pylist():
            date, host = key.split("\x00", 1)
            out.append(((date, host), self.batch.filter(pc.equal(keys, key))))
        return out

    def ndjson(self) -> tuple[bytes, npt.NDArray[np.int64]]:
        """(the lines, the end of each): what ``orjson.dumps(event) + b"\\n"`` writes for each event."""
        if self._ndjson is None:
            t = self.template
            text, ends = _render.ndjson(t.plan, t.keys, [_leaf_buffers(a) for a in self._leaves], len(self))
            self._ndjson = (text, np.frombuffer(ends, dtype=np.int64))
        return self._ndjson

    def lines(self) -> list[bytes]:
        text, ends = self.ndjson()
        starts = [0, *ends[:-1].tolist()]
        return [text[a:b] for a, b in zip(starts, ends.tolist(), strict=True)]

    def dicts(self) -> list[dict[str, Any]]:
        return [orjson.loads(line) for line in self.lines()]
