"""Reader and writer of the AstroCNN `.acnn` model format (docs/MODEL_FORMAT.md) in Python.

An implementation independent of the Swift one (Sources/ModelFormat), used by
tools/keras2acnn.py (writer) and Benchmarks/peers.py (reader); the test suite cross-checks the two.
"""
import struct

import numpy as np

# ---------------------------------------------------------------- CRC-32C (Castagnoli)
_CRC_TABLE = []
for _i in range(256):
    _c = _i
    for _ in range(8):
        _c = (_c >> 1) ^ 0x82F63B78 if _c & 1 else _c >> 1
    _CRC_TABLE.append(_c)


def crc32c(data: bytes, crc: int = 0) -> int:
    try:  # a C implementation when installed
        import crc32c as _fast  # type: ignore
        return _fast.crc32c(data, crc)
    except ImportError:
        pass
    c = crc ^ 0xFFFFFFFF
    t = _CRC_TABLE
    for b in data:
        c = (c >> 8) ^ t[(c ^ b) & 0xFF]
    return c ^ 0xFFFFFFFF


# ---------------------------------------------------------------- binary writer
MAGIC = b"ACNN\r\n\x1a\n"
BOM = 0x0A0B0C0D
ALIGN = 64


def _string(s: str) -> bytes:
    b = s.encode("utf-8")
    return struct.pack("<I", len(b)) + b


def _value(v) -> bytes:
    if isinstance(v, bool):
        return b"\x04" + struct.pack("<B", 1 if v else 0)
    if isinstance(v, int):
        return b"\x02" + struct.pack("<q", v)
    if isinstance(v, float):
        return b"\x03" + struct.pack("<d", v)
    if isinstance(v, str):
        return b"\x01" + _string(v)
    if isinstance(v, (list, tuple)):
        if all(isinstance(x, int) and not isinstance(x, bool) for x in v):
            return b"\x05" + struct.pack("<I", len(v)) + b"".join(struct.pack("<q", x) for x in v)
        return b"\x06" + struct.pack("<I", len(v)) + b"".join(struct.pack("<d", float(x)) for x in v)
    raise TypeError(f"unsupported metadata value {v!r}")


def _key_values(kv: dict) -> bytes:
    out = struct.pack("<I", len(kv))
    for k in sorted(kv):
        out += _string(k) + _value(kv[k])
    return out


def encode_acnn(metadata: dict, inputs, outputs, nodes, tensors: dict) -> bytes:
    """inputs: [(name, channels)]; nodes: [dict(name, op, inputs, output, params, attrs)];
    tensors: {name: (np.ndarray float32, 'float32'|'float16')}"""
    data = bytearray()
    table = []
    for name in sorted(tensors):
        arr, dtype = tensors[name]
        while len(data) % ALIGN:
            data.append(0)
        raw = np.ascontiguousarray(arr, dtype="<f2" if dtype == "float16" else "<f4").tobytes()
        table.append((name, 2 if dtype == "float16" else 1, arr.shape, len(data), len(raw), crc32c(raw)))
        data += raw
    while len(data) % ALIGN:
        data.append(0)

    meta = _key_values(metadata)
    tens = struct.pack("<I", len(table))
    for name, dt, shape, off, length, crc in table:
        tens += _string(name) + struct.pack("<BB", dt, len(shape))
        tens += b"".join(struct.pack("<I", d) for d in shape)
        tens += struct.pack("<QQI", off, length, crc)
    graph = struct.pack("<I", len(inputs))
    for name, ch in inputs:
        graph += _string(name) + struct.pack("<I", ch)
    graph += struct.pack("<I", len(outputs)) + b"".join(_string(o) for o in outputs)
    graph += struct.pack("<I", len(nodes))
    for n in nodes:
        graph += _string(n["name"]) + _string(n["op"])
        graph += struct.pack("<I", len(n["inputs"])) + b"".join(_string(v) for v in n["inputs"])
        graph += struct.pack("<I", 1) + _string(n["output"])
        graph += struct.pack("<I", len(n["params"])) + b"".join(_string(p) for p in n["params"])
        graph += _key_values(n.get("attrs", {}))

    sections = b""
    for tag, body in ((b"META", meta), (b"TENS", tens), (b"GRPH", graph)):
        sections += tag + struct.pack("<I", len(body)) + body
    header_length = 64 + len(sections)
    data_offset = (header_length + ALIGN - 1) // ALIGN * ALIGN
    file_length = data_offset + len(data)
    pre = MAGIC + struct.pack("<IHHIIQQQII", BOM, 1, 0, 64, header_length, file_length, data_offset,
                              len(data), 0, 3) + b"\0" * 8
    assert len(pre) == 64
    header = bytearray(pre + sections)
    struct.pack_into("<I", header, 48, crc32c(bytes(header)))
    return bytes(header) + b"\0" * (data_offset - header_length) + bytes(data)




# ---------------------------------------------------------------- reader
class FormatError(Exception):
    pass


class _R:
    def __init__(self, b, pos, end):
        self.b, self.pos, self.end = b, pos, end

    def take(self, n):
        if n < 0 or self.pos + n > self.end:
            raise FormatError("truncated")
        v = self.b[self.pos:self.pos + n]
        self.pos += n
        return v

    def u8(self): return self.take(1)[0]
    def u32(self): return struct.unpack("<I", self.take(4))[0]
    def u64(self): return struct.unpack("<Q", self.take(8))[0]
    def string(self): return self.take(self.u32()).decode("utf-8")

    def value(self):
        t = self.u8()
        if t == 1: return self.string()
        if t == 2: return struct.unpack("<q", self.take(8))[0]
        if t == 3: return struct.unpack("<d", self.take(8))[0]
        if t == 4: return bool(self.u8())
        if t == 5: return [struct.unpack("<q", self.take(8))[0] for _ in range(self.u32())]
        if t == 6: return [struct.unpack("<d", self.take(8))[0] for _ in range(self.u32())]
        raise FormatError(f"unknown value type {t}")

    def kv(self):
        return {self.string(): self.value() for _ in range(self.u32())}


def read_acnn(path):
    """Returns (metadata, graph, tensors): graph = dict(inputs=[(name, channels)], outputs=[...],
    nodes=[dict(name, op, inputs, output, params, attrs)]); tensors = {name: float32 ndarray}.
    Checks the magic, version and every CRC."""
    with open(path, "rb") as f:
        b = f.read()
    if len(b) < 64 or b[:8] != MAGIC:
        raise FormatError("not an .acnn file")
    bom, major, minor, pre, hlen, flen, doff, dlen, hcrc, nsec = struct.unpack("<IHHIIQQQII", b[8:56])
    if bom != BOM or major != 1 or flen != len(b):
        raise FormatError("bad byte order, version or length")
    h = bytearray(b[:hlen])
    h[48:52] = b"\0\0\0\0"
    if crc32c(bytes(h)) != hcrc:
        raise FormatError("header checksum mismatch")
    r = _R(b, pre, hlen)
    sections = {}
    for _ in range(nsec):
        tag = bytes(r.take(4)).decode("ascii", "replace")
        n = r.u32()
        sections[tag] = (r.pos, r.pos + n)
        r.take(n)
    m = _R(b, *sections["META"])
    metadata = m.kv()
    t = _R(b, *sections["TENS"])
    tensors = {}
    for _ in range(t.u32()):
        name = t.string()
        dtype = t.u8()
        shape = [t.u32() for _ in range(t.u8())]
        off, length, crc = t.u64(), t.u64(), t.u32()
        raw = b[doff + off: doff + off + length]
        if crc32c(raw) != crc:
            raise FormatError(f"tensor {name}: checksum mismatch")
        arr = np.frombuffer(raw, dtype="<f2" if dtype == 2 else "<f4").astype(np.float32).reshape(shape)
        tensors[name] = arr
    g = _R(b, *sections["GRPH"])
    inputs = [(g.string(), g.u32()) for _ in range(g.u32())]
    outputs = [g.string() for _ in range(g.u32())]
    nodes = []
    for _ in range(g.u32()):
        name, op = g.string(), g.string()
        ins = [g.string() for _ in range(g.u32())]
        outs = [g.string() for _ in range(g.u32())]
        params = [g.string() for _ in range(g.u32())]
        nodes.append(dict(name=name, op=op, inputs=ins, output=outs[0], params=params, attrs=g.kv()))
    return metadata, dict(inputs=inputs, outputs=outputs, nodes=nodes), tensors
