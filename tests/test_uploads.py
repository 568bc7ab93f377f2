"""Uploaded zips as a hostile visitor sends them: bombs, forged headers, damage, floods of entries, bad layouts,
races (vldd.app.uploads); and through gradio_client against the app in its own process, with its peak memory."""

from __future__ import annotations

import io
import json
import os
import re
import struct
import subprocess
import sys
import threading
import zipfile
import zlib
from pathlib import Path

import pytest
from PIL import Image

from vldd.app import sources
from vldd.app.settings import load_space_config
from vldd.app.uploads import HOW, UploadError, UploadLimits, extract_upload

ROOT = Path(__file__).resolve().parents[1]
LIMITS = UploadLimits(max_bytes=10**6, max_entries=100, max_image_pixels=40_000_000, max_side=16)


def shapes_zip(path: Path, folder: str = "shapes", size: int = 32) -> Path:
    with zipfile.ZipFile(path, "w") as z:
        for name in ("red", "blue"):
            for i in range(3):
                buffer = path.with_suffix(".tmp.png")
                Image.new("RGB", (size, size // 2), name).save(buffer)
                z.write(buffer, f"{folder}/{name}/{i}.png")
        z.writestr(f"{folder}/.DS_Store", b"\0")  # what file managers add: ignored
        z.writestr("__MACOSX/shapes/._red", b"\0")
    return path


def bomb_png(width: int, height: int) -> bytes:
    """A grayscale PNG of width x height black pixels, built without ever holding them: ~0.2 MB for 165 Mpx."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    packer, row, parts = zlib.compressobj(9), b"\0" * (width + 1), []
    for _ in range(height):
        parts.append(packer.compress(row))
    parts.append(packer.flush())
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", b"".join(parts)) + chunk(b"IEND", b"")


def png_chunk(kind: bytes, data: bytes, length: int | None = None) -> bytes:
    """A PNG chunk; `length` overrides the declared data length (a lie)."""
    declared = len(data) if length is None else length
    return struct.pack(">I", declared) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def two_class_zip(path: Path, entries: dict[str, bytes]) -> Path:
    """A zip of `entries`, plus one small image in a second class folder so that the layout is valid."""
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8), "blue").save(buffer, format="PNG")
    with zipfile.ZipFile(path, "w") as z:
        for name, data in {**entries, "d/other/0.png": buffer.getvalue()}.items():
            z.writestr(name, data)
    return path


def forged_zip(path: Path, entries: list[tuple[str, bytes, int, int, int]], *, count: int | None = None,
               zip64: bool = False) -> Path:
    """A zip written field by field, so its headers can lie. Entries: (name, stored bytes (raw deflate for method 8),
    method, declared uncompressed size, declared CRC). `count` overrides the entry count of the end record."""
    body, directory = bytearray(), bytearray()
    for name, payload, method, size, crc in entries:
        encoded = name.encode()
        directory += struct.pack("<4s6H3L5H2L", b"PK\x01\x02", 20, 20, 0, method, 0, 0, crc, len(payload), size,
                                 len(encoded), 0, 0, 0, 0, 0, len(body)) + encoded
        body += struct.pack("<4s5H3L2H", b"PK\x03\x04", 20, 0, method, 0, 0, crc, len(payload), size, len(encoded),
                            0) + encoded + payload
    return finish_zip(path, bytes(body), bytes(directory), len(entries) if count is None else count, zip64)


def finish_zip(path: Path, body: bytes, directory: bytes, count: int, zip64: bool) -> Path:
    with open(path, "wb") as f:
        f.write(body)
        f.write(directory)
        if zip64:  # the zip64 end record and its locator, then an end record that defers to them
            at = len(body) + len(directory)
            f.write(struct.pack("<4sQ2H2L4Q", b"PK\x06\x06", 44, 45, 45, 0, 0, count, count, len(directory),
                                len(body)))
            f.write(struct.pack("<4sLQL", b"PK\x06\x07", 0, at, 1))
            f.write(struct.pack("<4s4H2LH", b"PK\x05\x06", 0, 0, 0xFFFF, 0xFFFF, 0xFFFFFFFF, 0xFFFFFFFF, 0))
        else:
            f.write(struct.pack("<4s4H2LH", b"PK\x05\x06", 0, 0, count, count, len(directory), len(body), 0))
    return path


def flood_zip(path: Path, entries: int = 1_000_000) -> Path:
    """A zip whose central directory lists `entries` empty images (all pointing at one local header): ~61 MB."""
    first = b"d/c/0000000.png"
    body = struct.pack("<4s5H3L2H", b"PK\x03\x04", 20, 0, 0, 0, 0, 0, 0, 0, len(first), 0) + first
    record = struct.Struct("<4s6H3L5H2L")
    directory = b"".join(record.pack(b"PK\x01\x02", 20, 20, 0, 0, 0, 0, 0, 0, 0, 15, 0, 0, 0, 0, 0, 0)
                         + b"d/c/%07d.png" % i for i in range(entries))
    return finish_zip(path, body, directory, entries, zip64=entries > 0xFFFF)


def understated_bomb(path: Path, declared: int = 2**20, inflated: int = 2**31) -> Path:
    """The hostile zip of issue 18: one entry declares `declared` bytes and inflates to `inflated` (~1000:1, so the
    file is ~inflated/1000 bytes); the PNG in it is 64x64 and declares an IDAT of `inflated` bytes (after its image
    data, zeros). Its CRC is that of the declared part, so `zipfile` would hand the declared bytes over without
    complaint. Built without ever holding the inflated bytes: blocks of zeros deflated once and repeated."""
    image = zlib.compress(b"\0" * 65 * 64)  # 64 rows of a filter byte and 64 black pixels
    head = b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", struct.pack(">IIBBBBB", 64, 64, 8, 0, 0, 0, 0)) + \
        struct.pack(">I", inflated - 100) + b"IDAT" + image
    block = 2**20
    blocks = (inflated - len(head)) // block
    packer = zlib.compressobj(9, zlib.DEFLATED, -15)
    first = packer.compress(head) + packer.flush(zlib.Z_FULL_FLUSH)
    zeros = packer.compress(bytes(block)) + packer.flush(zlib.Z_FULL_FLUSH)  # the same bytes for every block
    assert packer.compress(bytes(block)) + packer.flush(zlib.Z_FULL_FLUSH) == zeros
    stream = first + zeros * (blocks - 1) + packer.flush()
    crc = zlib.crc32(bytes(declared - len(head)), zlib.crc32(head))
    return forged_zip(path, [("d/a/bomb.png", stream, 8, declared, crc),
                             ("d/b/fine.png", *stored(png_image("blue")))])


def png_image(color: str, size: tuple[int, int] = (8, 8), **save) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, color).save(buffer, format="PNG", **save)
    return buffer.getvalue()


def stored(data: bytes) -> tuple[bytes, int, int, int]:
    return data, 0, len(data), zlib.crc32(data)


def test_a_zip_becomes_an_image_folder_downscaled_and_reused(tmp_path):
    archive = shapes_zip(tmp_path / "shapes.zip")
    folder = extract_upload(archive, tmp_path / "uploads", LIMITS)
    assert folder.name == "shapes" and sorted(p.name for p in folder.iterdir()) == ["blue", "red"]
    assert Image.open(folder / "red" / "0.png").size == (16, 8)  # longer side downscaled to max_side, aspect kept
    assert extract_upload(archive, tmp_path / "uploads", LIMITS) == folder  # same content: reused
    assert [p.name for p in (tmp_path / "uploads").iterdir()] == [folder.parent.name]  # no partial folder left
    view = sources.dataset_overview(str(folder), classes=None, images_per_class=2, num_default=5, preview_per_class=1)
    assert view.class_names == ["blue", "red"] and [row[:3] for row in view.counts] == [["blue", 3, 2], ["red", 3, 2]]


def test_decompression_bomb_png_in_a_zip_is_refused_before_decoding_in_bounded_memory(tmp_path):
    archive = tmp_path / "bomb.zip"
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("shapes/red/bomb.png", bomb_png(12_850, 12_850))  # 165 Mpx: ~500 MB as RGB once decoded
        z.writestr("shapes/blue/fine.png", png_image("blue"))
    assert archive.stat().st_size < 1_000_000
    # In a fresh process, so that its peak memory is this extraction's alone.
    script = f"""
import json, resource, sys
from vldd.app.uploads import HOW, UploadError, UploadLimits, extract_upload
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
try:
    extract_upload({str(archive)!r}, {str(tmp_path / "uploads")!r}, UploadLimits(max_bytes=2**30))
    message = None
except UploadError as err:
    message = str(err)
after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({{"message": message, "grew_kb": after - before}}))
"""
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=ROOT, timeout=120,
                         env={**__import__("os").environ, "PYTHONPATH": str(ROOT)})
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert "'shapes/red/bomb.png' of 12850x12850 = 165 Mpx, more than this Space's limit of 40 Mpx" in result["message"]
    assert result["grew_kb"] < 60_000, result  # decoding it would take > 160 MB
    assert not any((tmp_path / "uploads").iterdir())  # nothing kept


def test_pils_own_limit_is_lowered_by_the_app(tmp_path):
    from PIL import PngImagePlugin

    from vldd.app.runtime import AppSettings
    from vldd.app.ui import build_demo

    space = load_space_config(ROOT / "spaces_config.yaml")
    old = Image.MAX_IMAGE_PIXELS, PngImagePlugin.MAX_TEXT_CHUNK, PngImagePlugin.MAX_TEXT_MEMORY
    try:
        build_demo(AppSettings(space=space, root=tmp_path))
        assert Image.MAX_IMAGE_PIXELS == space.limits.max_image_pixels == 40_000_000
        assert (PngImagePlugin.MAX_TEXT_CHUNK, PngImagePlugin.MAX_TEXT_MEMORY) == (2**18, 2**20)
    finally:
        Image.MAX_IMAGE_PIXELS, PngImagePlugin.MAX_TEXT_CHUNK, PngImagePlugin.MAX_TEXT_MEMORY = old


def test_damaged_and_malformed_zips_get_clear_messages(tmp_path):
    whole = shapes_zip(tmp_path / "shapes.zip").read_bytes()
    (tmp_path / "truncated.zip").write_bytes(whole[: len(whole) // 2])
    with pytest.raises(UploadError, match=r"'truncated.zip' is not a readable zip file \(no end of central directory record\); "
                                          "upload a .zip of a folder with one sub-folder of images per class"):
        extract_upload(tmp_path / "truncated.zip", tmp_path / "uploads", LIMITS)
    (tmp_path / "not.zip").write_text("plain text")
    with pytest.raises(UploadError, match="'not.zip' is not a readable zip file"):
        extract_upload(tmp_path / "not.zip", tmp_path / "uploads", LIMITS)

    def one(name: str, entries: dict) -> Path:
        path = tmp_path / name
        with zipfile.ZipFile(path, "w") as z:
            for entry, data in entries.items():
                z.writestr(entry, data)
        return path

    png = (tmp_path / "shapes.tmp.png").read_bytes()
    cases = {
        "text.zip": ({"d/a/x.png": png, "d/notes.txt": "hi", "d/data.csv": "1"},
                     r"holds files that are not images \(d/notes.txt, d/data.csv\)"),
        "fake.zip": ({"d/a/x.png": b"not a png at all", "d/b/y.png": png},
                     r"holds 'd/a/x.png', which is not an image in a format this Space reads"),
        "evil.zip": ({"../outside.png": png}, "has an entry outside its folder: '../outside.png'"),
        "empty.zip": ({"d/.DS_Store": b"\0"}, "holds no images"),
    }
    for name, (entries, message) in cases.items():
        with pytest.raises(UploadError, match=message):
            extract_upload(one(name, entries), tmp_path / "uploads", LIMITS)
    with pytest.raises(UploadError, match=r"unpacks to 2.0 MB, more than this Space's limit of 1 MB"):
        extract_upload(one("big.zip", {"d/a/x.png": png + b"\0" * 2 * 2**20, "d/b/y.png": png}), tmp_path / "uploads",
                       UploadLimits(max_bytes=10**6, max_image_bytes=4 * 2**20))
    # A CRC error found while reading a member (the directory itself is intact).
    damaged = bytearray(whole)
    at = damaged.find(b"IDAT") + 8
    damaged[at:at + 4] = bytes(4)
    (tmp_path / "crc.zip").write_bytes(bytes(damaged))
    with pytest.raises(UploadError, match=r"'crc.zip' is damaged or forged at 'shapes/red/0.png' \(its checksum does "
                                          r"not match\)"):
        extract_upload(tmp_path / "crc.zip", tmp_path / "uploads", LIMITS)
    assert not any((tmp_path / "uploads").iterdir())  # every refusal leaves nothing behind


def test_a_zip_with_100k_entries_is_refused_from_its_directory(tmp_path):
    archive = tmp_path / "flood.zip"
    with zipfile.ZipFile(archive, "w") as z:
        for i in range(100_000):
            z.writestr(zipfile.ZipInfo(f"d/c/{i}.png"), b"")
    with pytest.raises(UploadError, match="'flood.zip' has 100000 entries, more than this Space's limit of 10000"):
        extract_upload(archive, tmp_path / "uploads", UploadLimits())
    assert not any((tmp_path / "uploads").iterdir())


def test_two_events_racing_on_one_upload_see_a_complete_folder(tmp_path):
    archive = shapes_zip(tmp_path / "shapes.zip")
    results, errors, start = [], [], threading.Barrier(4)

    def load():
        start.wait()
        try:
            results.append(extract_upload(archive, tmp_path / "uploads", LIMITS))
        except Exception as err:  # noqa: BLE001  (any error fails the test below)
            errors.append(err)

    threads = [threading.Thread(target=load) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and len(set(results)) == 1
    folder = results[0]
    assert sorted(str(p.relative_to(folder)) for p in folder.rglob("*.png")) == \
        [f"{c}/{i}.png" for c in ("blue", "red") for i in range(3)]
    assert [p.name for p in (tmp_path / "uploads").iterdir()] == [folder.parent.name]  # no partial copies


def test_one_session_runs_one_event_at_a_time(tmp_path):
    from types import SimpleNamespace

    from gradio import Error

    from vldd.app.handlers import Handlers
    from vldd.app.runtime import AppSettings

    settings = AppSettings(space=load_space_config(ROOT / "spaces_config.yaml"), root=tmp_path)
    handlers = Handlers(settings)
    request = SimpleNamespace(session_hash="visitor")
    archive = shapes_zip(tmp_path / "shapes.zip")
    with settings.sessions.lock("visitor"):  # a run of this session is in progress
        with pytest.raises(Error, match="This session is busy with another run or upload"):
            handlers.load_dataset("sample", None, "train", str(archive), [], 2, request=request)
        with pytest.raises(Error, match="This session is busy"):
            next(handlers.generate("sample", None, "train", None, ["circle"], "tiny", 1, 2, request=request))
    assert not settings.sessions.upload_dir("visitor").exists()  # the refused upload was not extracted
    other = SimpleNamespace(session_hash="someone-else")
    update, *_ = handlers.load_dataset("sample", None, "train", str(archive), [], 2, request=other)
    assert update["value"] == ["blue", "red"]  # another session is not held up


# --- sizes the zip declares are not trusted ----------------------------------------------------------------------

def run_isolated(code: str) -> dict:
    """Runs `code` (which sets `result`) in a fresh Python, so that its peak memory is its own; adds `grew_mb`."""
    script = f"""
import json, resource
from vldd.app.uploads import HOW, UploadError, UploadLimits, extract_upload
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
{code}
result["grew_mb"] = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
print(json.dumps(result))
"""
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=ROOT, timeout=300,
                         env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_an_entry_that_inflates_past_its_declared_size_is_refused_in_bounded_memory(tmp_path):
    archive = understated_bomb(tmp_path / "bomb.zip")  # 1 MB declared, 2 GB inflated, CRC of the declared part
    assert archive.stat().st_size < 3 * 2**20
    with zipfile.ZipFile(archive) as z:  # what Python's zipfile would hand over: the declared part, checksum fine
        with z.open("d/a/bomb.png") as f:
            assert len(f.read(2**16)) == 2**16 and z.getinfo("d/a/bomb.png").file_size == 2**20
    result = run_isolated(f"""
try:
    extract_upload({str(archive)!r}, {str(tmp_path / "uploads")!r}, UploadLimits())
    result = {{"message": None}}
except UploadError as err:
    result = {{"message": str(err)}}
""")
    assert result["message"] == ("'bomb.zip' is damaged or forged at 'd/a/bomb.png' (it unpacks to more than the "
                                 f"1048576 bytes its header declares); {HOW}")
    assert result["grew_mb"] < 50, result  # the old path inflated all 2 GB
    assert not any((tmp_path / "uploads").iterdir())


def test_a_png_declaring_a_huge_chunk_reads_only_the_bytes_there(tmp_path):
    """PIL reads the rest of a declared IDAT in one call after decoding: the entry's bytes are all it gets."""
    image = zlib.compress(b"\0" * 65 * 64)
    png = b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", struct.pack(">IIBBBBB", 64, 64, 8, 0, 0, 0, 0)) + \
        struct.pack(">I", 2**31 - 1) + b"IDAT" + image + bytes(3 * 2**20)  # 3 MB of the 2 GB declared are there
    archive = two_class_zip(tmp_path / "idat.zip", {"d/a/x.png": png})
    result = run_isolated(f"""
import re
size = int(re.search(r"VmSize:\\s+(\\d+)", open("/proc/self/status").read())[1]) * 1024
resource.setrlimit(resource.RLIMIT_AS, (size + 2**30, resource.RLIM_INFINITY))  # a 2 GB read buffer cannot be had
folder = extract_upload({str(archive)!r}, {str(tmp_path / "uploads")!r}, UploadLimits())
from PIL import Image
result = {{"size": Image.open(folder / "a" / "x.png").size}}
""")
    assert result["size"] == [64, 64] and result["grew_mb"] < 50, result


def test_overstated_and_oversized_entries(tmp_path):
    payload = png_image("red")
    short = forged_zip(tmp_path / "short.zip", [("d/a/x.png", payload, 0, len(payload) + 10, zlib.crc32(payload)),
                                                ("d/b/y.png", *stored(payload))])
    with pytest.raises(UploadError, match=r"'short.zip' is damaged or forged at 'd/a/x.png' \(the file ends inside it"
                                          r"|'short.zip' is damaged or forged at 'd/a/x.png' \(it unpacks to"):
        extract_upload(short, tmp_path / "uploads", LIMITS)
    packer = zlib.compressobj(9, zlib.DEFLATED, -15)
    deflated = packer.compress(payload) + packer.flush()
    longer = forged_zip(tmp_path / "long.zip", [("d/a/x.png", deflated, 8, len(payload) + 10, zlib.crc32(payload)),
                                                ("d/b/y.png", *stored(payload))])
    with pytest.raises(UploadError, match=rf"'long.zip' is damaged or forged at 'd/a/x.png' \(it unpacks to "
                                          rf"{len(payload)} bytes, not the {len(payload) + 10} its header declares\)"):
        extract_upload(longer, tmp_path / "uploads", LIMITS)
    honest = forged_zip(tmp_path / "big.zip", [("d/a/x.png", b"", 8, 5 * 2**20, 0), ("d/b/y.png", *stored(payload))])
    with pytest.raises(UploadError, match=r"'big.zip' holds 'd/a/x.png' of 5.0 MB, more than this Space's limit of "
                                          r"4.0 MB per image"):
        extract_upload(honest, tmp_path / "uploads", UploadLimits(max_image_bytes=4 * 2**20))
    assert not any((tmp_path / "uploads").iterdir())


def test_entries_and_directory_size_come_from_the_end_record_before_the_directory_is_parsed(tmp_path, monkeypatch):
    parsed = []
    monkeypatch.setattr(zipfile.ZipFile, "_RealGetContents", lambda self: parsed.append(self))  # must not be reached
    flood = flood_zip(tmp_path / "flood.zip", 70_000)  # over 65535 entries: a zip64 end record
    with pytest.raises(UploadError, match=f"^'flood.zip' has 70000 entries, more than this Space's limit of 10000; "
                                          f"{HOW}$"):
        extract_upload(flood, tmp_path / "uploads", UploadLimits())
    # The end record understates the count: the directory's size still refuses it (512 bytes an entry on average).
    data = bytearray(flood.read_bytes())
    struct.pack_into("<2Q", data, data.rfind(b"PK\x06\x06") + 24, 5, 5)  # the zip64 record now says 5 entries
    lying = tmp_path / "lying.zip"
    lying.write_bytes(bytes(data))
    directory = 70_000 * (46 + 15)
    with pytest.raises(UploadError, match=rf"'lying.zip' has a directory of {directory / 2**20:.1f} MB for 5 entries, "
                                          r"more than this Space's limit of 0.5 MB \(are its names very long\?\)"):
        extract_upload(lying, tmp_path / "uploads", UploadLimits(max_entries=1000))
    assert not parsed and not any((tmp_path / "uploads").iterdir())


def test_the_end_record_is_found_behind_a_comment_and_in_zipfiles_own_zip64(tmp_path):
    archive = shapes_zip(tmp_path / "shapes.zip")
    with zipfile.ZipFile(archive, "a") as z:
        z.comment = b"a comment after the end record, " + b"x" * 1000
    folder = extract_upload(archive, tmp_path / "uploads", LIMITS)
    assert sorted(p.name for p in folder.iterdir()) == ["blue", "red"]
    with zipfile.ZipFile(archive) as z:
        z.getinfo("shapes/red/0.png")


# --- through gradio_client against the app, in its own process so that its memory is its own -----------------------

MEMORY_BOUND = 300 * 2**20  # what one upload may add to the idle app's peak memory (README, App)


@pytest.fixture(scope="module")
def app_process(tmp_path_factory):
    from helpers import running_app

    tmp = tmp_path_factory.mktemp("upload-app")
    env = {**os.environ, "PYTHONPATH": str(ROOT), "VLDD_APP_ROOT": str(tmp / "sessions"),
           "GRADIO_TEMP_DIR": str(tmp / "gradio"), "OMP_NUM_THREADS": "1", "HOME": str(tmp)}
    with running_app([sys.executable, str(ROOT / "app.py")], env, tmp) as (url, pid):
        yield type("App", (), {"url": url, "pid": pid, "tmp": tmp, "cache": tmp / "gradio"})


def peak_growth(pid: int, action):
    """(action's result or error, bytes the process's peak resident memory grew by while it ran): the peak is reset
    to the current resident size first (writing 5 to clear_refs), then read back (VmHWM)."""
    def status(key: str) -> int:
        line = next(x for x in Path(f"/proc/{pid}/status").read_text().splitlines() if x.startswith(key + ":"))
        return int(line.split()[1]) * 1024

    Path(f"/proc/{pid}/clear_refs").write_text("5")
    before = status("VmRSS")
    assert status("VmHWM") <= before + 2**20  # the reset took
    try:
        outcome = action()
    except Exception as err:  # noqa: BLE001  (the refusal is the outcome)
        outcome = err
    return outcome, status("VmHWM") - before


def cached_zips(app) -> list[Path]:
    return sorted(app.cache.rglob("*.zip")) if app.cache.exists() else []


@pytest.mark.slow  # the app runs in a subprocess; the zips are ~3 MB and ~61 MB
def test_hostile_zips_are_refused_by_the_app_within_the_memory_bound(app_process, tmp_path):
    from gradio_client import Client, handle_file
    from gradio_client.exceptions import AppError

    client = Client(app_process.url, verbose=False)
    update, *_ = client.predict(upload=handle_file(shapes_zip(tmp_path / "shapes.zip")), classes=[],
                                images_per_class=3, api_name="/load_dataset")  # the first load imports `datasets`
    assert update["value"] == ["blue", "red"]
    # The largest honest image: 40 Mpx, decoded whole (160 MB as RGB), which the measurement sees.
    honest = two_class_zip(tmp_path / "honest.zip", {"d/a/big.png": png_image("red", (8000, 5000))})
    (update, *_), grew = peak_growth(app_process.pid, lambda: client.predict(
        upload=handle_file(honest), classes=[], images_per_class=3, api_name="/load_dataset"))
    print(f"honest.zip (one 40 Mpx image): peak memory +{grew / 2**20:.0f} MB")
    assert update["value"] == ["a", "other"] and 150 * 2**20 < grew < MEMORY_BOUND
    assert cached_zips(app_process) == []  # extracted, then removed from Gradio's cache
    cases = {
        "bomb.zip": (understated_bomb(tmp_path / "bomb.zip"),  # 1 MB declared, 2 GB inflated: +3.8 GB before
                     "'bomb.zip' is damaged or forged at 'd/a/bomb.png' (it unpacks to more than the 1048576 bytes "
                     "its header declares)"),
        "flood.zip": (flood_zip(tmp_path / "flood.zip"),  # 1,000,000 entries in a 61 MB directory: +407 MB before
                      "'flood.zip' has 1000000 entries, more than this Space's limit of 10000"),
    }
    for name, (archive, message) in cases.items():
        error, grew = peak_growth(app_process.pid, lambda archive=archive: client.predict(
            upload=handle_file(archive), classes=[], images_per_class=3, api_name="/load_dataset"))
        assert isinstance(error, AppError) and message in str(error), error
        assert str(tmp_path) not in str(error) and str(app_process.tmp) not in str(error)  # no server paths
        print(f"{name}: {archive.stat().st_size / 2**20:.1f} MB, peak memory +{grew / 2**20:.0f} MB")
        assert grew < MEMORY_BOUND, (name, grew / 2**20)
        assert cached_zips(app_process) == []  # the refused upload is gone from Gradio's cache


@pytest.mark.slow
def test_upload_messages_through_the_app(app_process, tmp_path):
    from gradio_client import Client, handle_file
    from gradio_client.exceptions import AppError

    client = Client(app_process.url, verbose=False)
    red = png_image("red")
    cases = {
        "one.zip": ({"mine/cat/0.png": red, "mine/cat/1.png": red},
                    "'one.zip' has images of one class only ('cat'); a zip needs at least two class folders"),
        "clash.zip": ({"d/a/b.png": red, "d/a/b.png/c.png": red},
                      "'clash.zip' has 'd/a/b.png' both as a file and as a folder"),
        "huge.zip": ({"d/a/huge.png": bomb_png(10_000, 9_000), "d/b/0.png": red},  # over PIL's 80 Mpx in the app
                     "'huge.zip' holds 'd/a/huge.png' of 90 Mpx, more than this Space's limit of 40 Mpx per image"),
        "long.zip": ({f"d/{'x' * 300}/0.png": red, "d/y/0.png": red},
                     "'long.zip' has a name of 300 characters ('xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx'...), more "
                     "than the 255 a folder or file name may have; rename it"),
    }
    for name, (entries, message) in cases.items():
        archive = tmp_path / name
        with zipfile.ZipFile(archive, "w") as z:
            for entry, data in entries.items():
                z.writestr(entry, data)
        with pytest.raises(AppError, match=re.escape(message)) as caught:
            client.predict(upload=handle_file(archive), classes=[], images_per_class=3, api_name="/load_dataset")
        assert str(app_process.tmp) not in str(caught.value)
    assert cached_zips(app_process) == []


# --- messages a visitor can act on ---------------------------------------------------------------------------------

def zip_of(path: Path, entries: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(path, "w") as z:
        for entry, data in entries.items():
            z.writestr(entry, data)
    return path


@pytest.mark.parametrize("entries, message", [
    ({"mine/cat/0.png": b"", "mine/cat/1.png": b""},
     "'x.zip' has images of one class only ('cat'); a zip needs at least two class folders, e.g. mydata/cat/1.jpg "
     "and mydata/dog/1.jpg"),
    ({"0.png": b"", "1.png": b""}, "'x.zip' has its images outside class folders; a zip needs at least two class folders"),
    ({"d/cat/0.png": b"", "d/dog/0.png": b"", "d/loose.png": b""},
     "'x.zip' has images at different depths ('d/loose.png' and 'd/cat/0.png'); put every image in its class folder"),
    ({"d/a/b.png": b"", "d/a/b.png/c.png": b""},
     "'x.zip' has 'd/a/b.png' both as a file and as a folder (holding 'd/a/b.png/c.png'); rename one of them"),
    ({"d/cat": b"", "d/cat/0.png": b"", "d/dog/0.png": b""},
     "'x.zip' has 'd/cat' both as a file and as a folder (holding 'd/cat/0.png'); rename one of them"),
    ({f"d/{'é' * 128}/0.png": b"", "d/b/0.png": b""},  # 128 characters, 256 bytes in UTF-8
     "'x.zip' has a name of 128 characters ('éééééééééééééééééééééééééééééééééééééééé'...), more than the 255 a folder "
     "or file name may have; rename it"),
])
def test_layout_and_name_messages(tmp_path, entries, message):
    with pytest.raises(UploadError, match=f"^{re.escape(message)}.*; {HOW}$"):
        extract_upload(zip_of(tmp_path / "x.zip", entries), tmp_path / "uploads", LIMITS)
    assert not any((tmp_path / "uploads").iterdir())


def test_a_name_listed_twice_an_encrypted_entry_and_an_unread_method_are_refused(tmp_path):
    red = png_image("red")
    twice = forged_zip(tmp_path / "twice.zip", [("d/a/0.png", *stored(red)), ("d/a/0.png", *stored(red)),
                                                ("d/b/0.png", *stored(red))])
    with pytest.raises(UploadError, match="^'twice.zip' lists 'd/a/0.png' twice; "):
        extract_upload(twice, tmp_path / "uploads", LIMITS)
    locked = shapes_zip(tmp_path / "locked.zip")
    data = bytearray(locked.read_bytes())
    at = data.find(b"PK\x01\x02")
    struct.pack_into("<H", data, at + 8, 1)  # the first entry's flag: encrypted
    locked.write_bytes(bytes(data))
    with pytest.raises(UploadError, match=r"^'locked.zip' is encrypted \('shapes/red/0.png'\); zip it without a "
                                          "password"):
        extract_upload(locked, tmp_path / "uploads", LIMITS)
    with zipfile.ZipFile(tmp_path / "lzma.zip", "w", zipfile.ZIP_LZMA) as z:
        z.writestr("d/a/0.png", red)
        z.writestr("d/b/0.png", red)
    with pytest.raises(UploadError, match=r"^'lzma.zip' compresses 'd/a/0.png' with method 14; only stored and "
                                          "deflated entries"):
        extract_upload(tmp_path / "lzma.zip", tmp_path / "uploads", LIMITS)


def test_pils_own_errors_become_the_spaces_messages(tmp_path):
    from PIL import ImageFile, PngImagePlugin

    from vldd.app.uploads import apply_pil_limits

    saved = Image.MAX_IMAGE_PIXELS, PngImagePlugin.MAX_TEXT_CHUNK, PngImagePlugin.MAX_TEXT_MEMORY
    try:
        apply_pil_limits(UploadLimits())  # what the app does: PIL itself refuses over 80 Mpx, before our check
        bomb = two_class_zip(tmp_path / "huge.zip", {"d/a/huge.png": bomb_png(10_000, 9_000)})  # 90 Mpx
        with pytest.raises(UploadError, match=r"^'huge.zip' holds 'd/a/huge.png' of 90 Mpx, more than this Space's "
                                              r"limit of 40 Mpx per image; "):
            extract_upload(bomb, tmp_path / "uploads", UploadLimits())
        # A zTXt chunk of 512 KB of text (PIL's default allows 1 MB a chunk and 64 MB in all; the Space 256 KB).
        text = b"comment\0\0" + zlib.compress(b"a" * 2**19)
        png = png_image("red")
        png = png[:33] + png_chunk(b"zTXt", text) + png[33:]  # after the signature and IHDR
        archive = two_class_zip(tmp_path / "text.zip", {"d/a/x.png": png})
        with pytest.raises(UploadError, match=r"^'text.zip' holds 'd/a/x.png' with more text metadata than this "
                                              r"Space reads; save it without metadata; "):
            extract_upload(archive, tmp_path / "uploads", UploadLimits())
        # PIL's own defaults (an app built earlier in this process may have lowered them): the same image is read
        Image.MAX_IMAGE_PIXELS = int(1024 * 1024 * 1024 // 4 // 3)
        PngImagePlugin.MAX_TEXT_CHUNK, PngImagePlugin.MAX_TEXT_MEMORY = ImageFile.SAFEBLOCK, 64 * ImageFile.SAFEBLOCK
        assert extract_upload(archive, tmp_path / "uploads", UploadLimits()).name == "d"
    finally:
        Image.MAX_IMAGE_PIXELS, PngImagePlugin.MAX_TEXT_CHUNK, PngImagePlugin.MAX_TEXT_MEMORY = saved


def test_only_the_formats_of_the_accepted_suffixes_are_decoded(tmp_path):
    ico = io.BytesIO()
    Image.new("RGB", (16, 16), "red").save(ico, format="ICO")  # a format PIL reads, named .png
    archive = two_class_zip(tmp_path / "ico.zip", {"d/a/x.png": ico.getvalue()})
    with pytest.raises(UploadError, match=r"^'ico.zip' holds 'd/a/x.png', which is not an image in a format this "
                                          r"Space reads \(.bmp, .gif, .jpeg"):
        extract_upload(archive, tmp_path / "uploads", LIMITS)


# --- what is kept of an image ----------------------------------------------------------------------------------------

def test_exif_orientation_is_applied_and_dropped(tmp_path):
    image = Image.new("RGB", (32, 16), "red")
    image.paste((0, 0, 255), (0, 0, 8, 16))  # blue on the left
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90 degrees clockwise to view
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", exif=exif, quality=95)
    archive = two_class_zip(tmp_path / "exif.zip", {"d/a/photo.jpg": buffer.getvalue()})
    folder = extract_upload(archive, tmp_path / "uploads", UploadLimits(max_side=64))
    with Image.open(folder / "a" / "photo.jpg") as out:
        assert out.size == (16, 32) and out.format == "JPEG"
        assert out.getexif().get(0x0112) is None  # not applied a second time by a reader
        top = out.convert("RGB").getpixel((8, 2))
        assert top[2] > 200 and top[0] < 60  # the blue left edge is now at the top


def test_animated_images_keep_their_first_frame_in_the_format_their_name_says(tmp_path):
    frames = [Image.new("RGB", (16, 16), color) for color in ("red", "lime", "blue")]
    gif, webp, jpeg_as_png = io.BytesIO(), io.BytesIO(), io.BytesIO()
    frames[0].save(gif, format="GIF", save_all=True, append_images=frames[1:], duration=100, loop=0)
    frames[0].save(webp, format="WEBP", save_all=True, append_images=frames[1:], lossless=True)
    Image.new("RGBA", (16, 16), (0, 0, 255, 128)).save(jpeg_as_png, format="PNG")  # PNG data named .jpg
    archive = zip_of(tmp_path / "anim.zip", {"d/a/x.gif": gif.getvalue(), "d/a/y.webp": webp.getvalue(),
                                             "d/b/z.jpg": jpeg_as_png.getvalue()})
    folder = extract_upload(archive, tmp_path / "uploads", LIMITS)
    for path, fmt in (("a/x.gif", "GIF"), ("a/y.webp", "WEBP"), ("b/z.jpg", "JPEG")):
        with Image.open(folder / path) as out:
            assert out.format == fmt and getattr(out, "n_frames", 1) == 1, path
            if fmt != "JPEG":
                red, green, blue = out.convert("RGB").getpixel((4, 4))
                assert red > 240 and green < 10 and blue < 10, path  # the first frame (WEBP is saved lossy)


# --- the app's side: Gradio's cache, and no server paths -------------------------------------------------------------

def test_uploads_leave_gradios_cache_once_extracted_or_refused(tmp_path):
    cache = tmp_path / "gradio"
    upload = cache / "0123abcd" / "shapes.zip"
    upload.parent.mkdir(parents=True)
    shapes_zip(tmp_path / "shapes.zip").rename(upload)
    kwargs = {"upload_dir": tmp_path / "session" / "uploads", "allow_local_paths": False, "limits": LIMITS,
              "uploads_cache": cache}
    folder = sources.resolve_dataset("sample", str(upload), **kwargs)
    assert Path(folder).name == "shapes" and not upload.parent.exists()  # extracted, then removed with its folder
    assert sources.resolve_dataset("sample", str(upload), **kwargs) == folder  # a later event of the session: reused
    other = cache / "4567ef01" / "shapes.zip"  # gone, never extracted (a new session): a message, no server path
    with pytest.raises(UploadError, match=r"^'shapes.zip' is no longer on the server \(an upload is removed once it "
                                          r"is unpacked, and a new session starts empty\); upload it again$"):
        sources.resolve_dataset("sample", str(other), **kwargs)
    refused = cache / "89ab" / "one.zip"
    refused.parent.mkdir()
    zip_of(refused, {"d/cat/0.png": b"x"})
    with pytest.raises(UploadError, match="'one.zip' has images of one class only") as caught:
        sources.resolve_dataset("sample", str(refused), **kwargs)
    assert not refused.exists() and str(tmp_path) not in str(caught.value)
    outside = shapes_zip(tmp_path / "outside.zip")  # not in Gradio's cache: left alone
    sources.resolve_dataset("sample", str(outside), **kwargs)
    assert outside.exists()


def test_file_system_errors_name_the_entry_not_the_server_path(tmp_path):
    deep = "/".join(["x" * 200] * 25)  # each name allowed, the whole path longer than Linux's 4096 bytes
    archive = zip_of(tmp_path / "deep.zip", {f"d/{deep}/a/0.png": png_image("red"), f"d/{deep}/b/0.png": b""})
    with pytest.raises(UploadError, match=r"^'deep.zip' could not be unpacked at 'd/xxx.*' \(File name too long\); ") \
            as caught:
        extract_upload(archive, tmp_path / "uploads", LIMITS)
    with pytest.raises(UploadError, match=r"^'gone.zip' cannot be read \(No such file or directory\); upload it again$") \
            as gone:
        extract_upload(tmp_path / "gone.zip", tmp_path / "uploads", LIMITS)
    assert str(tmp_path) not in str(caught.value) + str(gone.value)
