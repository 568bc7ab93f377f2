"""Uploaded zips for the app, treated as hostile: bounded entries, bytes and pixels, extracted atomically.

A Space visitor can send any file, and nothing a zip declares about itself is trusted. Before Python parses the zip's
directory, its end record says how many entries the directory lists and how many bytes it takes, and either over
its limit refuses the zip. Then every entry is checked from the directory (names, types, declared sizes), and every
image is copied through a byte budget: inflated a chunk at a time and stopped at its declared size and at the
per-image limit, whatever the image decoder later asks for. Its size in pixels is read from its header before it is
decoded, and it is downscaled as it is extracted, one image at a time, so memory stays bounded by one decoded image
of `max_image_pixels`. Extraction goes to a temporary folder that is renamed into place, so a reader never sees a
half-extracted folder.

Example:
    >>> limits = UploadLimits(max_bytes=200 * 2**20)
    >>> folder = extract_upload("shapes.zip", "/tmp/session/uploads", limits)
"""

from __future__ import annotations

import hashlib
import io
import os
import re
import shutil
import struct
import tempfile
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from PIL import Image, ImageOps, PngImagePlugin

# The format an image is saved in, from its name's suffix (a GIF stays a GIF, a .jpg holding PNG data becomes JPEG).
FORMATS = {".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG", ".webp": "WEBP", ".bmp": "BMP", ".gif": "GIF",
           ".tif": "TIFF", ".tiff": "TIFF"}
IMAGE_SUFFIXES = set(FORMATS)
# What PIL may decode, whatever the bytes look like (JPEG includes MPO; never EPS, which runs Ghostscript).
DECODERS = ["PNG", "JPEG", "WEBP", "BMP", "GIF", "TIFF"]
IGNORED_NAMES = {".DS_Store", "Thumbs.db", "desktop.ini"}  # what file managers add to folders
MAX_NAME_BYTES = 255  # one folder or file name: what Linux file systems allow
CHUNK = 2**16  # bytes read, and at most inflated, at a time
SPOOL_BYTES = 2**20  # an image's bytes are held in memory up to this, then in a temporary file on disk
_END = struct.Struct("<4s4H2LH")  # end of central directory record (22 bytes, then the comment)
_END64_LOCATOR = struct.Struct("<4sLQL")  # zip64 end of central directory locator (20 bytes)
_END64 = struct.Struct("<4sQ2H2L4Q")  # zip64 end of central directory record (56 bytes)
_LOCAL = struct.Struct("<4s5H3L2H")  # local file header (30 bytes, then the name and the extra field)


class UploadError(ValueError):
    """An upload that cannot be used; the message says what is wrong and what is expected."""


@dataclass(frozen=True)
class UploadLimits:
    max_bytes: int = 200 * 2**20  # total uncompressed size of the images in a zip
    max_entries: int = 10_000  # entries (files and folders) in a zip's central directory
    max_image_pixels: int = 40_000_000  # width x height of one image, read from its header before decoding
    max_side: int = 1024  # images are downscaled so that their longer side is at most this many pixels
    max_image_bytes: int = 64 * 2**20  # one image file, as unpacked (the zip's claim is checked while unpacking)

    @property
    def max_directory_bytes(self) -> int:
        """The zip's central directory: 512 bytes an entry on average (an entry with a 300-character path is ~350),
        so Python never parses more than a few MB of it."""
        return self.max_entries * 512


def apply_pil_limits(limits: UploadLimits) -> None:
    """Lowers PIL's own limits in this process to the Space's: pixels (PIL refuses twice this outright) and PNG text
    chunks (1 MB in all instead of 64 MB). For the app's process; a library user's PIL settings are left alone."""
    Image.MAX_IMAGE_PIXELS = limits.max_image_pixels
    PngImagePlugin.MAX_TEXT_CHUNK = 256 * 2**10
    PngImagePlugin.MAX_TEXT_MEMORY = 2**20


HOW = "upload a .zip of a folder with one sub-folder of images per class"


def _refuse(name: str, problem: str) -> UploadError:
    return UploadError(f"{name!r} {problem}; {HOW}")


def _mb(n: int) -> str:
    return f"{n / 2**20:.1f} MB"


# --- 1. the directory, from the zip's end record, before Python parses it ---------------------------------------------

def _directory_extent(f, name: str) -> tuple[int, int]:
    """(entries, bytes) of the central directory as the end record states them, read as `zipfile` finds the record
    (the last 22 bytes, else the last signature in the final 64 KB of comment; zip64 through its locator)."""
    f.seek(0, os.SEEK_END)
    size = f.tell()
    start = max(size - _END.size - 2**16, 0)
    f.seek(start)
    tail = f.read()
    at = len(tail) - _END.size if tail[-_END.size:][:4] == b"PK\x05\x06" and tail[-2:] == b"\0\0" else \
        tail.rfind(b"PK\x05\x06")
    if at < 0 or len(tail) - at < _END.size:
        raise _refuse(name, "is not a readable zip file (no end of central directory record)")
    _, _, _, _, entries, directory, _, _ = _END.unpack_from(tail, at)
    end = start + at
    if end >= _END64_LOCATOR.size + _END64.size:
        f.seek(end - _END64_LOCATOR.size)
        if f.read(4) == b"PK\x06\x07":  # zip64: the locator, then the record right before it (where zipfile reads)
            f.seek(end - _END64_LOCATOR.size - _END64.size)
            record = f.read(_END64.size)
            if record[:4] == b"PK\x06\x06":
                fields = _END64.unpack(record)
                entries, directory = fields[7], fields[8]
    return entries, directory


def _check_directory(f, name: str, limits: UploadLimits) -> None:
    entries, directory = _directory_extent(f, name)
    if entries > limits.max_entries:
        raise _refuse(name, f"has {entries} entries, more than this Space's limit of {limits.max_entries}")
    if directory > limits.max_directory_bytes:
        raise _refuse(name, f"has a directory of {_mb(directory)} for {entries} entries, more than this Space's "
                            f"limit of {_mb(limits.max_directory_bytes)} (are its names very long?)")


# --- 2. the entries, from the directory -------------------------------------------------------------------------------

def _ignored(member: zipfile.ZipInfo) -> bool:
    parts = PurePosixPath(member.filename).parts
    return member.is_dir() or not parts or parts[0] == "__MACOSX" or parts[-1] in IGNORED_NAMES or \
        any(p.startswith(".") and p not in (".", "..") for p in parts)


def _members(archive: zipfile.ZipFile, name: str, limits: UploadLimits) -> list[zipfile.ZipInfo]:
    """The zip's image entries, after checking entries, sizes, names, file types and layout from the directory."""
    infos = archive.infolist()
    if len(infos) > limits.max_entries:  # the end record may understate the count: this is what was parsed
        raise _refuse(name, f"has {len(infos)} entries, more than this Space's limit of {limits.max_entries}")
    members = [m for m in infos if not _ignored(m)]
    for m in members:
        path = PurePosixPath(m.filename)
        if path.is_absolute() or ".." in path.parts or "\\" in m.filename:
            raise _refuse(name, f"has an entry outside its folder: {m.filename!r}")
        long = [p for p in path.parts if len(p.encode()) > MAX_NAME_BYTES]
        if long:
            raise _refuse(name, f"has a name of {len(long[0])} characters ({long[0][:40]!r}...), more than the "
                                f"{MAX_NAME_BYTES} a folder or file name may have; rename it")
    paths = [PurePosixPath(m.filename) for m in members]
    _check_names(name, paths)
    others = [m.filename for m in members if PurePosixPath(m.filename).suffix.lower() not in IMAGE_SUFFIXES]
    if others:
        raise _refuse(name, f"holds files that are not images ({', '.join(others[:5])}"
                            f"{', ...' if len(others) > 5 else ''}); accepted: {', '.join(sorted(IMAGE_SUFFIXES))}")
    if not members:
        raise _refuse(name, "holds no images")
    if any(m.flag_bits & 0x1 for m in members):
        encrypted = next(m.filename for m in members if m.flag_bits & 0x1)
        raise _refuse(name, f"is encrypted ({encrypted!r}); zip it without a password")
    odd = [m for m in members if m.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED)]
    if odd:
        raise _refuse(name, f"compresses {odd[0].filename!r} with method {odd[0].compress_type}; only stored and "
                            "deflated entries (what every zip tool writes by default) are read")
    big = [m for m in members if m.file_size > limits.max_image_bytes]
    if big:
        raise _refuse(name, f"holds {big[0].filename!r} of {_mb(big[0].file_size)}, more than this Space's limit of "
                            f"{_mb(limits.max_image_bytes)} per image")
    total = sum(m.file_size for m in members)
    if total > limits.max_bytes:
        raise _refuse(name, f"unpacks to {total / 2**20:.1f} MB, more than this Space's limit of "
                            f"{limits.max_bytes / 2**20:.0f} MB")
    _check_classes(name, paths)
    return members


def _check_names(name: str, paths: list[PurePosixPath]) -> None:
    """Every name once, and no name both a file and a folder (either would fail on disk half-way through)."""
    files = set()
    for path in paths:
        if path in files:
            raise _refuse(name, f"lists {str(path)!r} twice")
        files.add(path)
    folders = {parent for path in paths for parent in path.parents}
    clash = sorted(files & folders)
    if clash:
        inside = next(p for p in paths if clash[0] in p.parents)
        raise _refuse(name, f"has {str(clash[0])!r} both as a file and as a folder (holding {str(inside)!r}); "
                            "rename one of them")


def _check_classes(name: str, paths: list[PurePosixPath]) -> None:
    """Images all at one depth, in at least two class folders (what an image folder's labels need)."""
    if len({len(p.parts) for p in paths}) > 1:
        shallow, deep = min(paths, key=lambda p: len(p.parts)), max(paths, key=lambda p: len(p.parts))
        raise _refuse(name, f"has images at different depths ({str(shallow)!r} and {str(deep)!r}); put every image "
                            "in its class folder")
    classes = sorted({p.parent.name for p in paths})
    if len(classes) < 2:
        where = f"images of one class only ({classes[0]!r})" if classes[0] else "its images outside class folders"
        raise _refuse(name, f"has {where}; a zip needs at least two class folders, e.g. mydata/cat/1.jpg and "
                            "mydata/dog/1.jpg")


# --- 3. one image: its bytes through the budget, then decoded, oriented, downscaled, saved ---------------------------

def _copy_entry(f, member: zipfile.ZipInfo, out, name: str) -> None:
    """Copies an entry's bytes to `out`, inflating at most CHUNK bytes at a time and refusing the entry as soon as it
    unpacks to more than its declared size (already checked against the per-image limit) or fails its checksum."""
    def damaged(problem: str) -> UploadError:
        return _refuse(name, f"is damaged or forged at {member.filename!r} ({problem})")

    f.seek(member.header_offset)
    header = f.read(_LOCAL.size)
    if len(header) < _LOCAL.size or header[:4] != b"PK\x03\x04":
        raise damaged("no local header where the directory points")
    name_length, extra_length = _LOCAL.unpack(header)[-2:]
    f.seek(member.header_offset + _LOCAL.size + name_length + extra_length)
    inflater = zlib.decompressobj(-zlib.MAX_WBITS) if member.compress_type == zipfile.ZIP_DEFLATED else None
    left, size, crc, pending, more = member.compress_size, 0, 0, b"", False
    while True:
        if not pending and not more:  # the next compressed chunk, never past the entry's declared compressed size
            if left <= 0:
                break
            pending = f.read(min(CHUNK, left))
            left -= len(pending)
            if not pending:
                raise damaged("the file ends inside it")
        data = inflater.decompress(pending, CHUNK) if inflater else pending
        pending, more = (inflater.unconsumed_tail, len(data) == CHUNK) if inflater else (b"", False)
        size += len(data)
        if size > member.file_size:
            raise damaged(f"it unpacks to more than the {member.file_size} bytes its header declares")
        crc = zlib.crc32(data, crc)
        out.write(data)
        if inflater and inflater.eof:
            break
    if size != member.file_size or (inflater and not inflater.eof):
        raise damaged(f"it unpacks to {size} bytes, not the {member.file_size} its header declares")
    if crc != member.CRC:
        raise damaged("its checksum does not match")


class _Capped(io.RawIOBase):
    """A read-only view of a file that never returns more than is there, however much a decoder asks for (PIL's
    PNG plugin reads the rest of a declared chunk in one call)."""

    def __init__(self, f):
        self.f = f
        self.size = f.seek(0, os.SEEK_END)
        f.seek(0)

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        return self.f.seek(offset, whence)

    def tell(self) -> int:
        return self.f.tell()

    def read(self, n: int = -1) -> bytes:
        left = max(self.size - self.f.tell(), 0)
        return self.f.read(left if n is None or n < 0 else min(n, left))

    def readinto(self, buffer) -> int:
        data = self.read(len(buffer))
        buffer[:len(data)] = data
        return len(data)


def _too_large(name: str, member: str, pixels: int, limits: UploadLimits, size: str = "") -> UploadError:
    return _refuse(name, f"holds {member!r} of {size}{pixels / 1e6:.0f} Mpx, more than this Space's limit of "
                         f"{limits.max_image_pixels / 1e6:.0f} Mpx per image")


def _savable(image: Image.Image, fmt: str) -> Image.Image:
    """The image in a mode `fmt` can hold (JPEG has no alpha or palette; GIF and BMP no 16-bit or float)."""
    allowed = {"JPEG": ("L", "RGB", "CMYK"), "GIF": ("1", "L", "P", "RGB", "RGBA"),
               "BMP": ("1", "L", "P", "RGB", "RGBA")}.get(fmt)
    if allowed is None or image.mode in allowed:
        return image
    return image.convert("RGBA" if "A" in image.getbands() and "RGBA" in allowed else "RGB")


def _copy_image(f, member: zipfile.ZipInfo, out: Path, name: str, limits: UploadLimits) -> None:
    """Copies one image through the byte budget, refuses it from its header when it is too large, then writes it
    upright (EXIF orientation), downscaled, its first frame only, in the format its name says."""
    with tempfile.SpooledTemporaryFile(SPOOL_BYTES, dir=out.parent) as raw:
        _copy_entry(f, member, raw, name)
        try:
            with Image.open(_Capped(raw), formats=DECODERS) as image:
                width, height = image.size  # from the header: nothing is decoded yet
                if width * height > limits.max_image_pixels:
                    raise _too_large(name, member.filename, width * height, limits, f"{width}x{height} = ")
                image.draft("RGB", (limits.max_side, limits.max_side))  # JPEG: decode at a reduced scale directly
                image.thumbnail((limits.max_side, limits.max_side))  # decodes the first frame, then downscales
                upright = ImageOps.exif_transpose(image)  # the EXIF orientation, applied (and dropped from the copy)
        except Image.DecompressionBombError as err:  # PIL's own limit (twice the Space's): same message as ours
            pixels = re.search(r"\((\d+) pixels\)", str(err))
            raise _too_large(name, member.filename, int(pixels[1]) if pixels else 2 * limits.max_image_pixels,
                             limits) from None
        except Image.UnidentifiedImageError:
            raise _refuse(name, f"holds {member.filename!r}, which is not an image in a format this Space reads "
                                f"({', '.join(sorted(IMAGE_SUFFIXES))})") from None
        except ValueError as err:
            if "text chunk" in str(err) or "MAX_TEXT" in str(err):
                raise _refuse(name, f"holds {member.filename!r} with more text metadata than this Space reads; "
                                    "save it without metadata") from None
            raise _refuse(name, f"holds {member.filename!r}, which is not a readable image ({err})") from None
        except (OSError, SyntaxError, EOFError, struct.error) as err:
            raise _refuse(name, f"holds {member.filename!r}, which is not a readable image ({err})") from None
    fmt = FORMATS[out.suffix.lower()]
    _savable(upright, fmt).save(out, format=fmt)


# --- the whole zip ------------------------------------------------------------------------------------------------

def extract_upload(zip_path: str | Path, dest_root: str | Path, limits: UploadLimits, *,
                   folder_name: str | None = None, display_name: str | None = None) -> Path:
    """Unpacks an uploaded zip of an image folder (one sub-folder per class) and returns the folder to load.

    The folder is named by the zip's content hash (or `folder_name`), so the same zip uploaded again is reused. It
    appears complete or not at all: extraction writes to a temporary sibling that is renamed into place.

    Args:
        zip_path: the uploaded file.
        dest_root: where extracted folders live (the session's upload directory).
        limits: entries, bytes, pixels and image size allowed.
        folder_name: the extracted folder's name under `dest_root`; an existing one is reused without reading the zip.
        display_name: how messages name the zip (default: its file name; never its path on the server).

    Raises:
        UploadError: not a zip, damaged or forged, too many entries, too large, non-image files, clashing or overlong
            names, fewer than two class folders, an image too large or unreadable, an entry outside the folder.
    """
    zip_path, dest_root = Path(zip_path), Path(dest_root)
    name = display_name or zip_path.name
    if folder_name is None:
        digest = hashlib.sha256()
        with _open(zip_path, name) as f:
            for block in iter(lambda: f.read(2**20), b""):
                digest.update(block)
        folder_name = digest.hexdigest()[:16]
    target = dest_root / folder_name
    if not target.is_dir():
        dest_root.mkdir(parents=True, exist_ok=True)
        partial = Path(tempfile.mkdtemp(prefix=".partial-", dir=dest_root))
        try:
            with _open(zip_path, name) as f:
                _check_directory(f, name, limits)  # before zipfile parses the directory
                try:
                    archive = zipfile.ZipFile(f)
                except (zipfile.BadZipFile, OSError, ValueError, struct.error) as err:
                    raise _refuse(name, f"is not a readable zip file ({err})") from None
                with archive:
                    for member in _members(archive, name, limits):
                        out = partial / member.filename
                        try:
                            out.parent.mkdir(parents=True, exist_ok=True)
                            _copy_image(f, member, out, name, limits)
                        except OSError as err:  # the file system's refusal, without the server's path
                            raise _refuse(name, f"could not be unpacked at {member.filename!r} "
                                                f"({err.strerror or type(err).__name__})") from None
            try:
                os.rename(partial, target)
            except OSError:  # another event extracted the same zip first: theirs is complete, keep it
                if not target.is_dir():
                    raise
        finally:
            shutil.rmtree(partial, ignore_errors=True)
    return _dataset_root(target)


def _open(zip_path: Path, name: str):
    try:
        return open(zip_path, "rb")
    except OSError as err:
        raise UploadError(f"{name!r} cannot be read ({err.strerror or type(err).__name__}); upload it again") from None


def _dataset_root(root: Path) -> Path:
    # A zip of "mydata/" holds one folder whose entries are all class (or split) folders: load from inside it.
    while True:
        entries = [p for p in root.iterdir() if not p.name.startswith(".")]
        if len(entries) == 1 and entries[0].is_dir() and all(p.is_dir() for p in entries[0].iterdir()
                                                              if not p.name.startswith(".")):
            root = entries[0]
        else:
            return root
