"""Uploaded zips for the app, treated as hostile: bounded entries, bytes and pixels, extracted atomically.

A Space visitor can send any file. The zip is checked from its central directory (entries, total size, names)
before anything is written; every image's size is read from its header before it is decoded, and images are
downscaled as they are extracted, one at a time, so memory stays bounded by one image of `max_image_pixels`.
Extraction goes to a temporary folder that is renamed into place, so a reader never sees a half-extracted folder.

Example:
    >>> limits = UploadLimits(max_bytes=200 * 2**20)
    >>> folder = extract_upload("shapes.zip", "/tmp/session/uploads", limits)
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from PIL import Image

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff"}
IGNORED_NAMES = {".DS_Store", "Thumbs.db", "desktop.ini"}  # what file managers add to folders


class UploadError(ValueError):
    """An upload that cannot be used; the message says what is wrong and what is expected."""


@dataclass(frozen=True)
class UploadLimits:
    max_bytes: int = 200 * 2**20  # total uncompressed size of the images in a zip
    max_entries: int = 10_000  # entries (files and folders) in a zip's central directory
    max_image_pixels: int = 40_000_000  # width x height of one image, read from its header before decoding
    max_side: int = 1024  # images are downscaled so that their longer side is at most this many pixels


def _refuse(name: str, problem: str) -> UploadError:
    return UploadError(f"{name!r} {problem}; upload a .zip of a folder with one sub-folder of images per class")


def _ignored(member: zipfile.ZipInfo) -> bool:
    parts = PurePosixPath(member.filename).parts
    return member.is_dir() or not parts or parts[0] == "__MACOSX" or parts[-1] in IGNORED_NAMES or \
        any(p.startswith(".") and p not in (".", "..") for p in parts)


def _members(archive: zipfile.ZipFile, name: str, limits: UploadLimits) -> list[zipfile.ZipInfo]:
    """The zip's image entries, after checking entries, total size, names and file types from the directory."""
    infos = archive.infolist()
    if len(infos) > limits.max_entries:
        raise _refuse(name, f"has {len(infos)} entries, more than this Space's limit of {limits.max_entries}")
    members = [m for m in infos if not _ignored(m)]
    others = [m.filename for m in members if PurePosixPath(m.filename).suffix.lower() not in IMAGE_SUFFIXES]
    if others:
        raise _refuse(name, f"holds files that are not images ({', '.join(others[:5])}"
                            f"{', ...' if len(others) > 5 else ''}); accepted: {', '.join(sorted(IMAGE_SUFFIXES))}")
    if not members:
        raise _refuse(name, "holds no images")
    total = sum(m.file_size for m in members)
    if total > limits.max_bytes:
        raise _refuse(name, f"unpacks to {total / 2**20:.1f} MB, more than this Space's limit of "
                            f"{limits.max_bytes / 2**20:.0f} MB")
    for m in members:
        path = PurePosixPath(m.filename)
        if path.is_absolute() or ".." in path.parts or "\\" in m.filename:
            raise _refuse(name, f"has an entry outside its folder: {m.filename!r}")
    return members


def _copy_image(archive: zipfile.ZipFile, member: zipfile.ZipInfo, out: Path, name: str,
                limits: UploadLimits) -> None:
    """Decodes one image, refusing it from its header when it is too large, and writes it downscaled."""
    try:
        with archive.open(member) as src, Image.open(src) as image:
            width, height = image.size  # from the header: nothing is decoded yet
            if width * height > limits.max_image_pixels:
                raise _refuse(name, f"holds {member.filename!r} of {width}x{height} = {width * height / 1e6:.0f} "
                                    f"Mpx, more than this Space's limit of {limits.max_image_pixels / 1e6:.0f} Mpx "
                                    "per image")
            image.draft("RGB", (limits.max_side, limits.max_side))  # JPEG: decode at a reduced scale directly
            image.thumbnail((limits.max_side, limits.max_side))  # decodes, then downscales (aspect kept)
            image.save(out, format=image.format if image.format in ("PNG", "JPEG", "WEBP") else "PNG")
    except UploadError:
        raise
    except zipfile.BadZipFile as err:
        raise _refuse(name, f"is damaged at {member.filename!r} ({err})") from None
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as err:
        raise _refuse(name, f"holds {member.filename!r}, which is not a readable image ({err})") from None


def extract_upload(zip_path: str | Path, dest_root: str | Path, limits: UploadLimits) -> Path:
    """Unpacks an uploaded zip of an image folder (one sub-folder per class) and returns the folder to load.

    The folder is named by the zip's content hash, so the same zip uploaded again is reused. It appears complete or
    not at all: extraction writes to a temporary sibling that is renamed into place.

    Args:
        zip_path: the uploaded file.
        dest_root: where extracted folders live (the session's upload directory).
        limits: entries, bytes, pixels and image size allowed.

    Raises:
        UploadError: not a zip, damaged, too many entries, too large, non-image files, an image too large or
            unreadable, an entry outside the folder.
    """
    zip_path, dest_root = Path(zip_path), Path(dest_root)
    name = zip_path.name
    digest = hashlib.sha256()
    with open(zip_path, "rb") as f:
        for block in iter(lambda: f.read(2**20), b""):
            digest.update(block)
    target = dest_root / digest.hexdigest()[:16]
    if not target.is_dir():
        dest_root.mkdir(parents=True, exist_ok=True)
        partial = Path(tempfile.mkdtemp(prefix=".partial-", dir=dest_root))
        try:
            try:
                archive = zipfile.ZipFile(zip_path)
            except (zipfile.BadZipFile, OSError) as err:
                raise _refuse(name, f"is not a readable zip file ({err})") from None
            with archive:
                for member in _members(archive, name, limits):
                    out = partial / member.filename
                    out.parent.mkdir(parents=True, exist_ok=True)
                    _copy_image(archive, member, out, name, limits)
            try:
                os.rename(partial, target)
            except OSError:  # another event extracted the same zip first: theirs is complete, keep it
                if not target.is_dir():
                    raise
        finally:
            shutil.rmtree(partial, ignore_errors=True)
    return _dataset_root(target)


def _dataset_root(root: Path) -> Path:
    # A zip of "mydata/" holds one folder whose entries are all class (or split) folders: load from inside it.
    while True:
        entries = [p for p in root.iterdir() if not p.name.startswith(".")]
        if len(entries) == 1 and entries[0].is_dir() and all(p.is_dir() for p in entries[0].iterdir()
                                                              if not p.name.startswith(".")):
            root = entries[0]
        else:
            return root
