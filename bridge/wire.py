"""Wire format of the split runtime: length-prefixed binary frames, no pickle.
Design: ``docs/design.md §5 (protocol, threat model)``.

A frame on the wire is::

    u32 length                      bytes that follow (header + [htag] + payload + crc + [tag])
    header (HEADER, 48 bytes, network byte order)
        4s  magic       b"SPWR"
        B   version     WIRE_VERSION
        B   msg_type    HELLO, WELCOME, OPEN, STEP, CLOSE, RESULT, ACK, ERROR (MsgType)
        B   flags       bit 0: the frame is authenticated (htag and tag present)
        B   dtype       tensor dtype code (DType), NONE for no tensor
        Q   request_id
        I   seq         sequence number (see the runtime modules for each direction's meaning)
        I   aux         message-specific integer (e.g. the server's next expected seq)
        h   layer       layer index (-1 before the first layer, L after the last)
        B   tag         crossing tag (which tensor of the layer) or error code
        B   ndim        0..MAX_NDIM
        4I  shape       dims; the ones beyond ndim are 0
        I   payload_len
    [16 bytes htag = HMAC-SHA256(key, "H" + counter + length + header)[:16]]   when keyed
    payload                          raw tensor bytes (C order, little endian)
    u32 crc32                        zlib.crc32 of header + payload (accidental corruption)
    [32 bytes tag = HMAC-SHA256(key, "F" + counter + length + header + htag + payload + crc)]

``key`` is the sending direction's session key and ``counter`` (u64, big endian, never sent)
the number of frames this direction has carried on the connection before this one, so every
frame is bound to its session, its direction and its position: a frame replayed, reordered,
dropped or moved to another connection fails its tag. The header tag lets a receiver check
the header, and so the message type and the payload size it announces, against a
per-message-type limit before it buffers the payload (``read_frame``'s ``limits``).

Sessions (``client_handshake`` / ``server_handshake``, ``Channel``): the edge sends ``HELLO``
with a fresh 32-byte nonce ``nc``, the cloud answers ``WELCOME`` with its own fresh nonce
``ns`` and ``nc`` echoed; both frames are tagged (counter 0) with handshake keys derived from
the shared key (HKDF-SHA256, RFC 5869, ``hkdf``). The session keys are
``HKDF(shared key, salt = nc + ns, info = "splitwise/2 c2s" | "splitwise/2 s2c")``, one per
direction, and counters continue from 1. A recorded session replayed to a cloud meets a new
``ns``, so its first replayed frame fails its tag. Without a shared key the same handshake
runs unauthenticated (nonces only; no protection against an active attacker).

Tensor encodings (``DType``): F32, F16, I8, U8, I32, I64 are the raw numpy dtypes; I4 is
signed 4-bit integers in ``[-8, 7]`` packed two per byte (low nibble first, a final half-byte
of zero when the count is odd); Q8 / Q4 are activations quantized group-wise (one scale per
``bridge.quant.cross_group(width)`` consecutive channels of the last axis: 64 for SmolLM2) to
int8 / packed int4 with one float32 scale per group appended after the integers (wire version
3; version 2 had one scale per row). Q8 / Q4 use
exactly ``bridge.quant.cross``'s rule (symmetric absmax, levels ``+-(2^(b-1)-1)``, round half
to even, all in float32), so a decoded tensor equals the fake-quantized one bit for bit. Scales
travel as float32 (4 bytes a row) rather than float16 so that this equality holds.

Every check that fails raises a subclass of :class:`WireError` whose ``reason`` says what was
wrong: :class:`OversizedFrame` (length over the limit, checked before the body is read),
:class:`TruncatedFrame` (the stream ended inside a frame), :class:`MalformedFrame` (bad magic,
version, type, dtype, shape, lengths or crc), :class:`AuthError` (missing, unexpected or wrong
HMAC tag; compared with ``hmac.compare_digest``), :class:`HandshakeRefused` (the peer refused
the session: wrong or missing key, busy), :class:`OutOfOrderFrame` (a sequence number
other than the one expected). :class:`PeerClosed` is a clean end of stream between frames.
Only numpy is needed here.
"""

from __future__ import annotations

import contextlib
import dataclasses
import enum
import hashlib
import hmac
import math
import os
import socket
import struct
import time
import zlib

import numpy as np

MAGIC = b"SPWR"
WIRE_VERSION = 3
MAX_NDIM = 4
HEADER = struct.Struct("!4sBBBBQIIhBB4II")
LENGTH = struct.Struct("!I")
CRC = struct.Struct("!I")
TAG_BYTES = hashlib.sha256().digest_size
HTAG_BYTES = 16
COUNTER = struct.Struct("!Q")
NONCE_BYTES = 32
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
    HELLO = 7
    WELCOME = 8


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


class HandshakeRefused(WireError):
    """The peer refused the session (``kind``: "auth" for a wrong or missing key, "busy" for
    a server at its connection limit, "version")."""

    def __init__(self, reason: str, kind: str = "auth"):
        self.kind = kind
        super().__init__(reason)


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


CROSS_GROUP = 64  # channels per scale of a quantized crossing (bridge.quant.cross too)


def cross_group(width: int, group: int = CROSS_GROUP) -> int:
    """Channels per scale of a crossing tensor whose last axis is ``width``: ``group`` when it
    divides the width, else 32 when that does, else the whole row (one scale per token)."""
    for g in (group, 32):
        if width >= g and width % g == 0:
            return g
    return max(int(width), 1)


def _rows(shape: tuple[int, ...]) -> int:
    """Quantization groups (scales) of a Q8 / Q4 tensor of ``shape``."""
    if not shape:
        return 1
    width = int(shape[-1])
    return math.prod(int(s) for s in shape[:-1]) * (width // cross_group(width) if width else 0)


def element_count(shape: tuple[int, ...]) -> int:
    """Elements of ``shape``, in Python integers (no overflow: a shape whose int64 product
    wraps to 0 still counts its true, huge, size)."""
    return math.prod(int(s) for s in shape)


def payload_size(dtype: DType, shape: tuple[int, ...]) -> int:
    """Bytes of the payload of a tensor of ``dtype`` and ``shape`` (exact integers)."""
    n = element_count(shape)
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
    flat = np.asarray(q).reshape(-1)
    if flat.size and (flat.min() < -8 or flat.max() > 7):
        raise ValueError("int4 values must lie in [-8, 7]")
    return _pack_levels(flat.astype(np.int8, copy=False))


def _pack_levels(flat: np.ndarray) -> bytes:
    """int8 [n] levels already in ``[-8, 7]`` packed two per byte, low nibble first (the
    two's-complement low nibble of each byte; an odd count gets a zero high nibble)."""
    u = flat.view(np.uint8)
    if u.size % 2:
        u = np.append(u, np.uint8(0))
    return ((u[0::2] & 0x0F) | (u[1::2] << 4)).tobytes()


def unpack_int4(buf: bytes, n: int) -> np.ndarray:
    """Inverse of ``pack_int4``: int8 [n] in ``[-8, 7]`` (nibbles sign-extended by
    arithmetic shifts)."""
    b = np.frombuffer(buf, dtype=np.uint8)
    out = np.empty(b.size * 2, dtype=np.int8)
    out[0::2] = (b << 4).view(np.int8) >> 4
    out[1::2] = b.view(np.int8) >> 4
    return out[:n]


def absmax_quantize(x: np.ndarray, bits: int, group: int | None = None
                    ) -> tuple[np.ndarray, np.ndarray]:
    """Symmetric absmax quantization in float32, as ``bridge.quant.cross``: one scale per
    ``group`` consecutive channels of the last axis (None: per row).

    Returns int8 levels ``q`` (same shape as ``x``) and float32 scales ``[groups]`` with
    ``x ~= q * scale`` group-wise; all-zero groups get scale 0 and levels 0. (The same
    float32 operations as the torch side, ``x / scale`` rounded half to even, so the two
    agree bit for bit; written as few NumPy calls as it takes, since a decode-step exchange
    quantizes 576 values and each call costs about a microsecond.)
    """
    x = np.asarray(x, dtype=np.float32)
    width = x.shape[-1] if x.ndim else 1
    if group is not None and width % group:
        raise ValueError(f"a row of {width} channels is not a whole number of groups of "
                         f"{group}")
    xg = x.reshape(-1, group if group is not None else width)
    qmax = np.float32(2 ** (bits - 1) - 1)
    scale = np.abs(xg).max(axis=1) / qmax
    pos = scale > 0
    q = np.rint(xg / np.where(pos, scale, np.float32(1.0))[:, None])
    np.clip(q, -qmax, qmax, out=q)
    q = q.astype(np.int8)
    if not pos.all():
        q[~pos] = 0
    return q.reshape(x.shape), scale


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
    xf = xf if xf.ndim else xf.reshape(1)
    q, scale = absmax_quantize(xf, QUANT_BITS[code], cross_group(xf.shape[-1]))
    body = q.tobytes() if code == DType.Q8 else _pack_levels(q.reshape(-1))
    return code, shape, body + scale.astype("<f4").tobytes()


def decode_tensor(dtype: DType, shape: tuple[int, ...], payload: bytes) -> np.ndarray:
    """Inverse of ``encode_tensor`` (Q8 / Q4 come back dequantized, float32)."""
    want = payload_size(dtype, shape)
    if len(payload) != want:
        raise MalformedFrame(f"payload of {len(payload)} bytes, {dtype.name}{list(shape)} "
                             f"needs {want}")
    n = element_count(shape)
    if dtype in _RAW:
        return np.frombuffer(payload, dtype=_RAW[dtype]).reshape(shape).copy()
    if dtype == DType.I4:
        return unpack_int4(payload, n).reshape(shape)
    if n == 0:
        return np.zeros(shape, np.float32)
    rows = _rows(shape)
    body, scales = payload[: want - 4 * rows], payload[want - 4 * rows :]
    q = np.frombuffer(body, np.int8) if dtype == DType.Q8 else unpack_int4(body, n)
    scale = np.frombuffer(scales, "<f4")
    if not np.all((scale >= 0) & (scale < np.inf)):  # NaN fails both
        raise MalformedFrame("quantization scales must be finite and >= 0")
    qmax = 2 ** (QUANT_BITS[dtype] - 1) - 1
    # The levels' top is the type's own (127; 7 after unpacking), so only -qmax - 1 can be
    # out of range: one reduction.
    if q.min(initial=0) < -qmax:
        raise MalformedFrame(f"{dtype.name} levels outside [-{qmax}, {qmax}]")
    return np.multiply(q.reshape(rows, -1), scale[:, None], dtype=np.float32).reshape(shape)


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


def _mac(key: bytes, kind: bytes, counter: int, *parts: bytes) -> bytes:
    h = hmac.new(key, kind + COUNTER.pack(counter), hashlib.sha256)
    for p in parts:
        h.update(p)
    return h.digest()


def encode_frame(frame: Frame, key: bytes | None = None, counter: int = 0) -> bytes:
    """The bytes of ``frame`` on the wire; with ``key``, authenticated as the ``counter``-th
    frame of its direction (header tag and frame tag, see the module docstring)."""
    if len(frame.shape) > MAX_NDIM:
        raise ValueError(f"at most {MAX_NDIM} dims")
    if payload_size(frame.dtype, frame.shape) != len(frame.payload):
        raise ValueError("payload length does not match dtype and shape")
    dims = tuple(frame.shape) + (0,) * (MAX_NDIM - len(frame.shape))
    header = HEADER.pack(MAGIC, WIRE_VERSION, int(frame.msg_type), FLAG_HMAC if key else 0,
                         int(frame.dtype), frame.request_id, frame.seq, frame.aux, frame.layer,
                         frame.tag, len(frame.shape), *dims, len(frame.payload))
    crc = CRC.pack(zlib.crc32(header + frame.payload))
    if not key:
        body = header + frame.payload + crc
        return LENGTH.pack(len(body)) + body
    length = LENGTH.pack(HEADER.size + HTAG_BYTES + len(frame.payload) + CRC.size + TAG_BYTES)
    htag = _mac(key, b"H", counter, length, header)[:HTAG_BYTES]
    tag = _mac(key, b"F", counter, length, header, htag, frame.payload, crc)
    return length + header + htag + frame.payload + crc + tag


def check_length(length: int, max_frame: int = DEFAULT_MAX_FRAME) -> None:
    """Reject an announced frame length before its body is read."""
    if length > max_frame:
        raise OversizedFrame(f"frame of {length} bytes exceeds the maximum of {max_frame}")
    if length < HEADER.size + CRC.size:
        raise MalformedFrame(f"frame of {length} bytes is shorter than header + crc "
                             f"({HEADER.size + CRC.size})")


@dataclasses.dataclass(frozen=True)
class Header:
    """A frame's header, checked (fields consistent, tag verified when keyed)."""

    msg_type: MsgType
    flags: int
    dtype: DType
    request_id: int
    seq: int
    aux: int
    layer: int
    tag: int
    shape: tuple[int, ...]
    payload_len: int

    @property
    def keyed(self) -> bool:
        return bool(self.flags & FLAG_HMAC)


def peek_flags(header: bytes) -> tuple[int, int]:
    """(msg_type code, flags) of raw header bytes, unchecked (to pick how to decode them)."""
    _, _, mtype, flags, *_ = HEADER.unpack(header[: HEADER.size])
    return mtype, flags


def check_header(length: int, length_bytes: bytes, header: bytes, htag: bytes | None,
                 key: bytes | None, counter: int = 0,
                 limits: dict | None = None) -> Header:
    """Parse and check a header before its payload is read: magic, version, flags, the header
    tag (when ``key``), codes, shape, payload size (exact integers) against ``length``, and
    ``length`` against ``limits[msg_type]`` (bytes; a type absent from ``limits`` is refused
    when ``limits`` is given)."""
    magic, version, mtype, flags, dtype, rid, seq, aux, layer, tag, ndim, *rest = HEADER.unpack(
        header)
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
        want = _mac(key, b"H", counter, length_bytes, header)[:HTAG_BYTES]
        if htag is None or not hmac.compare_digest(want, htag):
            raise AuthError("HMAC tag does not match (wrong key, altered, replayed or "
                            "reordered frame)")
    elif has_tag:
        raise AuthError("frame carries an HMAC tag but no key is configured")
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
                             f"{list(shape)} ({element_count(shape)} elements)")
    expected = HEADER.size + payload_len + CRC.size + (HTAG_BYTES + TAG_BYTES if has_tag else 0)
    if length != expected:
        raise MalformedFrame(f"length field says {length} bytes, header implies {expected}")
    if limits is not None:
        limit = limits.get(mtype)
        if limit is None:
            raise MalformedFrame(f"{mtype.name} is not accepted here")
        if length > limit:
            raise OversizedFrame(f"{mtype.name} frame of {length} bytes exceeds the maximum of "
                                 f"{limit} for that message type")
    return Header(mtype, flags, dtype, rid, seq, aux, layer, tag, shape, payload_len)


def decode_body(length_bytes: bytes, body: bytes, key: bytes | None = None, counter: int = 0,
                limits: dict | None = None) -> Frame:
    """Parse and verify one frame given its length prefix and the ``length`` bytes after it."""
    (length,) = LENGTH.unpack(length_bytes)
    if len(body) != length:
        raise TruncatedFrame(f"frame announced {length} bytes, got {len(body)}")
    header = body[: HEADER.size]
    _, flags = peek_flags(header)
    keyed = bool(flags & FLAG_HMAC)
    htag = body[HEADER.size : HEADER.size + HTAG_BYTES] if keyed else None
    h = check_header(length, length_bytes, header, htag, key, counter, limits)
    start = HEADER.size + (HTAG_BYTES if keyed else 0)
    payload = body[start : start + h.payload_len]
    crc = body[start + h.payload_len : start + h.payload_len + CRC.size]
    if key is not None:
        want = _mac(key, b"F", counter, length_bytes, header, htag, payload, crc)
        if not hmac.compare_digest(want, body[-TAG_BYTES:]):
            raise AuthError("HMAC tag does not match (wrong key, altered, replayed or "
                            "reordered frame)")
    (crc_v,) = CRC.unpack(crc)
    if zlib.crc32(header + payload) != crc_v:
        raise MalformedFrame("crc32 mismatch (corrupted frame)")
    return Frame(h.msg_type, h.request_id, h.seq, h.layer, h.tag, h.aux, h.dtype, h.shape,
                 payload)


def decode_frame(data: bytes, key: bytes | None = None,
                 max_frame: int = DEFAULT_MAX_FRAME, counter: int = 0) -> Frame:
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
    return decode_body(data[: LENGTH.size], body, key, counter)


class SlowFrame(WireError):
    """A frame's bytes did not all arrive within the read timeout (a slow or stalled sender)."""


def _recv_exact(sock: socket.socket, n: int, at_boundary: bool,
                deadline: float | None = None) -> bytes:
    chunks, got = [], 0
    while got < n:
        if deadline is not None:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise SlowFrame(f"frame incomplete after the read timeout ({got} of {n} bytes)")
            sock.settimeout(remaining)
        try:
            chunk = sock.recv(min(n - got, 1 << 20))
        except TimeoutError:
            if deadline is None:
                raise
            raise SlowFrame(f"frame incomplete after the read timeout ({got} of {n} bytes)") \
                from None
        if not chunk:
            if at_boundary and got == 0:
                raise PeerClosed("peer closed the connection")
            raise TruncatedFrame(f"stream ended after {got} of {n} bytes")
        chunks.append(chunk)
        got += len(chunk)
    return b"".join(chunks)


def read_frame(sock: socket.socket, key: bytes | None = None,
               max_frame: int = DEFAULT_MAX_FRAME, counter: int = 0,
               limits: dict | None = None, idle_timeout_s: float | None = None,
               read_timeout_s: float | None = None) -> tuple[Frame, int]:
    """Read one frame from a blocking socket; returns (frame, bytes read).

    The header is read and checked first (``check_header``: its tag when keyed, the
    per-type ``limits``), then the payload. With ``idle_timeout_s`` the wait for a frame's
    first bytes is bounded (``TimeoutError``); with ``read_timeout_s`` the rest of the frame
    must arrive within that time of its first bytes (``SlowFrame``). Raises ``PeerClosed`` on
    a clean end of stream before the frame, a ``WireError`` on a bad frame, and the socket's
    own ``OSError`` / ``TimeoutError``.
    """
    if idle_timeout_s is not None:
        sock.settimeout(idle_timeout_s)
    first = _recv_exact(sock, 1, at_boundary=True)
    deadline = None if read_timeout_s is None else time.monotonic() + read_timeout_s
    length_bytes = first + _recv_exact(sock, LENGTH.size - 1, False, deadline)
    (length,) = LENGTH.unpack(length_bytes)
    check_length(length, max_frame)
    header = _recv_exact(sock, HEADER.size, False, deadline)
    _, flags = peek_flags(header)
    htag = _recv_exact(sock, HTAG_BYTES, False, deadline) if flags & FLAG_HMAC else None
    check_header(length, length_bytes, header, htag, key, counter, limits)
    rest = _recv_exact(sock, length - HEADER.size - (len(htag) if htag else 0), False, deadline)
    body = header + (htag or b"") + rest
    return decode_body(length_bytes, body, key, counter, limits), LENGTH.size + length


# --------------------------------------------------------------------------------------------
# Sessions: handshake, session keys, per-direction counters


def hkdf(ikm: bytes, salt: bytes, info: bytes, length: int = 32) -> bytes:
    """HKDF-SHA256 (RFC 5869): extract ``PRK = HMAC(salt, ikm)``, expand
    ``T(i) = HMAC(PRK, T(i-1) + info + i)``."""
    prk = hmac.new(salt or bytes(TAG_BYTES), ikm, hashlib.sha256).digest()
    out, t, i = b"", b"", 1
    while len(out) < length:
        t = hmac.new(prk, t + info + bytes([i]), hashlib.sha256).digest()
        out += t
        i += 1
    return out[:length]


def handshake_keys(key: bytes) -> tuple[bytes, bytes]:
    """(edge -> cloud, cloud -> edge) keys of the HELLO / WELCOME frames."""
    return (hkdf(key, b"", b"splitwise/2 hello c2s"), hkdf(key, b"", b"splitwise/2 hello s2c"))


def session_keys(key: bytes, nonce_edge: bytes, nonce_cloud: bytes) -> tuple[bytes, bytes]:
    """(edge -> cloud, cloud -> edge) session keys bound to both nonces."""
    salt = nonce_edge + nonce_cloud
    return (hkdf(key, salt, b"splitwise/2 c2s"), hkdf(key, salt, b"splitwise/2 s2c"))


class Refusal(enum.IntEnum):
    """The ``tag`` of the unauthenticated ERROR a cloud sends instead of ``WELCOME``."""

    AUTH = 1  # wrong or missing key
    BUSY = 2  # at its connection limit: retry later
    PROTOCOL = 3  # not a HELLO, or an unsupported wire version


HANDSHAKE_MAX_FRAME = 4096
HANDSHAKE_LIMITS = {MsgType.HELLO: 512}


class Channel:
    """One connection's session: the key and frame counter of each direction. The owner
    serializes ``encode`` + write (the counter order is the wire order) and reads in order."""

    def __init__(self, send_key: bytes | None = None, recv_key: bytes | None = None,
                 send_ctr: int = 1, recv_ctr: int = 1):
        self.send_key, self.recv_key = send_key, recv_key
        self.send_ctr, self.recv_ctr = send_ctr, recv_ctr

    @property
    def keyed(self) -> bool:
        return self.send_key is not None

    def encode(self, frame: Frame) -> bytes:
        data = encode_frame(frame, self.send_key, self.send_ctr)
        self.send_ctr += 1
        return data

    def decode(self, length_bytes: bytes, body: bytes, limits: dict | None = None) -> Frame:
        frame = decode_body(length_bytes, body, self.recv_key, self.recv_ctr, limits)
        self.recv_ctr += 1
        return frame

    def check_header(self, length: int, length_bytes: bytes, header: bytes,
                     htag: bytes | None, limits: dict | None = None) -> Header:
        return check_header(length, length_bytes, header, htag, self.recv_key, self.recv_ctr,
                            limits)

    def read(self, sock: socket.socket, max_frame: int = DEFAULT_MAX_FRAME,
             limits: dict | None = None, idle_timeout_s: float | None = None,
             read_timeout_s: float | None = None) -> tuple[Frame, int]:
        frame, n = read_frame(sock, self.recv_key, max_frame, self.recv_ctr, limits,
                              idle_timeout_s, read_timeout_s)
        self.recv_ctr += 1
        return frame, n


def _nonce_frame(mtype: MsgType, data: bytes, aux: int = 0) -> Frame:
    return make_frame(mtype, 0, 0, aux=aux, array=np.frombuffer(data, np.uint8))


def refusal_frame(kind: Refusal, reason: str) -> bytes:
    """The unauthenticated ERROR a cloud sends instead of ``WELCOME`` (then it closes)."""
    return encode_frame(make_frame(MsgType.ERROR, 0, 0, tag=int(kind), text=reason))


def _read_raw(sock: socket.socket, max_frame: int, deadline: float) -> tuple[bytes, bytes]:
    length_bytes = _recv_exact(sock, LENGTH.size, True, deadline)
    (length,) = LENGTH.unpack(length_bytes)
    check_length(length, max_frame)
    return length_bytes, _recv_exact(sock, length, False, deadline)


def client_handshake(sock: socket.socket, key: bytes | None, timeout_s: float) -> Channel:
    """The edge's side: send HELLO, check WELCOME; the session's ``Channel``. Raises
    ``HandshakeRefused`` (the cloud said no, or its WELCOME fails authentication),
    ``WireError``, ``OSError``."""
    nonce = os.urandom(NONCE_BYTES)
    hs_up, hs_down = handshake_keys(key) if key else (None, None)
    sock.sendall(encode_frame(_nonce_frame(MsgType.HELLO, nonce, aux=1 if key else 0), hs_up, 0))
    deadline = time.monotonic() + timeout_s
    try:
        length_bytes, body = _read_raw(sock, HANDSHAKE_MAX_FRAME, deadline)
    except SlowFrame:
        raise TimeoutError(f"no WELCOME from the cloud within {timeout_s:.3g} s") from None
    except PeerClosed:
        raise ConnectionResetError("the cloud closed the connection during the handshake") \
            from None
    mtype, flags = peek_flags(body[: HEADER.size])
    if mtype == MsgType.ERROR and not flags & FLAG_HMAC:
        f = decode_body(length_bytes, body, None)
        kind = {int(Refusal.BUSY): "busy", int(Refusal.PROTOCOL): "protocol"}.get(f.tag, "auth")
        raise HandshakeRefused(f"the cloud refused the session: {f.text()}", kind)
    if key is None and flags & FLAG_HMAC:
        raise HandshakeRefused("the cloud authenticates its frames and the edge has no key "
                               "(give both the same --key-file)", "auth")
    try:
        f = decode_body(length_bytes, body, hs_down, 0)
    except AuthError as err:
        raise HandshakeRefused(f"the cloud's WELCOME fails authentication ({err.reason}): the "
                               "cloud's key differs from the edge's", "auth") from None
    got = f.payload
    if f.msg_type != MsgType.WELCOME or len(got) != 2 * NONCE_BYTES:
        raise MalformedFrame(f"expected WELCOME with two nonces, got {f.msg_type.name}")
    ns, echo = got[:NONCE_BYTES], got[NONCE_BYTES:]
    if not hmac.compare_digest(echo, nonce):
        raise AuthError("WELCOME echoes another nonce (a replayed or misdirected WELCOME)")
    if key is None:
        return Channel()
    up, down = session_keys(key, nonce, ns)
    return Channel(up, down)


def server_handshake(sock: socket.socket, key: bytes | None, timeout_s: float) -> Channel:
    """The cloud's side: read HELLO (tagged with the handshake key when ``key``), answer
    WELCOME with a fresh nonce; the session's ``Channel``. A refused HELLO gets an
    unauthenticated ERROR (``Refusal``) and raises ``HandshakeRefused``."""
    deadline = time.monotonic() + timeout_s
    length_bytes, body = _read_raw(sock, HANDSHAKE_MAX_FRAME, deadline)
    if len(body) < HEADER.size:
        raise MalformedFrame(f"frame of {len(body)} bytes is shorter than a header")
    mtype, flags = peek_flags(body[: HEADER.size])

    def refuse(kind: Refusal, reason: str):
        with contextlib.suppress(OSError):
            sock.sendall(refusal_frame(kind, reason))
        raise HandshakeRefused(reason, kind.name.lower())

    if mtype != MsgType.HELLO:
        try:
            decode_body(length_bytes, body, None)  # a version or framing error says so
        except WireError as err:
            refuse(Refusal.PROTOCOL, f"expected HELLO: {err.reason}")
        refuse(Refusal.PROTOCOL, f"expected HELLO, got message type {mtype}")
    hs_up, hs_down = handshake_keys(key) if key else (None, None)
    if key is not None and not flags & FLAG_HMAC:
        refuse(Refusal.AUTH, "this cloud requires a shared key and the edge sent none "
                             "(run-edge --key-file)")
    if key is None and flags & FLAG_HMAC:
        refuse(Refusal.AUTH, "this cloud has no shared key and the edge authenticates "
                             "(serve-cloud --key-file)")
    try:
        f = decode_body(length_bytes, body, hs_up, 0, HANDSHAKE_LIMITS)
    except AuthError:
        refuse(Refusal.AUTH, "authentication failed: the edge's key differs from the cloud's")
    if f.dtype != DType.U8 or len(f.payload) != NONCE_BYTES:
        refuse(Refusal.PROTOCOL, f"HELLO must carry a {NONCE_BYTES}-byte nonce")
    nc, ns = f.payload, os.urandom(NONCE_BYTES)
    sock.sendall(encode_frame(_nonce_frame(MsgType.WELCOME, ns + nc), hs_down, 0))
    if key is None:
        return Channel()
    up, down = session_keys(key, nc, ns)
    return Channel(down, up)


def check_order(expected: int, got: int, what: str = "seq") -> None:
    """Raise ``OutOfOrderFrame`` unless ``got == expected``."""
    if got != expected:
        raise OutOfOrderFrame(f"{what} {got} out of order: expected {expected}")


def read_key_file(path) -> bytes:
    """The shared key from a file: its bytes with surrounding whitespace stripped. Refused
    (``ValueError`` naming the file) when the file is missing, a directory, empty, shorter
    than 16 bytes, or readable by anyone but its owner (mode must be 0600 or stricter)."""
    import stat
    from pathlib import Path

    p = Path(path)
    try:
        st = p.stat()
    except FileNotFoundError:
        raise ValueError(f"key file {p}: no such file") from None
    except OSError as err:
        raise ValueError(f"key file {p}: cannot read it ({err.strerror})") from None
    if stat.S_ISDIR(st.st_mode):
        raise ValueError(f"key file {p}: is a directory, expected a file of 16+ random bytes")
    if st.st_mode & 0o077:
        raise ValueError(f"key file {p}: mode {stat.S_IMODE(st.st_mode):04o} lets others read "
                         f"it; a shared key must be private (chmod 600 {p})")
    try:
        key = p.read_bytes().strip()
    except OSError as err:
        raise ValueError(f"key file {p}: cannot read it ({err.strerror})") from None
    if not key:
        raise ValueError(f"key file {p}: is empty; a shared key needs at least 16 bytes")
    if len(key) < 16:
        raise ValueError(f"key file {p}: a shared key needs at least 16 bytes, found "
                         f"{len(key)}")
    return key
