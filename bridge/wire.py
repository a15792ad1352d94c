"""Wire format of the split runtime: length-prefixed binary frames, no pickle.
Design: ``docs/design.md §5 (protocol, threat model)``.

A frame on the wire is::

    u32 length                      bytes that follow (header + payload + crc + tag)
    header (HEADER, 48 bytes, network byte order)
        4s  magic       b"SPWR"
        B   version     WIRE_VERSION
        B   msg_type    OPEN, STEP, CLOSE, RESULT, ACK, ERROR (MsgType)
        B   flags       bit 0: an HMAC-SHA256 tag follows the crc
        B   dtype       tensor dtype code (DType), NONE for no tensor
        Q   request_id
        I   seq         sequence number (see the runtime modules for each direction's meaning)
        I   aux         message-specific integer (e.g. the server's next expected seq)
        h   layer       layer index (-1 before the first layer, L after the last)
        B   tag         crossing tag (which tensor of the layer) or error code
        B   ndim        0..MAX_NDIM
        4I  shape       dims; the ones beyond ndim are 0
        I   payload_len
    payload                          raw tensor bytes (C order, little endian)
    u32 crc32                        zlib.crc32 of header + payload (accidental corruption)
    [32 bytes HMAC-SHA256(key, length + header + payload + crc)]   when flags bit 0 is set

Tensor encodings (``DType``): F32, F16, I8, U8, I32, I64 are the raw numpy dtypes; I4 is
signed 4-bit integers in ``[-8, 7]`` packed two per byte (low nibble first, a final half-byte
of zero when the count is odd); Q8 / Q4 are activations quantized per row (the last axis) to
int8 / packed int4 with one float32 scale per row appended after the integers. Q8 / Q4 use
exactly ``bridge.quant.cross``'s rule (symmetric absmax, levels ``+-(2^(b-1)-1)``, round half
to even, all in float32), so a decoded tensor equals the fake-quantized one bit for bit. Scales
travel as float32 (4 bytes a row) rather than float16 so that this equality holds.

Every check that fails raises a subclass of :class:`WireError` whose ``reason`` says what was
wrong: :class:`OversizedFrame` (length over the limit, checked before the body is read),
:class:`TruncatedFrame` (the stream ended inside a frame), :class:`MalformedFrame` (bad magic,
version, type, dtype, shape, lengths or crc), :class:`AuthError` (missing, unexpected or wrong
HMAC tag; compared with ``hmac.compare_digest``), :class:`OutOfOrderFrame` (a sequence number
other than the one expected). :class:`PeerClosed` is a clean end of stream between frames.
Only numpy is needed here.
"""

from __future__ import annotations

import dataclasses
import enum
import hashlib
import hmac
import socket
import struct
import zlib

import numpy as np

MAGIC = b"SPWR"
WIRE_VERSION = 1
MAX_NDIM = 4
HEADER = struct.Struct("!4sBBBBQIIhBB4II")
LENGTH = struct.Struct("!I")
CRC = struct.Struct("!I")
TAG_BYTES = hashlib.sha256().digest_size
DEFAULT_MAX_FRAME = 64 * 1024 * 1024
FLAG_HMAC = 0x01


class MsgType(enum.IntEnum):
    """Message types: edge -> cloud (OPEN, STEP, CLOSE) and cloud -> edge (RESULT, ACK,
    ERROR)."""

    OPEN = 1
    STEP = 2
    CLOSE = 3
    RESULT = 4
    ACK = 5
    ERROR = 6


class DType(enum.IntEnum):
    """Tensor dtype codes of the header."""

    NONE = 0
    F32 = 1
    F16 = 2
    I8 = 3
    U8 = 4
    I32 = 5
    I64 = 6
    I4 = 7
    Q8 = 8
    Q4 = 9


_RAW = {
    DType.F32: np.dtype("<f4"),
    DType.F16: np.dtype("<f2"),
    DType.I8: np.dtype("i1"),
    DType.U8: np.dtype("u1"),
    DType.I32: np.dtype("<i4"),
    DType.I64: np.dtype("<i8"),
}
_RAW_CODE = {v: k for k, v in _RAW.items()}
PRECISION_DTYPE = {"fp32": DType.F32, "fp16": DType.F16, "int8": DType.Q8, "int4": DType.Q4}
QUANT_BITS = {DType.Q8: 8, DType.Q4: 4}


class WireError(Exception):
    """A frame was rejected; ``reason`` says why (logged by the receiver)."""

    def __init__(self, reason: str):
        self.reason = reason
        super().__init__(reason)


class MalformedFrame(WireError):
    """Bad magic, version, type, dtype, shape, length fields or checksum."""


class TruncatedFrame(WireError):
    """The stream ended inside a frame."""


class OversizedFrame(WireError):
    """The announced frame length exceeds the receiver's maximum."""


class AuthError(WireError):
    """The HMAC tag is missing, unexpected, or does not match the shared key."""


class OutOfOrderFrame(WireError):
    """A sequence number other than the expected one."""


class PeerClosed(ConnectionError):
    """The peer closed the stream cleanly between two frames."""


@dataclasses.dataclass(frozen=True)
class Frame:
    """One decoded message. ``payload`` holds the encoded tensor bytes (see ``array``)."""

    msg_type: MsgType
    request_id: int
    seq: int
    layer: int = -1
    tag: int = 0
    aux: int = 0
    dtype: DType = DType.NONE
    shape: tuple[int, ...] = ()
    payload: bytes = b""

    def array(self) -> np.ndarray | None:
        """The tensor: raw dtypes as stored, I4 as int8 values, Q8 / Q4 dequantized to
        float32; None when the frame carries no tensor."""
        if self.dtype == DType.NONE:
            return None
        return decode_tensor(self.dtype, self.shape, self.payload)

    def activation(self) -> np.ndarray:
        """The tensor as a float32 activation (F32, F16 widened, Q8 / Q4 dequantized)."""
        if self.dtype not in (DType.F32, DType.F16, DType.Q8, DType.Q4):
            raise MalformedFrame(f"expected an activation tensor, got dtype {self.dtype.name}")
        return decode_tensor(self.dtype, self.shape, self.payload).astype(np.float32, copy=False)

    def text(self) -> str:
        """The payload as UTF-8 text (ERROR frames carry their reason this way)."""
        return self.payload.decode("utf-8", errors="replace")


# --------------------------------------------------------------------------------------------
# Tensor codecs


def _rows(shape: tuple[int, ...]) -> int:
    return int(np.prod(shape[:-1], dtype=np.int64)) if len(shape) >= 1 else 1


def payload_size(dtype: DType, shape: tuple[int, ...]) -> int:
    """Bytes of the payload of a tensor of ``dtype`` and ``shape``."""
    n = int(np.prod(shape, dtype=np.int64))
    if dtype == DType.NONE:
        return 0
    if dtype in _RAW:
        return n * _RAW[dtype].itemsize
    if dtype == DType.I4:
        return (n + 1) // 2
    if dtype == DType.Q8:
        return n + 4 * _rows(shape) if n else 0
    if dtype == DType.Q4:
        return (n + 1) // 2 + 4 * _rows(shape) if n else 0
    raise MalformedFrame(f"unknown dtype code {int(dtype)}")


def pack_int4(q: np.ndarray) -> bytes:
    """Signed 4-bit values ``[-8, 7]`` (any integer array) packed two per byte, low first."""
    flat = np.asarray(q).reshape(-1).astype(np.int16)
    if flat.size and (flat.min() < -8 or flat.max() > 7):
        raise ValueError("int4 values must lie in [-8, 7]")
    nib = (flat & 0xF).astype(np.uint8)
    if nib.size % 2:
        nib = np.append(nib, np.uint8(0))
    return (nib[0::2] | (nib[1::2] << 4)).astype(np.uint8).tobytes()


def unpack_int4(buf: bytes, n: int) -> np.ndarray:
    """Inverse of ``pack_int4``: int8 [n] in ``[-8, 7]``."""
    b = np.frombuffer(buf, dtype=np.uint8)
    nib = np.empty(b.size * 2, dtype=np.uint8)
    nib[0::2], nib[1::2] = b & 0xF, b >> 4
    v = nib[:n].astype(np.int8)
    return np.where(v > 7, v - 16, v).astype(np.int8)


def absmax_quantize(x: np.ndarray, bits: int) -> tuple[np.ndarray, np.ndarray]:
    """Per-row symmetric absmax quantization in float32, as ``bridge.quant.cross``.

    Returns int8 levels ``q`` (same shape as ``x``) and float32 scales ``[rows]`` with
    ``x ~= q * scale`` row-wise; all-zero rows get scale 0 and levels 0.
    """
    x = np.asarray(x, dtype=np.float32)
    qmax = np.float32(2 ** (bits - 1) - 1)
    amax = np.abs(x).max(axis=-1, keepdims=True)
    scale = (amax / qmax).astype(np.float32)
    safe = np.where(scale > 0, scale, np.float32(1.0))
    q = np.clip(np.rint(x / safe), -qmax, qmax).astype(np.int8)
    q = np.where(scale > 0, q, np.int8(0))
    return q, scale.reshape(-1)


def fake_quantize(x: np.ndarray, precision: str) -> np.ndarray:
    """What the receiver sees of float32 ``x`` sent at ``precision`` (numpy twin of
    ``bridge.quant.cross``)."""
    dtype, shape, payload = encode_tensor(x, precision)
    return decode_tensor(dtype, shape, payload).astype(np.float32, copy=False)


def encode_tensor(x: np.ndarray, precision: str | None = None) -> tuple[DType, tuple, bytes]:
    """(dtype code, shape, payload) of ``x``.

    With ``precision`` (``fp32``, ``fp16``, ``int8``, ``int4``) ``x`` is a float activation
    encoded at that precision; without it, ``x`` is sent raw in its own dtype (one of F32,
    F16, I8, U8, I32, I64).
    """
    x = np.asarray(x)
    if x.ndim > MAX_NDIM:
        raise ValueError(f"tensors of at most {MAX_NDIM} dims go on the wire, got {x.ndim}")
    shape = tuple(int(s) for s in x.shape)
    if precision is None:
        code = _RAW_CODE.get(x.dtype.newbyteorder("<") if x.dtype.byteorder == ">" else x.dtype)
        if code is None:
            raise ValueError(f"dtype {x.dtype} has no raw wire encoding")
        return code, shape, np.ascontiguousarray(x, dtype=_RAW[code]).tobytes()
    if precision not in PRECISION_DTYPE:
        raise ValueError(f"unknown precision {precision!r}; expected {tuple(PRECISION_DTYPE)}")
    code = PRECISION_DTYPE[precision]
    xf = np.ascontiguousarray(x, dtype=np.float32)
    if code == DType.F32:
        return code, shape, xf.tobytes()
    if code == DType.F16:
        return code, shape, xf.astype("<f2").tobytes()
    if xf.size == 0:
        return code, shape, b""
    q, scale = absmax_quantize(xf if xf.ndim else xf.reshape(1), QUANT_BITS[code])
    body = q.tobytes() if code == DType.Q8 else pack_int4(q)
    return code, shape, body + scale.astype("<f4").tobytes()


def decode_tensor(dtype: DType, shape: tuple[int, ...], payload: bytes) -> np.ndarray:
    """Inverse of ``encode_tensor`` (Q8 / Q4 come back dequantized, float32)."""
    want = payload_size(dtype, shape)
    if len(payload) != want:
        raise MalformedFrame(f"payload of {len(payload)} bytes, {dtype.name}{list(shape)} "
                             f"needs {want}")
    n = int(np.prod(shape, dtype=np.int64))
    if dtype in _RAW:
        return np.frombuffer(payload, dtype=_RAW[dtype]).reshape(shape).copy()
    if dtype == DType.I4:
        return unpack_int4(payload, n).reshape(shape)
    if n == 0:
        return np.zeros(shape, np.float32)
    rows = _rows(shape)
    body, scales = payload[: want - 4 * rows], payload[want - 4 * rows :]
    q = np.frombuffer(body, np.int8) if dtype == DType.Q8 else unpack_int4(body, n)
    scale = np.frombuffer(scales, "<f4").astype(np.float32)
    if not np.all(np.isfinite(scale)) or np.any(scale < 0):
        raise MalformedFrame("quantization scales must be finite and >= 0")
    qmax = 2 ** (QUANT_BITS[dtype] - 1) - 1
    if np.abs(q.astype(np.int16)).max(initial=0) > qmax:
        raise MalformedFrame(f"{dtype.name} levels outside [-{qmax}, {qmax}]")
    deq = q.reshape(rows, -1).astype(np.float32) * scale[:, None]
    return deq.reshape(shape)


# --------------------------------------------------------------------------------------------
# Frames


def make_frame(msg_type: MsgType, request_id: int, seq: int, *, layer: int = -1, tag: int = 0,
               aux: int = 0, array: np.ndarray | None = None, precision: str | None = None,
               text: str | None = None) -> Frame:
    """A frame carrying ``array`` (encoded at ``precision``, or raw) or UTF-8 ``text``."""
    if array is not None and text is not None:
        raise ValueError("a frame carries a tensor or a text, not both")
    if array is not None:
        dtype, shape, payload = encode_tensor(array, precision)
    elif text is not None:
        raw = np.frombuffer(text.encode("utf-8"), np.uint8)
        dtype, shape, payload = DType.U8, (raw.size,), raw.tobytes()
    else:
        dtype, shape, payload = DType.NONE, (), b""
    return Frame(MsgType(msg_type), request_id, seq, layer, tag, aux, dtype, shape, payload)


def encode_frame(frame: Frame, key: bytes | None = None) -> bytes:
    """The bytes of ``frame`` on the wire (with an HMAC-SHA256 tag when ``key`` is given)."""
    if len(frame.shape) > MAX_NDIM:
        raise ValueError(f"at most {MAX_NDIM} dims")
    if payload_size(frame.dtype, frame.shape) != len(frame.payload):
        raise ValueError("payload length does not match dtype and shape")
    dims = tuple(frame.shape) + (0,) * (MAX_NDIM - len(frame.shape))
    header = HEADER.pack(MAGIC, WIRE_VERSION, int(frame.msg_type), FLAG_HMAC if key else 0,
                         int(frame.dtype), frame.request_id, frame.seq, frame.aux, frame.layer,
                         frame.tag, len(frame.shape), *dims, len(frame.payload))
    body = header + frame.payload
    body += CRC.pack(zlib.crc32(body))
    length = LENGTH.pack(len(body) + (TAG_BYTES if key else 0))
    if key:
        return length + body + hmac.new(key, length + body, hashlib.sha256).digest()
    return length + body


def check_length(length: int, max_frame: int = DEFAULT_MAX_FRAME) -> None:
    """Reject an announced frame length before its body is read."""
    if length > max_frame:
        raise OversizedFrame(f"frame of {length} bytes exceeds the maximum of {max_frame}")
    if length < HEADER.size + CRC.size:
        raise MalformedFrame(f"frame of {length} bytes is shorter than header + crc "
                             f"({HEADER.size + CRC.size})")


def decode_body(length_bytes: bytes, body: bytes, key: bytes | None = None) -> Frame:
    """Parse and verify one frame given its length prefix and the ``length`` bytes after it."""
    (length,) = LENGTH.unpack(length_bytes)
    if len(body) != length:
        raise TruncatedFrame(f"frame announced {length} bytes, got {len(body)}")
    magic, version, mtype, flags, dtype, rid, seq, aux, layer, tag, ndim, *rest = HEADER.unpack(
        body[: HEADER.size])
    dims, payload_len = rest[:MAX_NDIM], rest[MAX_NDIM]
    if magic != MAGIC:
        raise MalformedFrame(f"bad magic {magic!r}")
    if version != WIRE_VERSION:
        raise MalformedFrame(f"wire version {version}, this side speaks {WIRE_VERSION}")
    has_tag = bool(flags & FLAG_HMAC)
    if flags & ~FLAG_HMAC:
        raise MalformedFrame(f"unknown flags 0x{flags:02x}")
    if key is not None:
        if not has_tag:
            raise AuthError("frame is not authenticated (no HMAC tag) but a key is configured")
        mac, tag_got = body[:-TAG_BYTES], body[-TAG_BYTES:]
        want = hmac.new(key, length_bytes + mac, hashlib.sha256).digest()
        if not hmac.compare_digest(want, tag_got):
            raise AuthError("HMAC tag does not match (wrong key or altered frame)")
        body = mac
    elif has_tag:
        raise AuthError("frame carries an HMAC tag but no key is configured")
    expected = HEADER.size + payload_len + CRC.size
    if len(body) != expected:
        raise MalformedFrame(f"length field says {len(body)} bytes, header implies {expected}")
    (crc,) = CRC.unpack(body[-CRC.size :])
    if zlib.crc32(body[: -CRC.size]) != crc:
        raise MalformedFrame("crc32 mismatch (corrupted frame)")
    try:
        mtype, dtype = MsgType(mtype), DType(dtype)
    except ValueError as err:
        raise MalformedFrame(f"unknown code: {err}") from None
    if ndim > MAX_NDIM or any(dims[ndim:]):
        raise MalformedFrame(f"bad shape: ndim {ndim}, dims {dims}")
    shape = tuple(dims[:ndim])
    if dtype == DType.NONE and ndim:
        raise MalformedFrame("a frame without tensor has a shape")
    if payload_size(dtype, shape) != payload_len:
        raise MalformedFrame(f"payload of {payload_len} bytes does not fit {dtype.name}"
                             f"{list(shape)}")
    payload = body[HEADER.size : HEADER.size + payload_len]
    return Frame(mtype, rid, seq, layer, tag, aux, dtype, shape, payload)


def decode_frame(data: bytes, key: bytes | None = None,
                 max_frame: int = DEFAULT_MAX_FRAME) -> Frame:
    """Decode exactly one complete frame (length prefix included) from ``data``."""
    if len(data) < LENGTH.size:
        raise TruncatedFrame(f"{len(data)} bytes, a frame needs at least the length prefix")
    (length,) = LENGTH.unpack(data[: LENGTH.size])
    check_length(length, max_frame)
    body = data[LENGTH.size :]
    if len(body) < length:
        raise TruncatedFrame(f"frame announced {length} bytes, got {len(body)}")
    if len(body) > length:
        raise MalformedFrame(f"{len(body) - length} trailing bytes after the frame")
    return decode_body(data[: LENGTH.size], body, key)


def _recv_exact(sock: socket.socket, n: int, at_boundary: bool) -> bytes:
    chunks, got = [], 0
    while got < n:
        chunk = sock.recv(min(n - got, 1 << 20))
        if not chunk:
            if at_boundary and got == 0:
                raise PeerClosed("peer closed the connection")
            raise TruncatedFrame(f"stream ended after {got} of {n} bytes")
        chunks.append(chunk)
        got += len(chunk)
    return b"".join(chunks)


def read_frame(sock: socket.socket, key: bytes | None = None,
               max_frame: int = DEFAULT_MAX_FRAME) -> tuple[Frame, int]:
    """Read one frame from a blocking socket; returns (frame, bytes read).

    Raises ``PeerClosed`` on a clean end of stream before the frame, a ``WireError`` on a bad
    frame, and the socket's own ``OSError`` / ``TimeoutError``.
    """
    length_bytes = _recv_exact(sock, LENGTH.size, at_boundary=True)
    (length,) = LENGTH.unpack(length_bytes)
    check_length(length, max_frame)
    body = _recv_exact(sock, length, at_boundary=False)
    return decode_body(length_bytes, body, key), LENGTH.size + length


def check_order(expected: int, got: int, what: str = "seq") -> None:
    """Raise ``OutOfOrderFrame`` unless ``got == expected``."""
    if got != expected:
        raise OutOfOrderFrame(f"{what} {got} out of order: expected {expected}")


def read_key_file(path) -> bytes:
    """The shared HMAC key from a file: its bytes with surrounding whitespace stripped (at
    least 16 bytes, so that a typo'd empty file does not silently disable authentication)."""
    with open(path, "rb") as fh:
        key = fh.read().strip()
    if len(key) < 16:
        raise ValueError(f"{path}: an HMAC key needs at least 16 bytes, found {len(key)}")
    return key
