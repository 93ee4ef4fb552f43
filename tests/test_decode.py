"""Reading image files whatever a folder holds (``data/decode.py``), and the flags of images a
grader should not grade (``data/quality.py``)."""

from __future__ import annotations

import os
import socket
import struct
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from drsearch.config.recipe import PreprocessConfig
from drsearch.data import decode as decode_mod
from drsearch.data.decode import MAX_FILE_BYTES, ImageError, decode_into, decoded, working_bytes
from drsearch.data.quality import image_flags
from drsearch.data.synth import draw_fundus
from tests.conftest import png_header_only


def fundus(size: int = 96, seed: int = 0) -> np.ndarray:
    return draw_fundus(2, size, np.random.default_rng(seed))


def write(path: Path, rgb: np.ndarray, *params: int) -> Path:
    assert cv2.imwrite(str(path), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), list(params))
    return path


def error_of(path: Path | str) -> str:
    with pytest.raises(ImageError) as info, decoded(path):
        pass
    return str(info.value)


@pytest.fixture(scope="module")
def retina() -> np.ndarray:
    return pytest.importorskip("skimage.data").retina()  # 1411 x 1411 RGB fundus photograph


def test_a_name_that_is_not_utf8_is_read(tmp_path: Path) -> None:
    # OpenCV's imread crashes the process (segfault) on such a name; the bytes go to imdecode
    png = write(tmp_path / "plain.png", fundus()).read_bytes()
    fd = os.open(os.path.join(os.fsencode(tmp_path), b"caf\xe9 \xff.png"), os.O_WRONLY | os.O_CREAT)
    os.write(fd, png)
    os.close(fd)
    (name,) = [p for p in tmp_path.iterdir() if p.name != "plain.png"]
    with decoded(name) as img:
        assert np.array_equal(img, fundus())


def test_only_regular_files_are_opened(tmp_path: Path) -> None:
    os.mkfifo(tmp_path / "pipe.png")  # opening it to read would wait for a writer forever
    (tmp_path / "folder.png").mkdir()
    (tmp_path / "zero.png").symlink_to("/dev/zero")
    (tmp_path / "loop.png").symlink_to(tmp_path / "loop.png")
    (tmp_path / "broken.png").symlink_to(tmp_path / "nowhere.png")
    (tmp_path / "empty.png").write_bytes(b"")
    (tmp_path / "text.png").write_text("not an image")
    assert error_of(tmp_path / "pipe.png") == "not a regular file (a FIFO)"
    assert error_of(tmp_path / "folder.png") == "a folder, not an image file"
    assert error_of(tmp_path / "zero.png") == "not a regular file (a character device)"
    assert error_of(tmp_path / "loop.png") == "a symbolic link loop"
    assert error_of(tmp_path / "broken.png") == "a symbolic link to a missing image file"
    assert error_of(tmp_path / "gone.png") == "file not found"
    assert error_of(tmp_path / "empty.png") == "an empty file"
    assert (
        error_of(tmp_path / "text.png")
        == "cannot decode image (not a PNG, JPEG, TIFF or BMP image)"
    )
    assert error_of(f"{tmp_path}/nul\0.png") == "not a valid file name (it holds a NUL character)"
    short = Path(f"/tmp/drs-{os.getpid()}.png")  # a socket's path must be short
    with socket.socket(socket.AF_UNIX) as sock:
        sock.bind(str(short))
        try:
            assert error_of(short) == "not a regular file (a socket)"
        finally:
            short.unlink()
    link = tmp_path / "link.png"  # a link to a regular file is followed
    link.symlink_to(write(tmp_path / "real.png", fundus()))
    with decoded(link) as img:
        assert img.shape == (96, 96, 3)


def test_the_pixel_limit_is_checked_from_the_header_before_decoding(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_decoding(*args: object) -> None:
        raise AssertionError("decoded an image over the limit")

    monkeypatch.setattr(decode_mod.cv2, "imdecode", no_decoding)
    (tmp_path / "huge.png").write_bytes(png_header_only(20000, 20000))
    assert error_of(tmp_path / "huge.png").startswith(
        "20000x20000 pixels, over the limit of 6144 pixels a side and 25 megapixels"
    )
    (tmp_path / "wide.png").write_bytes(png_header_only(7000, 100))  # 0.7 MP, a side too long
    assert error_of(tmp_path / "wide.png").startswith("7000x100 pixels, over the limit")
    (tmp_path / "max.png").write_bytes(png_header_only(2**31 - 1, 2**31 - 1))
    assert error_of(tmp_path / "max.png").startswith("2147483647x2147483647 pixels")
    # a JPEG whose frame header claims 60000 x 50000
    data = bytearray(cv2.imencode(".jpg", np.zeros((8, 8, 3), np.uint8))[1].tobytes())
    sof = data.index(b"\xff\xc0")
    data[sof + 5 : sof + 9] = struct.pack(">HH", 50000, 60000)
    (tmp_path / "huge.jpg").write_bytes(bytes(data))
    assert error_of(tmp_path / "huge.jpg").startswith("60000x50000 pixels, over the limit")


def test_a_file_over_the_size_limit_is_refused_unread(tmp_path: Path) -> None:
    big = tmp_path / "big.png"
    with big.open("wb") as fh:  # sparse: no disk used
        fh.write(png_header_only(64, 64))
        fh.truncate(MAX_FILE_BYTES + 1)
    assert error_of(big) == "a file of 100 MB, over the limit of 100 MB"


def test_truncated_pngs_and_jpegs_are_refused(tmp_path: Path) -> None:
    img = fundus(256)
    for suffix in (".png", ".jpg"):
        data = write(tmp_path / f"whole{suffix}", img).read_bytes()
        for cut in (len(data) // 3, len(data) - 2):
            (tmp_path / f"cut{suffix}").write_bytes(data[:cut])
            assert error_of(tmp_path / f"cut{suffix}").startswith(
                "truncated: the file ends before its image does"
            )
    # data after a JPEG's end marker (some cameras append some) is not a cut
    whole = (tmp_path / "whole.jpg").read_bytes()
    (tmp_path / "trailer.jpg").write_bytes(whole + b"MAKERNOTE" * 100)
    with decoded(tmp_path / "trailer.jpg") as got, decoded(tmp_path / "whole.jpg") as want:
        assert np.array_equal(got, want)


def test_decoding_gives_opencv_imreads_pixels(tmp_path: Path) -> None:
    """The training cache's pixels are what they were with cv2.imread (every format)."""
    img = fundus(120)
    grey = cv2.cvtColor(img, cv2.COLOR_RGB2GRAY)
    files = [
        write(tmp_path / "a.png", img),
        write(tmp_path / "b.jpg", img, cv2.IMWRITE_JPEG_QUALITY, 85),
        write(tmp_path / "c.bmp", img),
        write(tmp_path / "d.tif", img),
        write(tmp_path / "e.jpeg", img, cv2.IMWRITE_JPEG_PROGRESSIVE, 1),
    ]
    assert cv2.imwrite(str(tmp_path / "f.png"), grey)
    assert cv2.imwrite(str(tmp_path / "g.png"), (grey.astype(np.uint16) * 257))
    assert cv2.imwrite(
        str(tmp_path / "h.png"), np.dstack([img, np.full(grey.shape, 128, np.uint8)])
    )
    rotated = Image.fromarray(img[:, :80])
    exif = rotated.getexif()
    exif[0x0112] = 6  # EXIF orientation: rotate 90 degrees
    rotated.save(tmp_path / "i.jpg", exif=exif)
    files += [tmp_path / n for n in ("f.png", "g.png", "h.png", "i.jpg")]
    for path in files:
        want = cv2.cvtColor(cv2.imread(str(path), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
        with decoded(path) as got:
            assert np.array_equal(got, want), path.name
    with decoded(tmp_path / "i.jpg") as turned:
        assert turned.shape == (80, 120, 3)


def test_images_are_decoded_within_the_memory_budget(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """However many threads decode, the images' working memory held at once stays within the
    budget; an image larger than the budget is decoded alone."""
    held: list[int] = []

    class Recorded(decode_mod.MemoryBudget):
        def hold(self, n: int):  # type: ignore[no-untyped-def]
            held.append(n)
            return super().hold(n)

    peaks: list[int] = []
    real = decode_mod.preprocess

    def preprocess(*args: object) -> np.ndarray:
        peaks.append(budgets[-1].used)
        return real(*args)  # type: ignore[arg-type]

    budgets: list[Recorded] = []
    monkeypatch.setattr(
        decode_mod, "MemoryBudget", lambda n: budgets.append(Recorded(n)) or budgets[-1]
    )
    monkeypatch.setattr(decode_mod, "preprocess", preprocess)
    paths = [write(tmp_path / f"{i}.png", fundus(200, i)) for i in range(12)]
    one = working_bytes(paths[0].stat().st_size, 200, 200)
    for memory in (2 * one + one // 2, one // 2):
        arrays = {32: np.zeros((12, 32, 32, 3), np.uint8)}
        out = decode_into(paths, arrays, PreprocessConfig(), memory=memory)
        assert out.usable.all() and arrays[32].any(axis=(1, 2, 3)).all()
        assert max(peaks) <= max(memory, max(held)) and budgets[-1].used == 0
        peaks.clear()
    assert max(held) > one // 2  # the last run's images each exceeded its budget: one at a time


@pytest.mark.parametrize(
    ("name", "img"),
    [
        ("black", np.zeros((300, 400, 3), np.uint8)),
        ("white", np.full((300, 400, 3), 255, np.uint8)),
        ("grey", np.full((300, 400, 3), 128, np.uint8)),
        ("noise", np.random.default_rng(0).integers(0, 256, (300, 400, 3), dtype=np.uint8)),
        ("fine noise", np.random.default_rng(1).integers(0, 256, (2000, 2000, 3), np.uint8)),
    ],
)
def test_black_blank_and_noise_images_are_flagged(name: str, img: np.ndarray) -> None:
    assert image_flags(img, 10, 32) == ("no_fundus",)


def test_a_flat_disc_a_tiny_fundus_and_odd_sizes_are_flagged(retina: np.ndarray) -> None:
    disc = np.zeros((300, 300, 3), np.uint8)
    cv2.circle(disc, (150, 150), 140, (200, 80, 40), -1)
    assert image_flags(disc, 10, 32) == ("no_fundus",)
    tiny = np.zeros((1000, 1000, 3), np.uint8)
    tiny[450:550, 450:550] = cv2.resize(retina, (100, 100), interpolation=cv2.INTER_AREA)
    assert image_flags(tiny, 10, 32) == ("small_fundus",)
    small = cv2.resize(retina, (60, 60), interpolation=cv2.INTER_AREA)
    assert image_flags(small, 10, 128) == ("size_out_of_range",)  # 60 px for a 128 px model
    assert image_flags(small, 10, 120) == ()
    strip = np.zeros((300, 700, 3), np.uint8)
    strip[:, 200:500] = cv2.resize(retina, (300, 300), interpolation=cv2.INTER_AREA)
    assert image_flags(strip, 10, 32) == ("size_out_of_range",)  # 7:3
    # a photograph of something else: no dark border around a field of view
    cat = pytest.importorskip("skimage.data").chelsea()
    assert image_flags(cat, 10, 32) == ("no_fundus",)


def test_real_and_synthetic_fundus_photographs_are_not_flagged(
    retina: np.ndarray, tiny_dataset: Path, tmp_path: Path
) -> None:
    assert image_flags(retina, 10, 512) == ()
    # the same photograph as a 4:3 camera frame, as a JPEG, darker, and cut at top and bottom
    frame = np.zeros((1058, 1411, 3), np.uint8)
    frame[:, 176 : 176 + 1058] = cv2.resize(retina, (1058, 1058), interpolation=cv2.INTER_AREA)
    with decoded(write(tmp_path / "frame.jpg", frame, cv2.IMWRITE_JPEG_QUALITY, 80)) as jpeg:
        assert image_flags(jpeg, 10, 384) == ()
    assert image_flags((retina * 0.3).astype(np.uint8), 10, 512) == ()
    assert image_flags(retina[200:1211], 10, 512) == ()
    for path in sorted((tiny_dataset / "train_images").iterdir()):  # 80 synthetic, 48 px
        with decoded(path) as img:
            assert image_flags(img, 10, 32) == (), path.name
    for size in (128, 512):
        for grade in range(5):
            assert image_flags(draw_fundus(grade, size, np.random.default_rng(grade)), 10, 64) == ()
