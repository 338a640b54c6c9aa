"""Width and height of an image file read from its header, and proof that the file is whole.

Decoding is where a hostile or broken file costs memory (a 1 MB PNG can declare 40000x40000
pixels) and where the codec libraries print their own lines on stderr (libpng, libtiff). So the
engine reads the header first, refuses what is over its pixel budget, and checks the file's
structure (PNG chunks and their CRCs, a JPEG's end marker, TIFF strips inside the file, PNM and
BMP pixel data long enough) before OpenCV sees a byte. Only the formats the engine documents
are taken: JPEG, PNG, TIFF (classic and BigTIFF), PGM/PPM/PBM, BMP.
"""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass


class HeaderError(ValueError):
    """The file is not one of the supported formats, or is truncated or corrupted.

    ``size``: (width, height) when the header declared one before the problem was found, so
    that a caller can name an oversized image as that rather than as a broken one.
    """

    size: tuple[int, int] | None = None


@dataclass(frozen=True)
class ImageHeader:
    format: str  # "PNG", "JPEG", "TIFF", "PNM", "BMP"
    width: int
    height: int

    @property
    def pixels(self) -> int:
        return self.width * self.height


SUPPORTED = "JPEG, PNG, TIFF, PGM/PPM, BMP"
UNKNOWN = f"not an image OpenCV can decode ({SUPPORTED} are supported)"


def read_header(data: bytes) -> ImageHeader:
    """The header of ``data`` (a whole file); raises :class:`HeaderError` saying what is wrong."""
    for signature, reader in _READERS:
        if data.startswith(signature):
            found: dict[str, tuple[int, int]] = {}
            try:
                header = reader(data, found)
            except struct.error:  # a field cut short: the bounds checks name most cases
                error = HeaderError("corrupted header")
                error.size = found.get("size")
                raise error from None
            except HeaderError as error:
                error.size = found.get("size")
                raise
            if header.width <= 0 or header.height <= 0:
                raise HeaderError(f"{header.format} header declares {header.width}x"
                                  f"{header.height} px")
            return header
    raise HeaderError(UNKNOWN)


def _need(data: bytes, end: int, what: str) -> None:
    if end > len(data):
        raise HeaderError(f"truncated ({what} runs past the end of the file)")


# --- PNG ------------------------------------------------------------------------------------

_PNG = b"\x89PNG\r\n\x1a\n"


def _png(data: bytes, found: dict) -> ImageHeader:
    position, width, height, ended = len(_PNG), 0, 0, False
    while not ended:
        _need(data, position + 8, "a chunk header")
        length, kind = struct.unpack(">I4s", data[position:position + 8])
        if length > 0x7FFFFFFF:
            raise HeaderError(f"corrupted (chunk {kind!r} declares {length} bytes)")
        end = position + 8 + length + 4
        _need(data, end, f"chunk {kind.decode('latin-1')}")
        body = data[position + 8:position + 8 + length]
        (stored,) = struct.unpack(">I", data[end - 4:end])
        # A CRC error is what libpng would otherwise announce on stderr, mid-decode.
        if zlib.crc32(kind + body) != stored:
            raise HeaderError(f"corrupted (CRC error in chunk {kind.decode('latin-1')})")
        if position == len(_PNG):
            if kind != b"IHDR" or length != 13:
                raise HeaderError("corrupted (the first chunk is not IHDR)")
            width, height = struct.unpack(">II", body[:8])
            found["size"] = (width, height)
        ended = kind == b"IEND"
        position = end
    return ImageHeader("PNG", width, height)


# --- JPEG -----------------------------------------------------------------------------------

#: Start-of-frame markers (baseline, progressive, lossless, arithmetic); not DHT, JPG, DAC.
_SOF = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}
_STANDALONE = {0x01, *range(0xD0, 0xD8)}  # TEM, RST0-7: markers without a length


def _jpeg(data: bytes, found: dict) -> ImageHeader:
    position, size = 2, None
    while True:
        _need(data, position + 2, "a marker")
        if data[position] != 0xFF:
            raise HeaderError("corrupted (expected a JPEG marker)")
        marker = data[position + 1]
        if marker == 0xFF:  # fill byte before a marker
            position += 1
            continue
        if marker in _STANDALONE:
            position += 2
            continue
        _need(data, position + 4, "a segment length")
        (length,) = struct.unpack(">H", data[position + 2:position + 4])
        _need(data, position + 2 + length, f"segment 0x{marker:02X}")
        if marker in _SOF:
            if length < 8:
                raise HeaderError("corrupted (frame header too short)")
            height, width = struct.unpack(">HH", data[position + 5:position + 9])
            size = found["size"] = (width, height)
        if marker == 0xDA:  # start of scan: entropy-coded data follows
            break
        if marker == 0xD9:
            raise HeaderError("corrupted (end of image before any scan)")
        position += 2 + length
    if size is None:
        raise HeaderError("corrupted (no frame header before the first scan)")
    # Entropy-coded data never holds FF D9 (a data FF is stuffed as FF 00), so the first end
    # marker after the scan starts proves the file is whole; a thumbnail's marker comes before.
    if data.find(b"\xff\xd9", position) < 0:
        raise HeaderError("truncated (no end-of-image marker)")
    return ImageHeader("JPEG", *size)


# --- TIFF -----------------------------------------------------------------------------------

_TIFF_TYPES = {1: ("B", 1), 3: ("H", 2), 4: ("I", 4), 16: ("Q", 8)}  # BYTE, SHORT, LONG, LONG8
_WIDTH, _LENGTH = 256, 257
_STRIP_OFFSETS, _STRIP_BYTES, _TILE_OFFSETS, _TILE_BYTES = 273, 279, 324, 325


def _tiff(data: bytes, found: dict) -> ImageHeader:
    order = "<" if data[:2] == b"II" else ">"
    _need(data, 16, "the TIFF header")
    (version,) = struct.unpack(order + "H", data[2:4])
    big = version == 43
    if big:
        (first,) = struct.unpack(order + "Q", data[8:16])
        count_format, entry_size, inline = "Q", 20, 8
    else:
        (first,) = struct.unpack(order + "I", data[4:8])
        count_format, entry_size, inline = "H", 12, 4
    count_size = struct.calcsize(count_format)
    _need(data, first + count_size, "the first image directory")
    (entries,) = struct.unpack(order + count_format, data[first:first + count_size])
    _need(data, first + count_size + entries * entry_size, "the first image directory")
    tags: dict[int, tuple[int, ...]] = {}
    for index in range(entries):
        start = first + count_size + index * entry_size
        tag, kind = struct.unpack(order + "HH", data[start:start + 4])
        if kind not in _TIFF_TYPES:
            continue
        (number,) = struct.unpack(order + ("Q" if big else "I"),
                                  data[start + 4:start + 4 + inline])
        letter, width = _TIFF_TYPES[kind]
        if tag not in (_WIDTH, _LENGTH, _STRIP_OFFSETS, _STRIP_BYTES, _TILE_OFFSETS, _TILE_BYTES):
            continue
        if number * width <= inline:
            raw = data[start + 4 + inline:start + 4 + 2 * inline][:number * width]
        else:
            (offset,) = struct.unpack(order + ("Q" if big else "I"),
                                      data[start + 4 + inline:start + 4 + 2 * inline])
            _need(data, offset + number * width, f"TIFF tag {tag}")
            raw = data[offset:offset + number * width]
        tags[tag] = struct.unpack(f"{order}{number}{letter}", raw)
    if _WIDTH not in tags or _LENGTH not in tags:
        raise HeaderError("corrupted (no image width or length in the first directory)")
    found["size"] = (tags[_WIDTH][0], tags[_LENGTH][0])
    for offsets, counts in ((_STRIP_OFFSETS, _STRIP_BYTES), (_TILE_OFFSETS, _TILE_BYTES)):
        for offset, count in zip(tags.get(offsets, ()), tags.get(counts, ())):
            _need(data, offset + count, "the pixel data")
    return ImageHeader("TIFF", tags[_WIDTH][0], tags[_LENGTH][0])


# --- PNM (PBM, PGM, PPM) --------------------------------------------------------------------

def _pnm(data: bytes, found: dict) -> ImageHeader:
    kind = data[1:2]
    if kind not in b"123456" or not kind:
        raise HeaderError(UNKNOWN)
    fields = 2 if kind in b"14" else 3
    values, position = [], 2
    while len(values) < fields:
        _need(data, position + 1, "the PNM header")
        byte = data[position:position + 1]
        if byte == b"#":
            newline = data.find(b"\n", position)
            position = len(data) if newline < 0 else newline + 1
        elif byte.isspace():
            position += 1
        elif byte.isdigit():
            end = position
            while end < len(data) and data[end:end + 1].isdigit():
                end += 1
            values.append(int(data[position:end]))
            position = end
        else:
            raise HeaderError("corrupted PNM header")
    width, height = found["size"] = tuple(values[:2])
    if kind in b"456":
        maximum = values[2] if fields == 3 else 1
        channels = 3 if kind == b"6" else 1
        depth = 2 if maximum > 255 else 1
        row = (width + 7) // 8 if kind == b"4" else width * channels * depth
        # One whitespace byte separates the header from the binary pixels.
        _need(data, position + 1 + row * height, "the pixel data")
    return ImageHeader("PNM", width, height)


# --- BMP ------------------------------------------------------------------------------------

def _bmp(data: bytes, found: dict) -> ImageHeader:
    _need(data, 26, "the BMP header")
    (pixels_at, info_size) = struct.unpack("<II", data[10:18])
    if info_size == 12:  # OS/2 BITMAPCOREHEADER
        width, height = struct.unpack("<HH", data[18:22])
        bits, compression = struct.unpack("<H", data[24:26])[0], 0
    else:
        _need(data, 34, "the BMP header")
        width, height = struct.unpack("<ii", data[18:26])
        bits, compression = struct.unpack("<HI", data[28:34])
    height = abs(height)  # negative: rows stored top-down
    found["size"] = (width, height)
    if compression == 0:  # uncompressed rows, each padded to 4 bytes
        row = (width * bits + 31) // 32 * 4
        _need(data, pixels_at + row * height, "the pixel data")
    return ImageHeader("BMP", width, height)


_READERS = (
    (_PNG, _png),
    (b"\xff\xd8", _jpeg),
    (b"II*\x00", _tiff), (b"MM\x00*", _tiff), (b"II+\x00", _tiff), (b"MM\x00+", _tiff),
    (b"P", _pnm),
    (b"BM", _bmp),
)
