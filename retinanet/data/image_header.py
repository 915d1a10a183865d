"""Image sizes read from file headers without decoding, and the pixel cap that stops bombs.

A decompression bomb is a small file whose header claims a huge image: a 64 KB PNG can claim
23000 x 23000 pixels (1-bit, all-zero rows compress ~1000:1), which decodes to 1.6 GB of RGB
and is still under TensorFlow's own 2^29-pixel limit. So every image is measured from its
header first, and refused before any decode when its pixel count is over
`DEFAULT_MAX_IMAGE_PIXELS` (or the caller's `max_image_pixels`):

- `read_image_size(path)`: (height, width) of a JPEG, PNG, GIF, BMP or WebP file, parsed
  from its first bytes (JPEG: its markers up to the frame header), in Python;
- `encoded_image_size(image_bytes)`: the same in a TensorFlow graph, for tf.data and the
  SavedModel's `serving_bytes` signature, where the bytes arrive as a string tensor;
- `check_image_pixels` and `decode_image_within_limit` apply the cap.

The sizes are those `tf.io.decode_image(..., expand_animations=False)` produces: GIF the
logical screen, BMP `abs(height)` (bottom-up files store it negative), WebP the canvas.
"""

from __future__ import annotations

import struct

# 100 megapixels: above 64 MP so 8000 x 8000 photos load, below the sizes that take
# gigabytes to decode (100 MP is 300 MB as uint8 RGB, 1.2 GB as float32 after the cast).
DEFAULT_MAX_IMAGE_PIXELS = 100_000_000

_INT32_MAX = 2**31 - 1
# JPEG start-of-frame markers (C4 DHT, C8 JPG and CC DAC share the range but are not frames).
_JPEG_FRAME_MARKERS = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}
_JPEG_STANDALONE_MARKERS = frozenset(range(0xD0, 0xD8)) | {0x01, 0xD8}
_MAX_JPEG_SEGMENTS = 10_000  # real files have well under 100 before the frame header


class ImageTooLargeError(ValueError):
    """An image whose header claims more pixels than allowed."""


def validate_max_image_pixels(max_image_pixels, argument: str = "max_image_pixels"):
    """Returns `max_image_pixels` as an int >= 1, or None (no cap); else raises ValueError."""
    if max_image_pixels is None:
        return None
    if isinstance(max_image_pixels, bool) or not isinstance(max_image_pixels, int) or \
            max_image_pixels < 1:
        raise ValueError(f"{argument} must be a positive int or None, got "
                         f"{max_image_pixels!r}")
    return max_image_pixels


def check_image_pixels(height: int, width: int, max_pixels, name: str) -> None:
    """Raises `ImageTooLargeError` naming `name` when height * width > max_pixels.

    Args:
        height: int, the image height in pixels.
        width: int, the image width in pixels.
        max_pixels: int or None (no cap).
        name: the file (or other source) named in the message.

    Raises:
        ImageTooLargeError: a ValueError subclass.
    """
    if max_pixels is not None and int(height) * int(width) > max_pixels:
        raise ImageTooLargeError(
            f"{name}: the header claims {width}x{height} = {int(height) * int(width):,} "
            f"pixels, over the limit of {max_pixels:,} (max_image_pixels; a decompression "
            "bomb, or raise the limit if the image is genuine)")


def _le16(data, at):
    return struct.unpack_from("<H", data, at)[0]


def _head_size(head: bytes):
    """(height, width) of a PNG, GIF, BMP or WebP from its first 32 bytes, else None."""
    if head.startswith(b"\x89PNG\r\n\x1a\n") and head[12:16] == b"IHDR" and len(head) >= 24:
        width, height = struct.unpack_from(">II", head, 16)
        return height, width
    if head[:4] == b"GIF8" and len(head) >= 10:
        return _le16(head, 8), _le16(head, 6)
    if head[:2] == b"BM" and len(head) >= 26:
        if struct.unpack_from("<I", head, 14)[0] == 12:  # OS/2 BITMAPCOREHEADER: 16-bit sizes
            return _le16(head, 20), _le16(head, 18)
        width, height = struct.unpack_from("<ii", head, 18)
        return abs(height), abs(width)
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP" and len(head) >= 30:
        chunk = head[12:16]
        if chunk == b"VP8 " and head[23:26] == b"\x9d\x01\x2a":
            return _le16(head, 28) & 0x3FFF, _le16(head, 26) & 0x3FFF
        if chunk == b"VP8L" and head[20] == 0x2F:
            bits = struct.unpack_from("<I", head, 21)[0]
            return ((bits >> 14) & 0x3FFF) + 1, (bits & 0x3FFF) + 1
        if chunk == b"VP8X":
            width = int.from_bytes(head[24:27], "little") + 1
            return int.from_bytes(head[27:30], "little") + 1, width
    return None


def _jpeg_size(file):
    """(height, width) from the first frame header of a JPEG open at offset 2, else None."""
    for _ in range(_MAX_JPEG_SEGMENTS):
        byte = file.read(1)
        if byte != b"\xff":
            return None
        while byte == b"\xff":  # fill bytes
            byte = file.read(1)
        if not byte:
            return None
        marker = byte[0]
        if marker in _JPEG_STANDALONE_MARKERS:
            continue
        if marker in (0xD9, 0xDA):  # end of image, or scan data before any frame header
            return None
        length_bytes = file.read(2)
        if len(length_bytes) < 2:
            return None
        length = struct.unpack(">H", length_bytes)[0]
        if length < 2:
            return None
        if marker in _JPEG_FRAME_MARKERS:
            frame = file.read(5)
            if len(frame) < 5:
                return None
            height, width = struct.unpack_from(">HH", frame, 1)
            return height, width
        file.seek(length - 2, 1)
    return None


def pil_size(path: str):
    """(height, width) with Pillow, or None where Pillow is absent or cannot read the header.

    Raises:
        ImageTooLargeError: Pillow refuses the image as a decompression bomb.
    """
    try:
        from PIL import Image
    except ImportError:  # pragma: no cover - pillow comes with matplotlib
        return None
    import warnings

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with Image.open(path) as image:
                width, height = image.size
    except Image.DecompressionBombError:
        # Pillow refuses above 2 * Image.MAX_IMAGE_PIXELS before telling the size.
        raise ImageTooLargeError(
            f"{path}: the header claims more than {2 * Image.MAX_IMAGE_PIXELS:,} pixels "
            "(Pillow's decompression-bomb limit)") from None
    except Exception:  # noqa: BLE001 - any other Pillow failure: the header is unreadable
        return None
    return int(height), int(width)


def read_image_size(path: str):
    """The (height, width) an image file claims in its header, without decoding it.

    JPEG, PNG, GIF, BMP and WebP headers are parsed here (a few bytes; a JPEG is read marker
    by marker up to its frame header); other files, and headers these parsers do not
    understand, go to Pillow's `Image.open`, which also reads only the header.

    Args:
        path: the image file.

    Returns:
        (height, width), ints >= 1.

    Raises:
        ValueError naming the file: no readable header, or a zero height or width.
        ImageTooLargeError: Pillow's own bomb check fired (more than twice
            `PIL.Image.MAX_IMAGE_PIXELS`), so the size is unknown but huge.
    """
    with open(path, "rb") as file:
        head = file.read(32)
        if head.startswith(b"\xff\xd8"):
            file.seek(2)
            size = _jpeg_size(file)
        else:
            size = _head_size(head)
    if size is None:
        size = pil_size(path)
    if size is None:
        raise ValueError(f"{path}: no readable JPEG, PNG, GIF, BMP or WebP header")
    height, width = size
    if height < 1 or width < 1:
        raise ValueError(f"{path}: the header claims a {width}x{height} image")
    return int(height), int(width)


# ----------------------------------------------------------------------------- TensorFlow


def encoded_image_size(image_bytes):
    """The (height, width) that an encoded image's header claims, as a TensorFlow op.

    The graph counterpart of `read_image_size`, for images that arrive as bytes (tf.data
    after `tf.io.read_file`, the SavedModel's `serving_bytes`): JPEG through
    `tf.image.extract_jpeg_shape` (libjpeg reads the markers, not the scan), PNG (IHDR),
    GIF (logical screen), BMP and WebP (VP8, VP8L, VP8X) from the first 32 bytes with
    string ops. Nothing is decoded, so it is cheap on any input. The formats and their
    signatures are those `tf.io.decode_image` recognises.

    Args:
        image_bytes: string scalar tensor, one encoded image.

    Returns:
        int32 [2] tensor (height, width), each clipped to 2^31 - 1 (so a pixel-count check in
        int64 cannot overflow); (-1, -1) for bytes in none of these formats (which
        `tf.io.decode_image` rejects too). A JPEG whose markers libjpeg cannot read raises
        `tf.errors.InvalidArgumentError`, as decoding it would.
    """
    import tensorflow as tf

    image_bytes = tf.convert_to_tensor(image_bytes, tf.string)
    head = tf.strings.substr(image_bytes, 0, 32)  # shorter when the input is
    head = tf.strings.substr(tf.strings.join([head, tf.constant(b"\0" * 32)]), 0, 32)
    b = tf.cast(tf.io.decode_raw(head, tf.uint8), tf.int64)  # [32], zero-padded

    def le(at, count):
        return tf.add_n([b[at + i] * (256**i) for i in range(count)])

    def be(at, count):
        return tf.add_n([b[at + i] * (256 ** (count - 1 - i)) for i in range(count)])

    def starts(at, signature: bytes):
        return tf.reduce_all(tf.equal(b[at:at + len(signature)],
                                      tf.constant(list(signature), tf.int64)))

    def signed32(value):
        return tf.abs(tf.where(value >= 2**31, value - 2**32, value))

    def jpeg():
        return tf.cast(tf.image.extract_jpeg_shape(image_bytes)[:2], tf.int64)

    def png():
        return tf.stack([be(20, 4), be(16, 4)])

    def gif():
        return tf.stack([le(8, 2), le(6, 2)])

    def bmp():
        return tf.stack([signed32(le(22, 4)), signed32(le(18, 4))])

    def webp():
        lossy = tf.stack([le(28, 2) % 16384, le(26, 2) % 16384])
        bits = le(21, 4)
        lossless = tf.stack([(bits // 16384) % 16384 + 1, bits % 16384 + 1])
        extended = tf.stack([le(27, 3) + 1, le(24, 3) + 1])
        return tf.where(starts(12, b"VP8L"), lossless,
                        tf.where(starts(12, b"VP8X"), extended, lossy))

    def unknown():
        return tf.constant([-1, -1], tf.int64)

    formats = [starts(0, b"\xff\xd8\xff"), starts(0, b"\x89PNG\r\n\x1a\n"),
               starts(0, b"GIF8"), starts(0, b"BM"),
               tf.logical_and(starts(0, b"RIFF"), starts(8, b"WEBP"))]
    # Branch 0 is `unknown`; the first matching format picks branch 1..5.
    index = tf.reduce_max(tf.where(tf.stack(formats), tf.range(5, 0, -1), 0))
    index = tf.where(index > 0, 6 - index, 0)
    size = tf.switch_case(tf.cast(index, tf.int32), [unknown, jpeg, png, gif, bmp, webp])
    size = tf.ensure_shape(size, [2])
    return tf.cast(tf.minimum(size, _INT32_MAX), tf.int32)


def decode_image_within_limit(image_bytes, max_pixels=DEFAULT_MAX_IMAGE_PIXELS,
                              channels: int = 3):
    """`tf.io.decode_image` (first frame) that refuses images over `max_pixels` first.

    Args:
        image_bytes: string scalar tensor, one encoded JPEG, PNG, GIF, BMP or WebP.
        max_pixels: int, the pixel cap checked on the header before decoding; None for
            no check.
        channels: as in `tf.io.decode_image`.

    Returns:
        uint8 [H, W, channels] tensor.

    Raises:
        tf.errors.InvalidArgumentError (at run time): the header claims more than
            `max_pixels` pixels; the decode never runs.
    """
    import tensorflow as tf

    max_pixels = validate_max_image_pixels(max_pixels, "max_pixels")
    if max_pixels is None:
        return tf.io.decode_image(image_bytes, channels=channels, expand_animations=False)
    size = tf.cast(encoded_image_size(image_bytes), tf.int64)
    pixels = size[0] * size[1]
    within = tf.debugging.Assert(
        pixels <= max_pixels,
        [f"the image header claims more than max_pixels={max_pixels} pixels (a "
         "decompression bomb?); height, width:", size], name="image_pixel_limit")
    with tf.control_dependencies([within]):
        image_bytes = tf.identity(image_bytes)
    return tf.io.decode_image(image_bytes, channels=channels, expand_animations=False)
