"""Optional zstd or lz4 compression of stored entry blobs (disk and Redis tiers).

A compressed blob is a frame around the checksummed entry blob of serde.py:
b"HYPICZ1\\0" | codec (1 byte) | uncompressed size (8 bytes LE) | compressed size (8 bytes LE) | data.
Readers recognise both kinds, so a store whose setting changes keeps reading what it already holds.
The frame is untrusted input: its declared sizes are checked against the bytes present and the
reader's limit before anything is decompressed, decompression streams in bounded steps and stops
the moment output passes the declared size (a decompression bomb costs at most that), and the
result must then pass serde's own checksum and checks.
"""

from __future__ import annotations

from hypic_rag.errors import CorruptEntryError, RequestError

MAGIC_Z = b"HYPICZ1\0"
FRAME_HEADER = len(MAGIC_Z) + 1 + 8 + 8
CODECS = {"zstd": 1, "lz4": 2}
_NAMES = {v: k for k, v in CODECS.items()}
_STEP = 16 * 2**20  # decompressed bytes produced per step


def _module(codec: str):
    try:
        if codec == "zstd":
            import zstandard

            return zstandard
        import lz4.frame

        return lz4.frame
    except ImportError:
        package = "zstandard" if codec == "zstd" else "lz4"
        raise RequestError(f"compression {codec!r} needs the {package} package: pip install 'hypic-rag[compression]'"
                           ) from None


def check_codec(codec: str | None) -> None:
    if codec is not None and codec not in CODECS:
        raise RequestError(f"compression must be None, 'zstd' or 'lz4'; got {codec!r}")
    if codec is not None:
        _module(codec)


def compress(blob: bytes, codec: str, level: int = 3) -> bytes:
    if codec == "zstd":
        data = _module(codec).ZstdCompressor(level=level).compress(blob)
    else:
        data = _module(codec).compress(blob)  # lz4's fast mode: the level is zstd's
    return MAGIC_Z + bytes([CODECS[codec]]) + len(blob).to_bytes(8, "little") + len(data).to_bytes(8, "little") + data


def frame_sizes(header: bytes, limit: int) -> tuple[str, int, int]:
    """(codec, uncompressed size, compressed size) from a frame header, checked against limit."""
    if len(header) < FRAME_HEADER or header[: len(MAGIC_Z)] != MAGIC_Z:
        raise CorruptEntryError("stored entry has no hypic_rag compression header (or is truncated)")
    codec = _NAMES.get(header[len(MAGIC_Z)])
    if codec is None:
        raise CorruptEntryError(f"stored entry names an unknown compression codec {header[len(MAGIC_Z)]}")
    raw = int.from_bytes(header[len(MAGIC_Z) + 1: len(MAGIC_Z) + 9], "little")
    packed = int.from_bytes(header[len(MAGIC_Z) + 9: FRAME_HEADER], "little")
    if raw > limit or FRAME_HEADER + packed > limit:
        raise CorruptEntryError(f"stored entry declares {raw} bytes uncompressed, more than the limit {limit}")
    return codec, raw, packed


def is_compressed(blob: bytes) -> bool:
    return blob[: len(MAGIC_Z)] == MAGIC_Z


def decompress(frame: bytes, limit: int) -> bytes:
    """The entry blob inside a frame; CorruptEntryError if the frame lies about a size or is damaged."""
    codec, raw, packed = frame_sizes(frame[:FRAME_HEADER], limit)
    data = memoryview(frame)[FRAME_HEADER:]
    if len(data) != packed:
        raise CorruptEntryError(f"stored entry holds {len(data)} compressed bytes but declares {packed}")
    out, total = [], 0
    try:
        if codec == "zstd":
            reader = _module(codec).ZstdDecompressor().stream_reader(bytes(data))
            while True:
                part = reader.read(min(_STEP, raw - total + 1))
                if not part:
                    break
                out.append(part)
                total += len(part)
                if total > raw:
                    break
        else:
            decompressor = _module(codec).LZ4FrameDecompressor()
            rest = bytes(data)
            while True:
                part = decompressor.decompress(rest, max_length=min(_STEP, raw - total + 1))
                rest = b""
                out.append(part)
                total += len(part)
                if total > raw or decompressor.eof or (not part and decompressor.needs_input):
                    break
    except Exception as exc:  # each codec raises its own error type for damaged data
        raise CorruptEntryError(f"stored entry's {codec} data is damaged: {exc!r}") from None
    if total > raw:
        raise CorruptEntryError(f"stored entry decompresses to more than the {raw} bytes it declares")
    if total < raw:
        raise CorruptEntryError(f"stored entry decompresses to {total} bytes, not the {raw} it declares")
    return b"".join(out)
