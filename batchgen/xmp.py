"""The AI-generated label (`--metadata sidecar|png`): an XMP packet with IPTC's digital source type
`trainedAlgorithmicMedia`, the model, the prompt, the date and the tool — as `<image file name>.xmp`, and with
`png` inside the image without re-encoding it:

- PNG: one iTXt chunk `XML:com.adobe.xmp` before the first IDAT (unless the file has one already);
- JPEG: an APP1 segment after SOI and the APP0/APP1 segments that lead the file, when the packet fits
  MAX_JPEG_PACKET bytes (the prompt is cut until it does; the sidecar keeps it whole);
- WebP: an `XMP ` chunk at the end, with a VP8X header whose XMP flag is set (made from the VP8/VP8L header
  for a simple file).

The packet is built with xml.etree: a prompt is text in an element, escaped by the library, never spliced into
markup, and characters XML 1.0 cannot hold become U+FFFD. A file carrying C2PA data is never handed here
(provenance.py checks), since any change would break its signature.
"""

from __future__ import annotations

import re
import struct
import zlib
from collections.abc import Iterator
from xml.etree import ElementTree as ET

from . import __version__

DIGITAL_SOURCE_TYPE = "http://cv.iptc.org/newscodes/digitalsourcetype/trainedAlgorithmicMedia"
NS = {
    "x": "adobe:ns:meta/",
    "rdf": "http://www.w3.org/1999/02/22-rdf-syntax-ns#",
    "Iptc4xmpExt": "http://iptc.org/std/Iptc4xmpExt/2008-02-29/",
    "xmp": "http://ns.adobe.com/xap/1.0/",
    "dc": "http://purl.org/dc/elements/1.1/",
}
XML_NS = "http://www.w3.org/XML/1998/namespace"
PNG_KEYWORD = b"XML:com.adobe.xmp"
JPEG_XMP_ID = b"http://ns.adobe.com/xap/1.0/\x00"
MAX_JPEG_PACKET = 65_000  # an APP1 segment holds 65,533 bytes: the namespace id, then the packet
PACKET_ID = "W5M0MpCehiHzreSzNTczkc9d"  # XMP's fixed packet id
_NOT_XML = "[^\t\n\r\x20-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]"  # compiled when first used (~3.5 ms)

for _prefix, _uri in NS.items():
    ET.register_namespace(_prefix, _uri)


def _q(prefix: str, name: str) -> str:
    return f"{{{NS[prefix]}}}{name}"


def _clean(text: str) -> str:
    """Text an XML 1.0 document can hold: control characters and the like become U+FFFD."""
    return re.sub(_NOT_XML, "\ufffd", text)


def packet(*, prompt: str, model: str, created: str, tool: str | None = None) -> bytes:
    """The XMP packet (UTF-8) labelling one image as made by a trained algorithm from `prompt` with `model`.

    `created` is an ISO 8601 date-time (the service's completion time, else the download's)."""
    root = ET.Element(_q("x", "xmpmeta"))
    rdf = ET.SubElement(root, _q("rdf", "RDF"))
    desc = ET.SubElement(rdf, _q("rdf", "Description"), {_q("rdf", "about"): ""})
    ET.SubElement(desc, _q("Iptc4xmpExt", "DigitalSourceType")).text = DIGITAL_SOURCE_TYPE
    ET.SubElement(desc, _q("Iptc4xmpExt", "AISystemUsed")).text = _clean(model)
    ET.SubElement(desc, _q("Iptc4xmpExt", "AIPromptInformation")).text = _clean(prompt)
    ET.SubElement(desc, _q("xmp", "CreateDate")).text = _clean(created)
    ET.SubElement(desc, _q("xmp", "CreatorTool")).text = _clean(tool or f"batchgen {__version__}")
    alt = ET.SubElement(ET.SubElement(desc, _q("dc", "description")), _q("rdf", "Alt"))
    ET.SubElement(alt, _q("rdf", "li"), {f"{{{XML_NS}}}lang": "x-default"}).text = _clean(prompt)
    head = ET.tostring(ET.ProcessingInstruction("xpacket", f'begin="\ufeff" id="{PACKET_ID}"'), encoding="unicode")
    tail = ET.tostring(ET.ProcessingInstruction("xpacket", 'end="w"'), encoding="unicode")
    return f"{head}\n{ET.tostring(root, encoding='unicode')}\n{tail}".encode()


def fit_jpeg(prompt: str, build: dict[str, str]) -> bytes | None:
    """The packet with the prompt cut (on a character) until it fits MAX_JPEG_PACKET bytes; None if it never does."""
    whole = packet(prompt=prompt, **build)
    if len(whole) <= MAX_JPEG_PACKET:
        return whole
    low, high = 0, len(prompt)  # the longest prefix that fits: binary search on characters
    while low < high:
        mid = (low + high + 1) // 2
        if len(packet(prompt=prompt[:mid], **build)) <= MAX_JPEG_PACKET:
            low = mid
        else:
            high = mid - 1
    cut = packet(prompt=prompt[:low], **build)
    return cut if len(cut) <= MAX_JPEG_PACKET else None


# ---------------------------------------------------------------- PNG


def png_chunks(data: bytes) -> Iterator[tuple[int, bytes, int]]:
    """(offset, type, data length) of each chunk up to and including the first IEND; ValueError when the
    chunks do not follow each other within the file (bytes after IEND are not the PNG's business)."""
    at = 8
    while True:
        if at + 12 > len(data):
            raise ValueError("the PNG's chunks run past the end of the file")
        length, kind = struct.unpack(">I4s", data[at : at + 8])
        if at + 12 + length > len(data):
            raise ValueError(f"the PNG's {kind!r} chunk runs past the end of the file")
        yield at, kind, length
        if kind == b"IEND":
            return
        at += 12 + length


def png_chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def has_png_xmp(data: bytes) -> bool:
    for at, kind, length in png_chunks(data):
        if kind == b"iTXt" and data[at + 8 : at + 8 + length].startswith(PNG_KEYWORD + b"\x00"):
            return True
    return False


def itxt(keyword: bytes, text: bytes) -> bytes:
    """An uncompressed iTXt chunk, no language tag, no translated keyword."""
    return png_chunk(b"iTXt", keyword + b"\x00\x00\x00" + b"\x00" + b"\x00" + text)


# ---------------------------------------------------------------- JPEG


def jpeg_with_xmp(data: bytes, xmp: bytes) -> bytes | None:
    """The JPEG with an APP1 XMP segment after SOI and the leading APP0/APP1 segments; None when it has one
    already. ValueError when the segments before the image data cannot be walked."""
    if data[:2] != b"\xff\xd8":
        raise ValueError("not a JPEG")
    at = insert = 2
    leading = True  # SOI, then JFIF (APP0) and Exif (APP1): readers expect them first, so XMP goes after them
    while True:
        if at + 4 > len(data) or data[at] != 0xFF:
            raise ValueError("the JPEG's segments cannot be walked")
        marker = data[at + 1]
        if marker in (0xDA, 0xD9):
            break  # start of scan: the header is over
        length = struct.unpack(">H", data[at + 2 : at + 4])[0]
        if marker == 0xE1 and data[at + 4 : at + 2 + length].startswith(JPEG_XMP_ID):
            return None
        at += 2 + length
        leading = leading and marker in (0xE0, 0xE1)
        if leading:
            insert = at
    segment = b"\xff\xe1" + struct.pack(">H", 2 + len(JPEG_XMP_ID) + len(xmp)) + JPEG_XMP_ID + xmp
    return data[:insert] + segment + data[insert:]


def jpeg_has_c2pa(data: bytes) -> bool:
    """Whether a JPEG carries JUMBF (C2PA) in an APP11 segment before its image data."""
    at = 2
    while at + 4 <= len(data) and data[at] == 0xFF and data[at + 1] not in (0xDA, 0xD9):
        length = struct.unpack(">H", data[at + 2 : at + 4])[0]
        body = data[at + 4 : at + 2 + length]
        if data[at + 1] == 0xEB and (b"jumb" in body or b"c2pa" in body):
            return True
        at += 2 + length
    return False


# ---------------------------------------------------------------- WebP


def webp_chunks(data: bytes) -> list[tuple[bytes, bytes]]:
    """The chunks of a RIFF WebP file, (type, payload); ValueError when it is not one."""
    if data[:4] != b"RIFF" or data[8:12] != b"WEBP":
        raise ValueError("not a WebP file")
    end = min(len(data), 8 + struct.unpack("<I", data[4:8])[0])
    chunks = []
    at = 12
    while at + 8 <= end:
        kind, size = data[at : at + 4], struct.unpack("<I", data[at + 4 : at + 8])[0]
        if at + 8 + size > end:
            raise ValueError(f"the WebP's {kind!r} chunk runs past the end of the file")
        chunks.append((kind, data[at + 8 : at + 8 + size]))
        at += 8 + size + (size & 1)
    return chunks


def webp_with_xmp(data: bytes, xmp: bytes) -> bytes | None:
    """The WebP with an `XMP ` chunk and the VP8X flag for it; None when it has XMP already."""
    chunks = webp_chunks(data)
    kinds = [kind for kind, _ in chunks]
    if b"XMP " in kinds:
        return None
    if kinds[0] == b"VP8X":
        header = bytearray(chunks[0][1])
        header[0] |= 0x04  # the XMP metadata flag
        chunks[0] = (b"VP8X", bytes(header))
    else:
        chunks.insert(0, (b"VP8X", _vp8x_for(chunks[0])))
    chunks.append((b"XMP ", xmp))
    body = b"WEBP" + b"".join(kind + struct.pack("<I", len(p)) + p + b"\x00" * (len(p) & 1) for kind, p in chunks)
    return b"RIFF" + struct.pack("<I", len(body)) + body


def _vp8x_for(first: tuple[bytes, bytes]) -> bytes:
    """A VP8X header for a simple (VP8 or VP8L) WebP: its canvas size, the alpha flag, and the XMP flag."""
    kind, payload = first
    alpha = False
    if kind == b"VP8L" and len(payload) >= 5 and payload[0] == 0x2F:
        bits = int.from_bytes(payload[1:5], "little")
        width, height = (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1
        alpha = bool(bits >> 28 & 1)
    elif kind == b"VP8 " and len(payload) >= 10 and payload[3:6] == b"\x9d\x01\x2a":
        width = struct.unpack("<H", payload[6:8])[0] & 0x3FFF
        height = struct.unpack("<H", payload[8:10])[0] & 0x3FFF
    else:
        raise ValueError(f"a WebP whose first chunk is {kind!r} has no size to read")
    flags = 0x04 | (0x10 if alpha else 0)
    return bytes([flags, 0, 0, 0]) + (width - 1).to_bytes(3, "little") + (height - 1).to_bytes(3, "little")


def webp_has_c2pa(data: bytes) -> bool:
    try:
        return any(kind == b"C2PA" for kind, _ in webp_chunks(data))
    except ValueError:
        return False
