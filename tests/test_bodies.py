"""Bodies encrypted behind intact headers: real files (Pillow, zip, gzip, oggenc, xz,
bzip2, zstd, flac, lame, mkvmerge, 7-Zip, Python's wave; PDFs and MP4 written by their
specifications) judged valid,
the same files encrypted from an offset (AES-CTR) broken near it, files cut short not
broken; and a triaged ext4 history."""

from __future__ import annotations

import gzip
import io
import subprocess
import wave
import zipfile
import zlib
from pathlib import Path

import numpy as np
import pytest
from support import require_module, require_tools

from blockforensics import triage
from blockforensics.bodies import CHECKS, body_break
from blockforensics.bodies.base import INFLATE_STEP
from blockforensics.bodies.streams import ZSTD_WINDOW_MAX, _zstd_window
from blockforensics.datasets.investigation import _text

#: how far past the encryption's start a break may be found (bytes): random bytes inside
#: a deflate block of Huffman codes inflate until they decode an end of block
LATE = 32 << 10


def _aes_ctr(data: bytes, start: int, stop: int | None = None, key: bytes = bytes(32)) -> bytes:
    """``data`` with ``[start, stop)`` encrypted with AES-256-CTR, the rest kept."""
    from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

    stop = len(data) if stop is None else stop
    encryptor = Cipher(algorithms.AES(key), modes.CTR(bytes(16))).encryptor()
    return data[:start] + encryptor.update(data[start:stop]) + data[stop:]


def _photo(rng: np.random.Generator, fmt: str, width: int = 480, **options) -> bytes:
    """A photo-like picture (a gradient with sensor noise) saved by Pillow."""
    image = require_module("PIL.Image", "pillow")
    height = width * 3 // 4
    ramp = np.linspace(0, 200, width)[None, :, None] + np.linspace(0, 50, height)[:, None, None]
    pixels = np.clip(ramp + rng.normal(0, 30, (height, width, 3)), 0, 255).astype(np.uint8)
    out = io.BytesIO()
    image.fromarray(pixels).save(out, fmt, **options)
    return out.getvalue()


def _zip_tool(tmp: Path, rng: np.random.Generator, *options: str) -> bytes:
    """A zip made by Info-ZIP ``zip`` of a text file and a random (stored-like) one."""
    require_tools("zip")
    tmp.mkdir(parents=True, exist_ok=True)
    (tmp / "notes.txt").write_bytes(_text(rng, 120_000))
    (tmp / "photo.raw").write_bytes(rng.integers(0, 60, 90_000, dtype=np.uint8).tobytes())
    subprocess.run(["zip", "-q", *options, "out.zip", "notes.txt", "photo.raw"], cwd=tmp,
                   check=True)
    return (tmp / "out.zip").read_bytes()


def _docx(rng: np.random.Generator, paragraphs: int = 200, zip64: bool = False) -> bytes:
    """A docx-like zip (deflated XML parts) by Python's zipfile; ``zip64``: every local
    header with zip64 sizes."""
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, body in (("[Content_Types].xml", b"<Types/>"),
                           ("word/document.xml", b"".join(b"<w:p>" + _text(rng, 400)
                                                          + b"</w:p>" for _ in range(paragraphs))),
                           ("word/media/image1.bin",
                            rng.integers(0, 50, 60_000, dtype=np.uint8).tobytes())):
            with zf.open(name, "w", force_zip64=zip64) as member:
                member.write(body)
    return out.getvalue()


def _aes_cbc(data: bytes, rng: np.random.Generator) -> bytes:
    """A stream encrypted as the standard security handler's AESV2 does: a 16-byte IV,
    then AES-128-CBC of the data padded by PKCS#7 (ISO 32000-1, 7.6.2)."""
    from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

    iv, pad = rng.bytes(16), 16 - len(data) % 16
    encryptor = Cipher(algorithms.AES(rng.bytes(16)), modes.CBC(iv)).encryptor()
    return iv + encryptor.update(data + bytes([pad]) * pad) + encryptor.finalize()


def _pdf(rng: np.random.Generator, pages: int = 3, password: bool = False) -> bytes:
    """A PDF 1.4 written by ISO 32000-1 (7.5): catalog, page tree, pages whose contents
    and images are Flate streams, a classic cross-reference table and trailer;
    ``password``: its streams encrypted by the standard security handler (AESV2)."""
    def stream(data: bytes) -> bytes:
        packed = zlib.compress(data)
        return _aes_cbc(packed, rng) if password else packed

    objects = [b"<< /Type /Catalog /Pages 2 0 R >>",
               b"<< /Type /Pages /Kids [" + b" ".join(b"%d 0 R" % (3 + 3 * i)
                                                       for i in range(pages))
               + b"] /Count %d >>" % pages]
    for i in range(pages):
        page = 3 + 3 * i
        content = stream(b"BT /F1 12 Tf 72 720 Td (" + _text(rng, 3000) + b") Tj ET")
        pixels = stream(rng.integers(0, 40, 64 * 1024, dtype=np.uint8).tobytes())
        objects += [b"<< /Type /Page /Parent 2 0 R /Contents %d 0 R /Resources << /XObject "
                    b"<< /Im1 %d 0 R >> >> >>" % (page + 1, page + 2),
                    b"<< /Length %d /Filter /FlateDecode >>\nstream\n%s\nendstream"
                    % (len(content), content),
                    b"<< /Type /XObject /Subtype /Image /Width 256 /Height 256 "
                    b"/ColorSpace /DeviceGray /BitsPerComponent 8 /Length %d "
                    b"/Filter /FlateDecode >>\nstream\n%s\nendstream" % (len(pixels), pixels)]
    if password:
        objects.append(b"<< /Filter /Standard /V 4 /R 4 /Length 128 /CF << /StdCF << /CFM "
                       b"/AESV2 /AuthEvent /DocOpen /Length 16 >> >> /StmF /StdCF /StrF "
                       b"/StdCF /O <" + rng.bytes(32).hex().encode() + b"> /U <"
                       + rng.bytes(32).hex().encode() + b"> /P -1028 >>")
    out = bytearray(b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n")
    offsets = []
    for number, body in enumerate(objects, start=1):
        offsets.append(len(out))
        out += b"%d 0 obj\n%s\nendobj\n" % (number, body)
    return bytes(out + _xref(len(out), [(0, [None, *offsets])], len(objects) + 1,
                             encrypt=len(objects) if password else None))


def _xref(at: int, sections: list[tuple[int, list[int | None]]], size: int,
          prev: int | None = None, encrypt: int | None = None) -> bytes:
    """A cross-reference section at byte ``at`` (subsections: first object number, their
    offsets; None: free), its trailer, startxref and %%EOF."""
    out = b"xref\n"
    for first, offsets in sections:
        out += b"%d %d\n" % (first, len(offsets)) + b"".join(
            b"0000000000 65535 f\r\n" if o is None else b"%010d 00000 n\r\n" % o
            for o in offsets)
    return out + (b"trailer\n<< /Size %d /Root 1 0 R%s%s >>\nstartxref\n%d\n%%%%EOF\n"
                  % (size, b"" if prev is None else b" /Prev %d" % prev,
                     b"" if encrypt is None else b" /Encrypt %d 0 R" % encrypt, at))


def _edited(pdf: bytes, rng: np.random.Generator) -> bytes:
    """``pdf`` saved again with an incremental update: page 1's contents replaced."""
    prev = int(pdf.rsplit(b"startxref", 1)[1].split()[0])
    content = zlib.compress(b"BT (" + _text(rng, 2000) + b") Tj ET")
    update = b"4 0 obj\n<< /Length %d /Filter /FlateDecode >>\nstream\n%s\nendstream\nendobj\n" \
        % (len(content), content)
    size = int(pdf.rsplit(b"/Size", 1)[1].split()[0])
    return pdf + update + _xref(len(pdf) + len(update), [(0, [None]), (4, [len(pdf)])], size,
                                prev)


def _apk(zipped: bytes, rng: np.random.Generator) -> bytes:
    """``zipped`` signed as Android's apksigner does (v2): an APK Signing Block — its
    size, an ID-value pair (0x7109871a), its size again, ``APK Sig Block 42`` —
    between the last member and the central directory, whose offset the end record
    then gives."""
    start = zipfile.ZipFile(io.BytesIO(zipped)).start_dir
    value = rng.bytes(1800)  # signed data, signatures, public key
    pairs = (len(value) + 4).to_bytes(8, "little") + (0x7109871A).to_bytes(4, "little") + value
    size = (len(pairs) + 8 + 16).to_bytes(8, "little")
    block = size + pairs + size + b"APK Sig Block 42"
    end = zipped.rindex(b"PK\x05\x06")
    tail = bytearray(zipped[start:])
    tail[end - start + 16 : end - start + 20] = (start + len(block)).to_bytes(4, "little")
    return zipped[:start] + block + bytes(tail)


def _mp4(rng: np.random.Generator) -> bytes:
    """ISO BMFF boxes as a camera writes them: ``ftyp``, ``mdat`` (coded frames), ``moov``
    (a movie header box and a track box holding a track header)."""
    def box(kind: bytes, body: bytes) -> bytes:
        return (8 + len(body)).to_bytes(4, "big") + kind + body

    mvhd = box(b"mvhd", bytes(4) + bytes(8) + (1000).to_bytes(4, "big") + (5000).to_bytes(4, "big")
               + bytes(80))
    trak = box(b"trak", box(b"tkhd", bytes(84)) + box(b"mdia", box(b"mdhd", bytes(24))))
    return (box(b"ftyp", b"isom\x00\x00\x02\x00isomiso2avc1mp41")
            + box(b"mdat", rng.bytes(150_000)) + box(b"moov", mvhd + trak + box(b"udta",
                                                                                   bytes(4000))))


def _wav(rng: np.random.Generator, seconds: float = 6.0) -> bytes:
    """A stereo 16-bit 44.1 kHz recording (two tones, one gliding, and noise) written by
    Python's ``wave``: RIFF WAVE, a ``fmt `` chunk, then the ``data`` chunk."""
    t = np.arange(int(44100 * seconds)) / 44100
    tone = np.sin(2 * np.pi * 440 * t) * 8000 + np.sin(2 * np.pi * 660 * t * (1 + t / 20)) * 5000
    left = (tone + rng.normal(0, 800, t.size)).astype("<i2")
    out = io.BytesIO()
    with wave.open(out, "wb") as w:
        w.setnchannels(2)
        w.setsampwidth(2)
        w.setframerate(44100)
        w.writeframes(np.stack([left, np.roll(left, 100)], 1).tobytes())
    return out.getvalue()


def _tool(tmp: Path, data: bytes, *command: str) -> bytes:
    """``data`` through ``command`` (a real encoder or compressor: stdin to stdout)."""
    require_tools(command[0])
    return subprocess.run(command, input=data, stdout=subprocess.PIPE, check=True,
                          cwd=tmp).stdout


def _flac(tmp: Path, rng: np.random.Generator) -> bytes:
    """A FLAC made by ``flac`` from a WAV file (so that it writes STREAMINFO's frame
    sizes): STREAMINFO, SEEKTABLE, VORBIS_COMMENT, PADDING, then the frames."""
    require_tools("flac")
    (tmp / "take.wav").write_bytes(_wav(rng, 4))
    subprocess.run(["flac", "-s", "-f", "take.wav", "-o", "take.flac"], cwd=tmp, check=True)
    return (tmp / "take.flac").read_bytes()


def _webp(rng: np.random.Generator) -> bytes:
    """A lossy WebP by Pillow with an ICC profile and Exif: RIFF WEBP, ``VP8X``,
    ``ICCP``, ``VP8 `` (the picture), ``EXIF``."""
    image = require_module("PIL.Image", "pillow")
    photo = image.open(io.BytesIO(_photo(rng, "PNG", width=640)))
    exif = image.Exif()
    exif[0x010F], exif[0x0110] = "Camera maker", "Model " + rng.bytes(1500).hex()
    out = io.BytesIO()
    photo.save(out, "WEBP", quality=90, icc_profile=rng.bytes(3000), exif=exif.tobytes())
    return out.getvalue()


def _gif(rng: np.random.Generator) -> bytes:
    """An animated GIF by Pillow (a global colour table, frames with their own: a
    graphic control and an application extension each) of noisy photo-like frames."""
    image = require_module("PIL.Image", "pillow")
    frames = [image.open(io.BytesIO(_photo(rng, "PNG", width=200))).quantize(64 + 32 * k)
              for k in range(4)]
    out = io.BytesIO()
    frames[0].save(out, "GIF", save_all=True, append_images=frames[1:], duration=80, loop=0,
                   comment=b"holiday " * 40)
    return out.getvalue()


def _tool_file(tmp: Path, data: bytes, suffix: str, *command: str) -> bytes:
    """The file ``command`` (with ``{in}`` and ``{out}`` in its arguments) makes of a file
    of ``data``."""
    require_tools(command[0])
    source, out = tmp / f"in-{command[0]}", tmp / f"out-{command[0]}{suffix}"
    source.write_bytes(data)
    out.unlink(missing_ok=True)
    subprocess.run([arg.format(**{"in": source, "out": out}) for arg in command], cwd=tmp,
                   check=True, stdout=subprocess.DEVNULL)
    return out.read_bytes()


def _rar_vint(n: int) -> bytes:
    """RAR 5's variable-length integer: 7 bits a byte, low first, the top bit on all but
    the last."""
    out = bytearray()
    while True:
        out.append(n & 0x7F | (0x80 if n >> 7 else 0))
        n >>= 7
        if not n:
            return bytes(out)


def _rar5(members: dict[str, bytes]) -> bytes:
    """A RAR 5 archive of stored members, written by rarlab's RAR 5.0 format notes: the
    signature, a main archive block, a file block per member (its data after it), an
    end-of-archive block; each header after its CRC-32 and size.  (No RAR writer is
    free software: libarchive, which checks every header's CRC, reads it in the tests.)"""
    def block(kind: int, fields: bytes, data: bytes = b"") -> bytes:
        flags = 0x0002 if data else 0  # a data area follows
        body = _rar_vint(kind) + _rar_vint(flags) + (_rar_vint(len(data)) if data else b"") \
            + fields
        header = _rar_vint(len(body)) + body
        return zlib.crc32(header).to_bytes(4, "little") + header + data

    out = b"Rar!\x1a\x07\x01\x00" + block(1, _rar_vint(0))
    for name, data in members.items():
        encoded = name.encode()
        # file flags (CRC-32 present), unpacked size, attributes, CRC-32, compression
        # (version 0, stored), host OS (Windows), name
        out += block(2, _rar_vint(0x0004) + _rar_vint(len(data)) + _rar_vint(0x20)
                     + zlib.crc32(data).to_bytes(4, "little") + _rar_vint(0) + _rar_vint(0)
                     + _rar_vint(len(encoded)) + encoded, data)
    return out + block(5, _rar_vint(0))


def _rar4(members: dict[str, bytes]) -> bytes:
    """The same in RAR 1.5-4 format (rarlab's technote): the marker block, a main header,
    a file header per member (packed size, unpacked size, host OS, CRC-32, DOS time,
    version 2.0, method "store", name size, attributes, name; its data after it), an end
    block; each header's CRC-16 the low half of its CRC-32 from the type on."""
    def block(kind: int, flags: int, fields: bytes, data: bytes = b"") -> bytes:
        header = bytes([kind]) + (flags | (0x8000 if data else 0)).to_bytes(2, "little") \
            + (7 + len(fields)).to_bytes(2, "little") + fields
        return (zlib.crc32(header) & 0xFFFF).to_bytes(2, "little") + header + data

    out = b"Rar!\x1a\x07\x00" + block(0x73, 0, bytes(6))
    for name, data in members.items():
        encoded = name.encode()
        out += block(0x74, 0, len(data).to_bytes(4, "little") * 2 + bytes([3])
                     + zlib.crc32(data).to_bytes(4, "little") + (0x5A000000).to_bytes(4, "little")
                     + bytes([20, 0x30]) + len(encoded).to_bytes(2, "little")
                     + (0x20).to_bytes(4, "little") + encoded, data)
    return out + block(0x7B, 0x4000, b"")


def _rar_members() -> dict[str, bytes]:
    """The members of the RAR archives here (the same every call)."""
    rng = np.random.default_rng(19)
    return {"notes.txt": _text(rng, 20_000), "take.flac.bin": rng.bytes(60_000),
            "docs/plan.txt": _text(rng, 30_000), "docs/photo.raw": rng.bytes(40_000)}


def _formats(tmp_path: Path) -> dict[str, tuple[str, bytes]]:
    rng = np.random.default_rng(7)
    return {
        "jpeg": ("jpeg", _photo(rng, "JPEG", quality=90)),
        "jpeg-progressive": ("jpeg", _photo(rng, "JPEG", quality=85, progressive=True)),
        "jpeg-restarts": ("jpeg", _photo(rng, "JPEG", quality=80, restart_marker_blocks=4)),
        "png": ("png", _photo(rng, "PNG")),
        "zip": ("zip", _zip_tool(tmp_path / "zip", rng)),
        "zip64": ("zip", _zip_tool(tmp_path / "zip64", rng, "-fz")),
        "docx": ("zip", _docx(rng)),
        "docx-zip64": ("zip", _docx(rng, zip64=True)),
        "gzip": ("gzip", gzip.compress(_text(rng, 400_000))),
        "pdf": ("pdf", _pdf(rng)),
        "pdf-edited": ("pdf", _edited(_pdf(rng), rng)),
        "pdf-password": ("pdf", _pdf(rng, password=True)),
        "apk": ("zip", _apk(_docx(rng), rng)),
        "mp4": ("mp4", _mp4(rng)),
        "ogg": ("ogg", _tool(tmp_path, _wav(rng), "oggenc", "-Q", "-q", "3", "-", "-o", "-")),
        "xz": ("xz", _tool(tmp_path, _text(rng, 400_000), "xz", "-c")),
        # two streams, stream padding between (xz file format 2.2): as xz -dc reads them
        "xz-streams": ("xz", _tool(tmp_path, _text(rng, 200_000), "xz", "-c") + bytes(8)
                       + _tool(tmp_path, _wav(rng, 1), "xz", "-c")),
        "bzip2": ("bzip2", _tool(tmp_path, _text(rng, 400_000) + _wav(rng, 2), "bzip2", "-c")),
        "zstd": ("zstd", _tool(tmp_path, _text(rng, 400_000) + _wav(rng, 2), "zstd", "-c")),
        "zstd-long": ("zstd", _tool(tmp_path, _wav(rng, 3), "zstd", "-c", "--long=31")),
        "flac": ("flac", _flac(tmp_path, rng)),
        # through a pipe: STREAMINFO's frame sizes unknown (0)
        "flac-piped": ("flac", _tool(tmp_path, _wav(rng, 4), "flac", "-s", "-c", "-")),
        "wav": ("riff", _wav(rng, 2)),
        "webp": ("riff", _webp(rng)),
        # lame without tags writes frames from byte 0 (an Info frame first); with them
        # an ID3v2 tag first, and an ID3v1 one after the last frame
        "mp3": ("mp3", _tool(tmp_path, _wav(rng, 5), "lame", "--quiet", "-", "-")),
        "mp3-tagged": ("mp3", _tool(tmp_path, _wav(rng, 5), "lame", "--quiet", "-b", "192",
                                    "--tt", "Take", "--ta", "Band", "--add-id3v2", "-", "-")),
        "mp3-mpeg2": ("mp3", _tool(tmp_path, _wav(rng, 5), "lame", "--quiet", "--resample",
                                   "22.05", "-", "-")),
        "gif": ("gif", _gif(rng)),
        "mka": ("matroska", _tool_file(tmp_path, _tool(tmp_path, _wav(rng, 4), "oggenc", "-Q",
                                                       "-", "-o", "-"),
                                       ".mka", "mkvmerge", "-q", "-o", "{out}", "{in}")),
        "mka-pcm": ("matroska", _tool_file(tmp_path, _wav(rng, 2), ".mka", "mkvmerge", "-q",
                                           "--cluster-length", "100ms", "-o", "{out}",
                                           "{in}")),
        "tiff-jpeg": ("tiff", _photo(rng, "TIFF", width=640, compression="jpeg")),
        "tiff-deflate": ("tiff", _photo(rng, "TIFF", width=400, compression="tiff_deflate")),
        "rar5": ("rar", _rar5(_rar_members())),
        "rar4": ("rar", _rar4(_rar_members())),
        "7z": ("7z", _tool_file(tmp_path, _text(rng, 300_000) + _wav(rng, 1), ".7z", "7zz", "a",
                                "-bd", "{out}", "{in}")),
    }


@pytest.fixture(scope="module")
def formats(tmp_path_factory) -> dict[str, tuple[str, bytes]]:
    return _formats(tmp_path_factory.mktemp("bodies"))


NAMES = ["jpeg", "jpeg-progressive", "jpeg-restarts", "png", "zip", "zip64", "docx",
         "docx-zip64", "apk", "gzip", "pdf", "pdf-edited", "pdf-password", "mp4", "ogg", "xz",
         "xz-streams", "bzip2", "zstd", "zstd-long", "flac", "flac-piped", "wav", "webp",
         "mp3", "mp3-tagged", "mp3-mpeg2", "gif", "mka", "mka-pcm", "7z", "rar5", "rar4",
         "tiff-jpeg", "tiff-deflate"]
#: a WAV's samples are its last chunk, whose bytes have no structure to break; a zstd
#: frame of a 2 GiB window is not checked (bodies.streams.ZSTD_WINDOW_MAX)
ENCRYPTED = [name for name in NAMES if name not in ("wav", "zstd-long")]


@pytest.mark.parametrize("name", NAMES)
def test_a_valid_file_keeps_its_structure(formats, name):
    fmt, data = formats[name]
    assert body_break(fmt, data) is None


@pytest.mark.parametrize("name", NAMES)
def test_a_file_cut_short_is_not_broken(formats, name):
    """A download in progress: the body that exists is valid, it just ends."""
    fmt, data = formats[name]
    for share in (0.3, 0.6, 0.95):
        assert body_break(fmt, data[: int(len(data) * share)]) is None, share


#: where the structure says a break must be found, relative to the encryption's start:
#: a PDF that encrypts its streams itself (AESV2): the break is where the stream the
#: encryption starts in ends (its /Length says ``endstream`` follows)
#: a zstd block (up to 128 KiB) is found broken where it ends, a bzip2 block mostly
#: before its end (up to 900 kB of input)
LATE_BY = {"pdf-password": 1 << 17, "zstd": 128 << 10, "bzip2": 128 << 10}
#: boxes or chunks whose data has no structure to break: the encryption runs from
#: inside one into the next's header, where it is found
NEXT_HEADER = {"mp4": b"moov", "webp": b"EXIF"}
#: a 7z's packed streams have no structure of their own: the break is its end header;
#: a RAR's stored data neither: the break is the next block's header
AT_END_HEADER = {"7z"}
#: Pillow writes a compressed TIFF's directory after its strips: encrypted to the end,
#: the break is the directory (its strips are checked while it is intact: below)
AT_DIRECTORY = {"tiff-jpeg", "tiff-deflate"}
AT_NEXT_BLOCK = {"rar5", "rar4"}
#: a GIF's image data: the break is at the sub-block the encryption begins in
EARLY_BY = {"gif": 256}


@pytest.mark.parametrize("name", ENCRYPTED)
@pytest.mark.parametrize("share", [0.25, 0.6])
def test_a_body_encrypted_from_an_offset_is_broken_near_it(formats, name, share):
    fmt, data = formats[name]
    start = int(len(data) * share)
    if name in NEXT_HEADER:
        start = data.rindex(NEXT_HEADER[name]) - 2000
    found = body_break(fmt, _aes_ctr(data, start))
    assert found is not None and found.format == fmt
    if name in AT_END_HEADER:
        start = 32 + int.from_bytes(data[12:20], "little")  # where the start header says
    if name in AT_DIRECTORY:
        start = int.from_bytes(data[4:8], "little")  # IFD0, where the header says
    if name in AT_NEXT_BLOCK:  # where the member the encryption begins in ends
        start = next(data.find(member) + len(member) for member in _rar_members().values()
                     if data.find(member) <= start < data.find(member) + len(member))
    assert start - EARLY_BY.get(name, INFLATE_STEP) <= found.offset \
        <= start + LATE_BY.get(name, LATE), (found, start)
    assert "breaks its own structure from byte" in found.describe()


def test_a_zstd_window_over_the_limit_is_not_decoded(formats):
    """``zstd --long=31`` through a pipe asks for a 2 GiB window: read from its header
    (RFC 8878), the frame is left unchecked, so a hostile header cannot make the check
    hold gigabytes; the plain frame's window is within the limit and is checked."""
    assert _zstd_window(formats["zstd-long"][1], 4) == 1 << 31
    assert _zstd_window(formats["zstd"][1], 4) <= ZSTD_WINDOW_MAX
    assert body_break("zstd", _aes_ctr(formats["zstd-long"][1], 5000)) is None


def test_a_bit_flip_is_not_ciphertext(formats):
    """A break where the bytes are no random ones is not evidence of encryption: a PDF
    whose cross-reference table points at its header (text there) is not flagged."""
    _, data = formats["pdf"]
    entry = data.index(b" 00000 n\r\n", data.rindex(b"\nxref\n")) - 10
    shifted = data[:entry] + b"%010d" % 12 + data[entry + 10:]
    assert CHECKS["pdf"](shifted) == (12, "the cross-reference table says object 1 begins")
    assert body_break("pdf", shifted) is None


def test_an_ogg_page_whose_crc_fails_is_named(formats):
    """oggenc's pages carry RFC 3533's CRC (bit by bit here: polynomial 0x04C11DB7, not
    reflected, from 0); one bit flipped in a page's body fails it, and that page is
    named."""
    _, data = formats["ogg"]
    second = data.index(b"OggS", 1)
    third = data.index(b"OggS", second + 1)
    crc = 0
    for byte in data[second : second + 22] + bytes(4) + data[second + 26 : third]:
        crc ^= byte << 24
        for _ in range(8):
            crc = (crc << 1 ^ (0x04C11DB7 if crc >> 31 else 0)) & 0xFFFFFFFF
    assert crc == int.from_bytes(data[second + 22 : second + 26], "little")
    flipped = data[: third - 100] + bytes([data[third - 100] ^ 1]) + data[third - 99 :]
    assert CHECKS["ogg"](flipped) == (second, "an Ogg page's CRC-32 must match its bytes")


def test_striped_encryption_is_broken_in_the_first_stripe(formats):
    """Every other 64 KiB encrypted, the first 4 KiB kept (BlackCat-like stripes)."""
    _, data = formats["jpeg"]
    striped = data
    for start in range(4096, len(data), 128 << 10):
        striped = _aes_ctr(striped, start, min(start + (64 << 10), len(data)))
    found = body_break("jpeg", striped)
    assert found is not None and 4096 <= found.offset <= 4096 + LATE


# ------------------------------------------------------------------ triage
PHOTOS = [f"/home/photos/p{i}.jpg" for i in range(4)] + ["/home/photos/scan.png"]
DOCS = ["/home/docs/plan.docx", "/home/docs/sheet.xlsx", "/home/docs/archive.zip",
        "/home/docs/report.pdf", "/home/docs/manual.pdf"]


def _header_kept_days(tmp: Path) -> list:
    """Four days: photos, documents and notes; a benign day (new photos, a new zip, a PDF
    edited, a photo half downloaded); one new photo encrypted in place from byte 4096
    and a note edited; then every photo and document encrypted so (JPEG, PNG, PDF to
    the end; zips up to their central directory, kept)."""
    rng = np.random.default_rng(11)
    files = {**{p: _photo(rng, "PNG" if p.endswith(".png") else "JPEG", width=400,
                          quality=88) for p in PHOTOS},
             DOCS[0]: _docx(rng, 120), DOCS[1]: _docx(rng, 150),
             DOCS[2]: _zip_tool(tmp / "z1", rng), DOCS[3]: _pdf(rng, 2), DOCS[4]: _pdf(rng, 2)}
    notes = {f"/home/docs/note{i}.txt": _text(rng, 3000) for i in range(4)}
    download = _photo(rng, "JPEG", width=640, quality=92)
    edited = _edited(files[DOCS[3]], rng)
    new = [_photo(rng, "JPEG", width=400, quality=80, progressive=bool(i % 2)) for i in range(3)]

    def encrypted(data: bytes) -> bytes:
        """From byte 4096 on; a zip's central directory kept."""
        stop = zipfile.ZipFile(io.BytesIO(data)).start_dir if data[:2] == b"PK" else None
        return _aes_ctr(data, 4096, stop, key=rng.bytes(32))

    return [
        [*[("mkdir", d, None) for d in ("/home", "/home/photos", "/home/docs",
                                        "/home/downloads")],
         *[("write", p, d) for p, d in {**files, **notes}.items()]],
        [*[("write", f"/home/photos/new{i}.jpg", photo) for i, photo in enumerate(new)],
         ("write", "/home/docs/new.zip", _zip_tool(tmp / "z2", rng, "-fz")),
         ("write", DOCS[3], edited),
         ("write", "/home/downloads/holiday.jpg", download[: len(download) // 2]),
         ("write", "/home/docs/note0.txt", notes["/home/docs/note0.txt"] + _text(rng, 500))],
        [("overwrite", "/home/photos/new0.jpg", encrypted(new[0])),
         ("write", "/home/docs/note1.txt", notes["/home/docs/note1.txt"] + _text(rng, 400))],
        [("overwrite", p, encrypted(files[p])) for p in PHOTOS + DOCS if p != DOCS[3]]
        + [("overwrite", DOCS[3], encrypted(edited))],
    ]


#: the verdicts of the four days' points
VERDICTS = ["clean", "clean", "suspicious", "encrypted"]


@pytest.fixture(scope="module")
def header_kept(tmp_path_factory):
    from blockforensics.datasets.ransomware import play

    require_tools("mkfs.ext4", "debugfs", "zip")
    require_module("pytsk3", "pytsk3")
    tmp = tmp_path_factory.mktemp("header_kept")
    chain_dir, _ = play(tmp, "ext4", _header_kept_days(tmp), 24 << 20)
    return triage.triage_chain(chain_dir)


def test_bodies_encrypted_behind_kept_headers_make_the_point_encrypted(header_kept):
    verdicts = [p["verdict"] for p in header_kept["points"]]
    assert verdicts == VERDICTS, [p["reasons"] for p in header_kept["points"]]
    attack = header_kept["points"][3]
    flagged = {f["path"] for f in attack["files"] if f["flagged"]}
    assert flagged == set(PHOTOS + DOCS)
    assert attack["metrics"]["broken_bodies"] == len(PHOTOS + DOCS)
    assert any("break the structure their format promises" in r for r in attack["reasons"])
    for f in attack["files"]:
        assert any("breaks its own structure from byte" in e for e in f["evidence"]), f
    assert header_kept["last_clean_point"] == 1


def test_one_photo_broken_alone_is_suspicious(header_kept):
    """One body broken among two files written: named like a content contradicting its
    extension (suspicious), too few for the point to be called encrypted."""
    point = header_kept["points"][2]
    assert point["verdict"] == "suspicious"
    assert point["metrics"]["broken_bodies"] == 1 and point["metrics"]["suspected_files"] == 0
    assert {f["path"] for f in point["files"] if f["flagged"]} == {"/home/photos/new0.jpg"}
    assert any("whose body breaks its format's structure" in r and "new0.jpg" in r
               for r in point["reasons"])


def test_new_photos_a_new_zip_an_edited_pdf_and_a_partial_download_stay_clean(header_kept):
    benign = header_kept["points"][1]
    assert benign["verdict"] == "clean", benign["reasons"]
    assert not [f["path"] for f in benign["files"] if f["flagged"]]
    assert benign["metrics"]["broken_bodies"] == 0
    assert benign["metrics"]["unexplained_high_entropy"] == 0


@pytest.mark.slow
@pytest.mark.parametrize("fs", ["fat32", "xfs", "ntfs"])
def test_header_kept_encryption_on_other_file_systems(fs, tmp_path_factory):
    """The same three days through mtools (FAT32), the kernel (XFS) or ntfs-3g."""
    from test_triage import _triaged

    tmp = tmp_path_factory.mktemp(f"header_kept_{fs}")
    doc = _triaged(fs, _header_kept_days(tmp), tmp_path_factory)
    assert [p["verdict"] for p in doc["points"]] == VERDICTS, \
        [p["reasons"] for p in doc["points"]]
    assert {f["path"] for f in doc["points"][3]["files"] if f["flagged"]} == set(PHOTOS + DOCS)
    assert not [f["path"] for f in doc["points"][1]["files"] if f["flagged"]]


def test_damaged_and_hostile_bodies_never_raise(formats):
    """Random bytes over random places, cuts, and a lying length field in every real
    file: a Break or None, never an exception."""
    rng = np.random.default_rng(5)
    for fmt, data in formats.values():
        for _ in range(60):
            damaged = bytearray(data[: int(rng.integers(1, len(data) + 1))])
            for _ in range(int(rng.integers(1, 4))):
                at, n = int(rng.integers(0, len(damaged))), int(rng.integers(1, 64))
                damaged[at : at + n] = rng.bytes(min(n, len(damaged) - at))
            found = body_break(fmt, bytes(damaged))
            assert found is None or 0 <= found.offset < len(damaged)
        for at in range(0, min(len(data), 600), 7):  # every header field, all ones
            body_break(fmt, data[:at] + b"\xff" * 8 + data[at + 8 :])


def test_an_mp3_without_a_tag_is_told_by_its_frames(formats):
    """lame writes no ID3 tag unless given one: the content is MP3 by its chaining
    frames, so a new song promises what it holds; random bytes that begin like a frame
    header are not taken for one."""
    from blockforensics.evidence import HEAD_BYTES, content_type, judge, stats_of

    _, data = formats["mp3"]
    assert data[:3] != b"ID3" and content_type(data[:HEAD_BYTES]) == "mp3"
    said = judge("/music/song.mp3", None, None, stats_of(data), None, "mp3")
    assert not any("promises" in line for line in said.evidence), said.evidence
    noise = np.random.default_rng(3).bytes(HEAD_BYTES)
    assert content_type(data[:4] + noise) is None


@pytest.mark.parametrize("name", ["rar5", "rar4"])
def test_the_rar_archives_written_here_are_read_by_libarchive(formats, name, tmp_path):
    """libarchive checks every RAR header's CRC: it lists and extracts the archives the
    body tests use, member for member."""
    require_tools("bsdtar")
    _, data = formats[name]
    (tmp_path / "a.rar").write_bytes(data)
    subprocess.run(["bsdtar", "-xf", tmp_path / "a.rar", "-C", tmp_path], check=True)
    members = _rar_members()
    assert {name: (tmp_path / name).read_bytes() for name in members} == members


@pytest.mark.parametrize("name", ["tiff-jpeg", "tiff-deflate"])
def test_a_tiff_strip_encrypted_behind_its_directory_is_broken_near_it(formats, name):
    """The directory kept (encrypted up to it): each strip keeps its compression's own
    structure (JPEG markers, a Deflate stream), so the break is found where the
    encryption begins, in the strip it begins in."""
    fmt, data = formats[name]
    directory = int.from_bytes(data[4:8], "little")
    for share in (0.25, 0.6):
        start = int(directory * share)
        found = body_break(fmt, _aes_ctr(data, start, directory))
        assert found is not None and start - INFLATE_STEP <= found.offset <= start + LATE, \
            (found, start)


@pytest.mark.parametrize("name", NAMES)
def test_damaged_files_never_fail_the_check(formats, name):
    """Files cut anywhere, bytes overwritten anywhere (headers included): the check says
    where the structure breaks or nothing, and never raises (a triage reads whatever a
    disk holds)."""
    fmt, data = formats[name]
    rng = np.random.default_rng(len(name))
    for trial in range(40):
        damaged = bytearray(data[: rng.integers(0, len(data) + 1)] if trial % 3 == 0 else data)
        for at in rng.integers(0, max(len(damaged), 1), 1 + trial % 7).tolist():
            if at < len(damaged):
                damaged[at : at + 8] = rng.bytes(len(damaged[at : at + 8]))
        body_break(fmt, bytes(damaged))


#: the media and archive files of the second triaged history, by the formats fixture's name
MEDIA = {"/home/music/take.mp3": "mp3-tagged", "/home/music/live.mka": "mka",
         "/home/pics/anim.gif": "gif", "/home/pics/scan.tif": "tiff-jpeg",
         "/home/docs/old.rar": "rar5", "/home/docs/src.7z": "7z"}


@pytest.mark.slow
def test_media_and_archives_encrypted_behind_kept_headers_make_the_point_encrypted(
        formats, tmp_path):
    """The formats checked beyond the first history's, end to end on ext4: a day adding
    them is clean; a day encrypting each from byte 4096 (header kept) is encrypted, and
    every one of them is named for the structure it breaks."""
    from blockforensics.datasets.ransomware import play

    require_tools("mkfs.ext4", "debugfs")
    require_module("pytsk3", "pytsk3")
    rng = np.random.default_rng(13)
    days = [[*[("mkdir", d, None) for d in ("/home", "/home/music", "/home/pics",
                                            "/home/docs")],
             *[("write", path, formats[name][1]) for path, name in MEDIA.items()]],
            [("overwrite", path, _aes_ctr(formats[name][1], 4096, key=rng.bytes(32)))
             for path, name in MEDIA.items()]]
    chain_dir, _ = play(tmp_path, "ext4", days, 24 << 20)
    points = triage.triage_chain(chain_dir)["points"]
    assert [p["verdict"] for p in points] == ["clean", "encrypted"], \
        [p["reasons"] for p in points]
    assert {f["path"] for f in points[1]["files"] if f["flagged"]} == set(MEDIA)
    assert points[1]["metrics"]["broken_bodies"] == len(MEDIA)


def _rechunked_gif(data: bytes, rng: np.random.Generator) -> bytes:
    """``data`` (a GIF) with every image's LZW data cut into sub-blocks of random lengths
    (1-200 bytes): as valid by the spec, the habit of a writer other than giflib's."""
    screen_flags = data[10]
    pos = 13 + (3 << ((screen_flags & 7) + 1) if screen_flags & 0x80 else 0)
    out = bytearray(data[:pos])
    while data[pos] != 0x3B:
        start = pos
        if data[pos] == 0x21:
            pos += 2
        else:
            flags = data[pos + 9]
            pos += 10 + (3 << ((flags & 7) + 1) if flags & 0x80 else 0) + 1  # + code size
        blocks_at = pos
        payload = bytearray()
        while data[pos]:
            payload += data[pos + 1 : pos + 1 + data[pos]]
            pos += 1 + data[pos]
        pos += 1
        if data[start] != 0x2C:  # an extension's sub-blocks mean something: kept
            out += data[start:pos]
            continue
        out += data[start:blocks_at]
        cut = 0
        while cut < len(payload):
            n = int(rng.integers(1, 201))
            out += bytes([len(payload[cut : cut + n])]) + payload[cut : cut + n]
            cut += n
        out += b"\0"
    return bytes(out + data[pos:])


def test_a_gif_of_other_sub_block_lengths_keeps_its_structure(formats):
    """Sub-blocks of any length are valid (only giflib's and Pillow's are all full):
    such a GIF is read by Pillow, frame for frame, and is not broken; encrypted, it is."""
    image = require_module("PIL.Image", "pillow")
    _, data = formats["gif"]
    rechunked = _rechunked_gif(data, np.random.default_rng(2))
    assert rechunked != data
    a, b = image.open(io.BytesIO(data)), image.open(io.BytesIO(rechunked))
    assert a.n_frames == b.n_frames > 1
    for frame in range(a.n_frames):
        a.seek(frame)
        b.seek(frame)
        assert a.tobytes() == b.tobytes()
    assert body_break("gif", rechunked) is None
    found = body_break("gif", _aes_ctr(rechunked, len(rechunked) // 2))
    assert found is not None and found.offset >= len(rechunked) // 2 - 256
