"""Hostile inputs for the reader, built at test time (no binary blobs are committed).

Each builder writes one file into a folder and returns its path: .npy files whose header lies
(about its shape, its size, its dtype, its own format), truncations, .npz files with a broken
member (a flipped byte in the compressed stream, the encryption bit, an unknown compression
method), special files (FIFO, socket, device, directory, symlink loop), Fortran-ordered arrays
and labels of dtypes that are not numbers.
"""

from __future__ import annotations

import io
import os
import socket
import struct
import zipfile
import zlib
from collections.abc import Callable
from pathlib import Path

import numpy as np

MAGIC = b"\x93NUMPY"
ALIGN = 64  # numpy pads the magic, length and header to a multiple of 64 bytes


def npy_bytes(header: str, data: bytes = b"", version: tuple[int, int] = (1, 0)) -> bytes:
    """A .npy file with the header text ``header`` (which may say anything), then ``data``."""
    length_format = "<H" if version == (1, 0) else "<I"
    start = len(MAGIC) + 2 + struct.calcsize(length_format)
    text = header.encode("latin1" if version < (3, 0) else "utf8")
    text += b" " * (-(start + len(text) + 1) % ALIGN) + b"\n"
    return MAGIC + bytes(version) + struct.pack(length_format, len(text)) + text + data


def header(shape: object, descr: object = "<f4", fortran: object = False) -> str:
    """The header text numpy writes, with any values."""
    return f"{{'descr': {descr!r}, 'fortran_order': {fortran!r}, 'shape': {shape!r}, }}"


F32 = np.arange(1, 41, dtype=np.float32).tobytes()  # 40 float32: 10 rows of 4 classes
GOOD = npy_bytes(header((10, 4)), F32)  # what np.save writes for them

# name -> bytes of a .npy file: every one of them must be refused (exit 2) by check and compare
LYING_NPY: dict[str, bytes] = {
    "negative dimension": npy_bytes(header((-1, 10)), F32),
    "petabytes claimed": npy_bytes(header((10**15, 1000)), F32),
    "one row of 10^12 classes": npy_bytes(header((1, 10**12)), F32),
    "product wraps to zero in int64": npy_bytes(header((2**62, 4)), F32),
    "dimension past int64": npy_bytes(header((2**70, 0)), b""),
    "shape smaller than the data": npy_bytes(header((2, 4)), F32),
    "shape larger than the data": npy_bytes(header((11, 4)), F32),
    "bool dimension": npy_bytes(header((True, 40)), F32),
    "float dimension": npy_bytes(header((10.0, 4)), F32),
    "shape not a tuple": npy_bytes(header([10, 4]), F32),
    "65 dimensions": npy_bytes(header((1,) * 65), F32[:4]),
    "fortran_order not a bool": npy_bytes(header((10, 4), fortran="yes"), F32),
    "unknown dtype": npy_bytes(header((10, 4), descr="<q9"), F32),
    "structured dtype": npy_bytes(header((10, 2), descr=[("a", "<f4"), ("b", "<f4")]), F32),
    "subarray dtype": npy_bytes(header((10, 2), descr="(2,)<f4"), F32),
    "complex dtype": npy_bytes(header((5, 4), descr="<c8"), F32),
    "zero-size dtype": npy_bytes(header((10, 4), descr="|V0"), b""),
    "string dtype": npy_bytes(header((10, 4), descr="|S4"), F32),
    "object dtype": npy_bytes(header((10, 4), descr="|O"), F32[:80]),
    "header is code": npy_bytes("__import__('os').system('false')", F32),
    "header without shape": npy_bytes("{'descr': '<f4', 'fortran_order': False}", F32),
    "header not a dict": npy_bytes("(1, 2, 3)", F32),
    "deeply nested header": npy_bytes("(" * 300 + ")" * 300, F32),
    "version 3 header not utf-8": MAGIC + b"\x03\x00" + struct.pack("<I", 4) + b"\xff{}\n" + F32,
    "bad magic": b"\x93NUMPX" + GOOD[6:],
    "bad version": GOOD[:6] + b"\x09\x00" + GOOD[8:],
    "header length past end of file": MAGIC + b"\x01\x00" + struct.pack("<H", 5000) + b"{",
    "header length of 4 GiB": MAGIC + b"\x02\x00" + struct.pack("<I", 2**32 - 1) + b"{",
    "empty file": b"",
}


def truncations(data: bytes) -> list[int]:
    """Where to cut ``data`` (a .npy file): inside the magic, the length, the header, at the
    first data byte, inside the data, one byte short."""
    (length,) = struct.unpack("<H", data[8:10])
    end = 10 + length
    return sorted(
        {
            0,
            1,
            5,
            7,
            8,
            9,
            10,
            11,
            end // 2,
            end - 1,
            end,
            end + 1,
            end + 7,
            (end + len(data)) // 2,
            len(data) - 1,
        }
    )


def _members(data: bytes) -> dict[str, tuple[int, int]]:
    """Per member of a zip: where its local header and its central directory entry start."""
    local = {}
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        for info in archive.infolist():
            local[info.filename] = info.header_offset
    central, at = {}, data.find(b"PK\x01\x02")
    while at >= 0:
        (name_length,) = struct.unpack("<H", data[at + 28 : at + 30])
        central[data[at + 46 : at + 46 + name_length].decode()] = at
        at = data.find(b"PK\x01\x02", at + 46)
    return {name: (offset, central[name]) for name, offset in local.items()}


def patched(data: bytes, member: str, fields: list[tuple[int, int, str, int]]) -> bytes:
    """The zip ``data`` with fields of ``member`` set, each given as (offset in its local
    header, offset in its central directory entry, struct format, value)."""
    out = bytearray(data)
    at_local, at_central = _members(data)[member]
    for local, central, form, value in fields:
        struct.pack_into(form, out, at_local + local, value)
        struct.pack_into(form, out, at_central + central, value)
    return bytes(out)


def encrypted(data: bytes, member: str) -> bytes:
    """The zip ``data`` with ``member``'s "encrypted" flag (bit 0 of its flags) set."""
    return patched(data, member, [(6, 8, "<H", 0x1)])


def compressed_with(data: bytes, member: str, method: int) -> bytes:
    """The zip ``data`` with ``member``'s compression method id set to ``method``."""
    return patched(data, member, [(8, 10, "<H", method)])


def deflate_broken_midway(npy: bytes, fraction: float) -> bytes:
    """A zip of ``npy`` as logits.npy, deflated, whose stream is valid for the first
    ``fraction`` of the bytes and then holds a block of the invalid type 3 (zlib's "invalid
    block type"), so that the error turns up only once that much has been read."""
    compressor = zlib.compressobj(wbits=-15)  # raw deflate, as in zip files
    head = compressor.compress(npy[: int(len(npy) * fraction)])
    stream = head + compressor.flush(zlib.Z_FULL_FLUSH) + b"\x07" + bytes(64)
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:  # stored: the sizes are the stream's ...
        archive.writestr("logits.npy", stream)
    # ... then declared deflated, with the CRC and size of what it decompresses to.
    return patched(
        buffer.getvalue(),
        "logits.npy",
        [(8, 10, "<H", zipfile.ZIP_DEFLATED), (14, 16, "<I", zlib.crc32(npy)),
         (22, 24, "<I", len(npy))],
    )  # fmt: skip


def flipped(data: bytes, member: str, fraction: float, mask: int = 0xFF) -> bytes:
    """The zip ``data`` with one byte of ``member``'s stored (compressed) bytes xor-ed with
    ``mask``, ``fraction`` of the way into them."""
    at_local, _ = _members(data)[member]
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        size = archive.getinfo(member).compress_size
    name_length, extra_length = struct.unpack("<HH", data[at_local + 26 : at_local + 30])
    at = at_local + 30 + name_length + extra_length + min(int(fraction * size), size - 1)
    out = bytearray(data)
    out[at] ^= mask
    return bytes(out)


def npz_bytes(folder: Path, compressed: bool, **arrays: np.ndarray) -> bytes:
    """The bytes np.savez (or np.savez_compressed) writes for ``arrays``."""
    path = folder / "scratch.npz"
    (np.savez_compressed if compressed else np.savez)(path, **arrays)
    data = path.read_bytes()
    path.unlink()
    return data


def special_files(folder: Path) -> list[tuple[str, Path]]:
    """Paths that are not regular files, each with the words the error must use for it."""
    os.mkfifo(folder / "fifo.npy")
    (folder / "dir.npy").mkdir()
    (folder / "loop.npy").symlink_to(folder / "loop.npy")
    server = socket.socket(socket.AF_UNIX)
    server.bind(str(folder / "sock.npy"))
    server.close()  # the socket file stays
    return [
        ("a FIFO", folder / "fifo.npy"),
        ("a directory", folder / "dir.npy"),
        ("a symlink loop", folder / "loop.npy"),
        ("a socket", folder / "sock.npy"),
        ("a character device", Path("/dev/null")),
        ("a character device", Path("/dev/zero")),  # a source that never ends
    ]


# name -> labels array whose dtype is not a label's (for 10 rows of 4 classes)
BAD_LABEL_DTYPES: dict[str, Callable[[], np.ndarray]] = {
    "complex": lambda: np.zeros(10, np.complex64),
    "structured": lambda: np.zeros(10, [("a", "<i4"), ("b", "<i4")]),
    "string": lambda: np.array(["1"] * 10),
    "bytes of size 0": lambda: np.zeros(10, "S0"),
    "void of size 0": lambda: np.zeros(10, "V0"),
    "datetime": lambda: np.zeros(10, "datetime64[s]"),
}
