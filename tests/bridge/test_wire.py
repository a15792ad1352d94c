"""Wire format: round trips (hypothesis), hand-worked packing, and every rejection path.

No torch here: the wire layer is numpy only.
"""

import socket
import struct

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from bridge import wire
from bridge.wire import (
    AuthError,
    DType,
    Frame,
    MalformedFrame,
    MsgType,
    OutOfOrderFrame,
    OversizedFrame,
    PeerClosed,
    TruncatedFrame,
    decode_frame,
    encode_frame,
    make_frame,
    read_frame,
)

KEY = b"k" * 32
shapes = hnp.array_shapes(min_dims=0, max_dims=4, min_side=0, max_side=5)
raw_dtypes = st.sampled_from([np.float32, np.float16, np.int8, np.uint8, np.int32, np.int64])
headers = st.fixed_dictionaries({
    "msg_type": st.sampled_from(list(MsgType)),
    "request_id": st.integers(0, 2**64 - 1),
    "seq": st.integers(0, 2**32 - 1),
    "layer": st.integers(-1, 2**15 - 1),
    "tag": st.integers(0, 255),
    "aux": st.integers(0, 2**32 - 1),
})


@settings(max_examples=150, deadline=None)
@given(headers, raw_dtypes.flatmap(lambda d: hnp.arrays(d, shapes)), st.booleans())
def test_raw_round_trip(hdr, arr, keyed):
    key = KEY if keyed else None
    f = make_frame(**hdr, array=arr)
    data = encode_frame(f, key)
    g = decode_frame(data, key)
    assert g == f
    out = g.array()
    assert out.dtype == arr.dtype and out.shape == arr.shape
    assert out.tobytes() == np.ascontiguousarray(arr).tobytes()  # bit-exact, NaNs included


@settings(max_examples=100, deadline=None)
@given(hnp.arrays(np.int8, shapes, elements=st.integers(-8, 7)))
def test_int4_pack_round_trip(q):
    buf = wire.pack_int4(q)
    assert len(buf) == (q.size + 1) // 2
    np.testing.assert_array_equal(wire.unpack_int4(buf, q.size).reshape(q.shape), q)
    f = Frame(MsgType.STEP, 1, 2, dtype=DType.I4, shape=q.shape, payload=buf)
    np.testing.assert_array_equal(decode_frame(encode_frame(f)).array(), q)


def test_int4_packing_hand_worked():
    # -1 -> nibble 0xF (low), 7 -> 0x7 (high): byte 0x7F; 3 alone -> 0x03 with a zero pad.
    assert wire.pack_int4(np.array([-1, 7, 3])) == bytes([0x7F, 0x03])
    np.testing.assert_array_equal(wire.unpack_int4(bytes([0x7F, 0x03]), 3), [-1, 7, 3])
    with pytest.raises(ValueError):
        wire.pack_int4(np.array([8]))


floats = hnp.arrays(np.float32, hnp.array_shapes(min_dims=1, max_dims=4, min_side=1,
                                                 max_side=6),
                    elements=st.floats(-1e4, 1e4, width=32))


@settings(max_examples=150, deadline=None)
@given(floats, st.sampled_from(["fp32", "fp16", "int8", "int4"]), st.booleans())
def test_activation_round_trip_matches_fake_quant(x, precision, keyed):
    key = KEY if keyed else None
    f = make_frame(MsgType.STEP, 7, 3, layer=2, tag=1, array=x, precision=precision)
    out = decode_frame(encode_frame(f, key), key).activation()
    assert out.dtype == np.float32 and out.shape == x.shape
    if precision == "fp32":
        np.testing.assert_array_equal(out, x)
    elif precision == "fp16":
        np.testing.assert_array_equal(out, x.astype(np.float16).astype(np.float32))
    else:
        bits = 8 if precision == "int8" else 4
        qmax = 2 ** (bits - 1) - 1
        amax = np.abs(x).max(-1, keepdims=True)
        # Absmax quantization: error at most half a level, scale = amax / qmax per row.
        assert np.all(np.abs(out - x) <= amax / qmax / 2 * (1 + 1e-5) + 1e-30)
        np.testing.assert_array_equal(out, wire.fake_quantize(x, precision))
    # Bytes on the wire: 1 or 0.5 bytes an element plus a float32 scale a row.
    rows = x.size // x.shape[-1]
    size = {"fp32": 4 * x.size, "fp16": 2 * x.size, "int8": x.size + 4 * rows,
            "int4": (x.size + 1) // 2 + 4 * rows}[precision]
    assert len(f.payload) == size


def test_quantization_hand_worked():
    # Row [1, -2, 0.5]: amax 2, int8 scale 2/127; 0.5/(2/127) = 31.75 -> 32.
    x = np.array([[1.0, -2.0, 0.5], [0.0, 0.0, 0.0]], np.float32)
    q, s = wire.absmax_quantize(x, 8)
    np.testing.assert_array_equal(q, [[64, -127, 32], [0, 0, 0]])
    np.testing.assert_allclose(s, [2 / 127, 0.0], rtol=1e-7)
    # int4: row [3, -7, 1.5, 2.5] has scale 7/7 = 1; 1.5 -> 2 and 2.5 -> 2 (half to even).
    q4, s4 = wire.absmax_quantize(np.array([3.0, -7.0, 1.5, 2.5], np.float32), 4)
    np.testing.assert_array_equal(q4, [3, -7, 2, 2])
    assert s4[0] == 1.0
    np.testing.assert_array_equal(wire.fake_quantize(x, "int8")[1], 0.0)


def test_text_frame():
    f = make_frame(MsgType.ERROR, 1, 0, tag=3, text="state lost: übel")
    assert decode_frame(encode_frame(f)).text() == "state lost: übel"


def _frame_bytes(key=None):
    x = np.arange(12, dtype=np.float32).reshape(3, 4)
    return encode_frame(make_frame(MsgType.STEP, 5, 1, layer=0, array=x, precision="fp32"), key)


@pytest.mark.parametrize("cut", [0, 2, 4, 20, -1])
def test_truncated_rejected(cut):
    data = _frame_bytes()
    with pytest.raises(TruncatedFrame):
        decode_frame(data[: len(data) + cut if cut < 0 else cut])


@settings(max_examples=200, deadline=None)
@given(st.data())
def test_any_corrupted_byte_rejected(data):
    """Flip any byte of a frame: the receiver rejects it with a WireError (length, header
    checks, crc or HMAC), never returns a different frame silently."""
    keyed = data.draw(st.booleans())
    key = KEY if keyed else None
    buf = bytearray(_frame_bytes(key))
    i = data.draw(st.integers(0, len(buf) - 1))
    buf[i] ^= data.draw(st.integers(1, 255))
    with pytest.raises(wire.WireError):
        decode_frame(bytes(buf), key)


def test_oversized_rejected_before_body():
    data = _frame_bytes()
    with pytest.raises(OversizedFrame, match="exceeds the maximum"):
        decode_frame(data, max_frame=40)
    # Only a length prefix: still rejected on the announced size alone.
    with pytest.raises(OversizedFrame):
        decode_frame(struct.pack("!I", 2**31), max_frame=1024)


def test_wrong_key_missing_and_unexpected_tag():
    with pytest.raises(AuthError, match="does not match"):
        decode_frame(_frame_bytes(KEY), b"other-key")
    with pytest.raises(AuthError, match="not authenticated"):
        decode_frame(_frame_bytes(None), KEY)
    with pytest.raises(AuthError, match="no key"):
        decode_frame(_frame_bytes(KEY), None)


def test_malformed_fields():
    good = _frame_bytes()

    def patched(offset, value):
        buf = bytearray(good)
        buf[offset] = value
        body = bytes(buf[4:-4])  # re-seal the crc so the field check itself fires
        return bytes(buf[:4]) + body + struct.pack("!I", __import__("zlib").crc32(body))

    with pytest.raises(MalformedFrame, match="magic"):
        decode_frame(patched(4, ord("X")))
    with pytest.raises(MalformedFrame, match="version"):
        decode_frame(patched(8, 9))
    with pytest.raises(MalformedFrame, match="unknown code"):
        decode_frame(patched(9, 99))
    with pytest.raises(MalformedFrame, match="unknown code"):
        decode_frame(patched(11, 99))
    with pytest.raises(MalformedFrame, match="shape"):
        decode_frame(patched(31, 7))  # ndim 7 > MAX_NDIM
    with pytest.raises(MalformedFrame, match="trailing"):
        decode_frame(good + b"\0")
    with pytest.raises(MalformedFrame, match="shorter than header"):
        decode_frame(struct.pack("!I", 3) + b"abc")


def test_order_check():
    wire.check_order(3, 3)
    with pytest.raises(OutOfOrderFrame, match="expected 3"):
        wire.check_order(3, 5)


def test_read_frame_over_socket():
    a, b = socket.socketpair()
    try:
        f = make_frame(MsgType.RESULT, 9, 4, layer=1, array=np.ones((2, 3), np.float32),
                       precision="int8")
        a.sendall(encode_frame(f, KEY) * 2)
        assert read_frame(b, KEY)[0] == f
        got, n = read_frame(b, KEY)
        assert got == f and n == len(encode_frame(f, KEY))
        a.sendall(encode_frame(f, KEY)[:10])
        a.close()
        with pytest.raises(TruncatedFrame):
            read_frame(b, KEY)
    finally:
        b.close()
    c, d = socket.socketpair()
    c.close()
    with pytest.raises(PeerClosed):
        read_frame(d)
    d.close()


def test_encode_rejects_bad_input():
    with pytest.raises(ValueError):
        make_frame(MsgType.STEP, 1, 1, array=np.zeros((1,) * 5, np.float32))
    with pytest.raises(ValueError):
        make_frame(MsgType.STEP, 1, 1, array=np.zeros(3, np.complex64))
    with pytest.raises(ValueError):
        make_frame(MsgType.STEP, 1, 1, array=np.zeros(3, np.float32), precision="int3")
