"""Corrupt images: a corrupt image is only certain at decode time, and a decode error inside
tf.data cannot name the file. So the readers probe each image eagerly and cheaply (the default
`check_images="header"`): the file must exist, start with a JPEG/PNG/GIF/BMP/WebP signature,
have a readable header (its size), and a JPEG/PNG/GIF must end with its end marker (EOI, IEND,
trailer). A file that fails the end-marker test, or whose header Pillow cannot parse, is
decoded once with TensorFlow, the same decoder the pipeline uses, so truncated files are
caught here with their name. Damage in the
middle of a file that leaves header and end marker intact is only caught with
`check_images="decode"` (a full eager decode of every image, slower); otherwise it surfaces
as a `tf.errors.InvalidArgumentError` from the decode op while iterating.

Decompression bombs: before anything else reads an image, its header size is read without
decoding (`image_header.read_image_size`) and checked against `max_image_pixels` (default
`image_header.DEFAULT_MAX_IMAGE_PIXELS`, 100 megapixels); an image over it is a problem of
kind TOO_LARGE_IMAGE and is never decoded, not even by the fallback decode above.
"""

from __future__ import annotations

import hashlib
import os

from retinanet.data.image_header import (DEFAULT_MAX_IMAGE_PIXELS, ImageTooLargeError,
                                         check_image_pixels, pil_size, read_image_size)

# Problem kinds of images, used both in error messages and in the skip counts.
MISSING_IMAGE = "missing image"
CORRUPT_IMAGE = "corrupt image"
TOO_LARGE_IMAGE = "image over the pixel limit"


class ImageProblem(Exception):
    """Raised by probe_image; carries one of the problem kinds and a detail."""

    def __init__(self, kind: str, detail: str):
        super().__init__(f"{kind}: {detail}")
        self.kind = kind
        self.detail = detail


IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp")


def _sniff(head: bytes) -> str | None:
    if head.startswith(b"\xff\xd8\xff"):
        return "jpeg"
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return "png"
    if head[:6] in (b"GIF87a", b"GIF89a"):
        return "gif"
    if head.startswith(b"BM"):
        return "bmp"
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "webp"
    return None


def _ends_complete(image_format: str, tail: bytes) -> bool:
    # Entropy-coded JPEG data escapes 0xFF, so FF D9 near the end can only be the EOI marker.
    if image_format == "jpeg":
        return b"\xff\xd9" in tail
    if image_format == "png":
        return b"IEND" in tail
    if image_format == "gif":
        return tail.rstrip(b"\x00").endswith(b";")
    return False  # BMP and WebP are rare: always fully decoded.


def _header_size(path: str, claimed):
    """(height, width) from the header with PIL, or None where PIL is absent or fails.

    PIL parses more of the header than `read_image_size` (all JPEG markers up to the scan,
    PNG chunk CRCs), so a failure here sends the file to a full decode. `claimed` is the
    size `read_image_size` found, already within the pixel limit: where PIL refuses the
    image as a bomb (a limit raised above PIL's own), that size stands.
    """
    try:
        return pil_size(path)
    except ImageTooLargeError:
        return claimed


def _tf_decode_size(path: str):
    import tensorflow as tf

    try:
        image = tf.io.decode_image(tf.io.read_file(path), channels=3,
                                   expand_animations=False)
    except (tf.errors.InvalidArgumentError, tf.errors.UnknownError) as error:
        message = str(error).split("\n")[0]
        message = message.split("}}")[-1].strip() or "decode failed"
        raise ImageProblem(CORRUPT_IMAGE, f"cannot be decoded: {path} ({message})") from None
    return int(image.shape[0]), int(image.shape[1])


def probe_image(path: str, check_images: str = "header",
                max_image_pixels=DEFAULT_MAX_IMAGE_PIXELS):
    """Checks an image file cheaply and returns its (height, width).

    The header size is checked against `max_image_pixels` before anything decodes the image.

    Args:
        path: the image file.
        check_images: "header" (signature, header and end marker; a full decode where the
            end marker is missing or Pillow cannot parse the header), "decode" (always decode
            fully), or "none" (only that the file exists; returns None).
        max_image_pixels: int or None (no cap), the most pixels (height * width) allowed.

    Raises:
        ImageProblem with kind MISSING_IMAGE, CORRUPT_IMAGE or TOO_LARGE_IMAGE.
    """
    if not os.path.isfile(path):
        raise ImageProblem(MISSING_IMAGE, f"file not found: {path}")
    if check_images == "none":
        return None
    size = os.path.getsize(path)
    if size == 0:
        raise ImageProblem(CORRUPT_IMAGE, f"{path} is empty")
    with open(path, "rb") as file:
        head = file.read(16)
        file.seek(max(0, size - 64))
        tail = file.read()
    image_format = _sniff(head)
    if image_format is None:
        raise ImageProblem(CORRUPT_IMAGE, f"{path} is not a JPEG, PNG, GIF, BMP or WebP file")
    try:
        claimed = read_image_size(path)
        check_image_pixels(*claimed, max_image_pixels, path)
        header = _header_size(path, claimed)
        if header is not None:
            check_image_pixels(*header, max_image_pixels, path)
    except ImageTooLargeError as error:
        raise ImageProblem(TOO_LARGE_IMAGE, str(error)) from None
    except ValueError as error:  # no readable header: nothing to decode safely
        raise ImageProblem(CORRUPT_IMAGE, str(error)) from None
    if check_images == "decode" or header is None or not _ends_complete(image_format, tail):
        decoded = _tf_decode_size(path)
        if header is not None and header != decoded:
            raise ImageProblem(CORRUPT_IMAGE, f"{path}: header says {header[1]}x{header[0]} "
                               f"but decodes to {decoded[1]}x{decoded[0]}")
        return decoded
    return header


def list_images(folder: str):
    """Image files under `folder`, recursively, sorted; paths relative to `folder`."""
    found = []
    for directory, _, names in os.walk(folder):
        for name in names:
            if name.lower().endswith(IMAGE_EXTENSIONS):
                found.append(os.path.relpath(os.path.join(directory, name), folder))
    return sorted(found)


def file_digest(path: str, chunk_size: int = 1 << 20) -> str:
    """The BLAKE2b hex digest of a file's bytes.

    Raises:
        OSError: the file cannot be read.
    """
    digest = hashlib.blake2b(digest_size=20)
    with open(path, "rb") as file:
        while chunk := file.read(chunk_size):
            digest.update(chunk)
    return digest.hexdigest()
