"""Reading image files: the one place drsearch opens and decodes an image (the training cache,
``predict``, ``evaluate``, ``data describe`` and the evaluation page all come here).

A folder may hold anything, so reading it is checked and bounded:

- Only regular files are opened (a symbolic link to one is followed). A FIFO, device,
  socket or folder is refused before it is opened; the file is opened with ``O_NONBLOCK``
  (a FIFO swapped in after the check cannot block) and checked again with ``fstat``.
- The name goes to the OS as it is (``os.open`` takes a name that is not UTF-8, which Python
  holds with surrogate escapes) and OpenCV gets the bytes (``cv2.imdecode``), never a name:
  ``cv2.imread`` crashes the process on a name that is not UTF-8.
- A file over ``MAX_FILE_BYTES`` is refused; the image's size is read from its header (PIL
  reads only the header) and an image over ``MAX_SIDE`` pixels a side or ``MAX_PIXELS`` in
  all is refused before any pixel is decoded.
- A PNG without its end chunk, or a JPEG that PIL finds cut short, is refused as truncated
  (``cv2.imread`` decoded a cut JPEG with the missing part grey; ``cv2.imdecode`` refuses
  one without saying why).
- Images are decoded and preprocessed in threads, but only as many at a time as fit a memory
  budget (each image's working memory is estimated from its header), so the peak does not
  grow with the number of cores or the size of the images.

A problem with one file is an ``ImageError`` whose message is one line (without the path),
such as ``not a regular file (a FIFO)``; callers list it per file.
"""

from __future__ import annotations

import errno
import io
import os
import stat
import threading
import warnings
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from PIL import ImageFile
from PIL.BmpImagePlugin import BmpImageFile
from PIL.JpegImagePlugin import JpegImageFile
from PIL.PngImagePlugin import PngImageFile
from PIL.TiffImagePlugin import TiffImageFile

from drsearch.config.recipe import PreprocessConfig
from drsearch.data.preprocess import preprocess

MB = 1024**2
#: Larger files are refused (a 25-megapixel photograph as an uncompressed TIFF is 72 MB).
MAX_FILE_BYTES = 100 * MB
#: Larger images are refused from their header, before decoding (the largest fundus cameras
#: write about 6000 x 4000 pixels).
MAX_SIDE = 6144
MAX_PIXELS = 25_000_000
#: Working memory of the images being decoded at once: ``predict``, ``evaluate``'s pages and
#: ``data describe`` (the whole process then peaks about this much above its idle size).
DECODE_MEMORY = 256 * MB
#: The training cache's budget: a trainer holds its dataset in memory anyway, and decoding
#: several large photographs at once keeps its first epoch fast on many cores.
TRAIN_DECODE_MEMORY = 1024 * MB
#: What is read, by its first bytes (as OpenCV tells formats apart too, so PIL's reading of
#: the header and OpenCV's decoding agree on the format); PIL's class reads the header only.
SIGNATURES: tuple[tuple[bytes, type[ImageFile.ImageFile]], ...] = (
    (b"\x89PNG\r\n\x1a\n", PngImageFile),
    (b"\xff\xd8\xff", JpegImageFile),
    (b"II*\x00", TiffImageFile),
    (b"MM\x00*", TiffImageFile),
    (b"BM", BmpImageFile),
)
_KINDS = {
    stat.S_IFDIR: "a folder, not an image file",
    stat.S_IFIFO: "not a regular file (a FIFO)",
    stat.S_IFSOCK: "not a regular file (a socket)",
    stat.S_IFCHR: "not a regular file (a character device)",
    stat.S_IFBLK: "not a regular file (a block device)",
}
_ERRNO = {
    errno.ENOENT: "file not found",
    errno.ENOTDIR: "file not found (a folder in its path is a file)",
    errno.ELOOP: "a symbolic link loop",
    errno.ENAMETOOLONG: "file name too long",
    errno.EACCES: "permission denied",
    errno.EPERM: "permission denied",
}
# PIL warns on stderr of a damaged TIFF header it then refuses; the file's row says so
warnings.filterwarnings("ignore", category=UserWarning, module=r"PIL\.TiffImagePlugin")
_FLAGS = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_NOCTTY", 0)
_FLAGS |= getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_BINARY", 0)


class ImageError(Exception):
    """Why one file cannot be used, in one line without its path."""


@dataclass
class Decoded:
    """What ``decode_into`` made of each path."""

    usable: np.ndarray  # bool per path: its pixels are in the arrays (decoded, not flagged)
    errors: list[str | None]  # why a path is not usable
    flags: list[tuple[str, ...]]  # what the flagger found in a decoded image


Flagger = Callable[[np.ndarray], tuple[str, ...]]
Progress = Callable[[int, int], None]


def quiet_opencv() -> None:
    """Silence OpenCV's own log lines (``[ERROR:0@1.2] global grfmt_tiff.cpp ...``) for the
    rest of the process: about a damaged file they say what its row already says. (libpng's
    and libjpeg's own lines, such as ``Corrupt JPEG data``, still print.)"""
    cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_SILENT)


def open_regular(path: Path | str, what: str = "image") -> int:
    """A descriptor of ``path`` open for reading, if it is a regular file (or a link to one);
    otherwise ``ImageError`` saying what it is."""
    try:
        st = os.stat(path)
        if not stat.S_ISREG(st.st_mode):
            raise ImageError(_KINDS.get(stat.S_IFMT(st.st_mode), "not a regular file"))
        fd = os.open(path, _FLAGS)
    except ValueError:
        raise ImageError("not a valid file name (it holds a NUL character)") from None
    except OSError as exc:
        if exc.errno == errno.ENOENT and os.path.islink(path):
            raise ImageError(f"a symbolic link to a missing {what} file") from None
        raise ImageError(_ERRNO.get(exc.errno or 0, f"cannot read ({exc.strerror})")) from None
    now = os.fstat(fd)
    if not stat.S_ISREG(now.st_mode) or (now.st_dev, now.st_ino) != (st.st_dev, st.st_ino):
        os.close(fd)
        raise ImageError("not a regular file (it changed while being opened)")
    return fd


def read_limited(fd: int, limit: int, what: str) -> bytes:
    """Every byte of the open file ``fd``, refused past ``limit`` bytes; a read the system
    refuses (``EIO``: a failing disk, ``EINVAL``: a special file under /proc) is an
    ``ImageError`` too."""
    try:
        size = os.fstat(fd).st_size
        if size > limit:
            raise ImageError(f"{what} of {size / MB:.0f} MB, over the limit of {limit // MB} MB")
        os.lseek(fd, 0, os.SEEK_SET)
        chunks, total = [], 0
        while chunk := os.read(fd, min(8 * MB, limit + 1 - total)):
            chunks.append(chunk)
            total += len(chunk)
            if total > limit:  # grew while being read
                raise ImageError(f"{what} over the limit of {limit // MB} MB")
    except OSError as exc:
        raise ImageError(_unreadable(exc)) from None
    return b"".join(chunks)


def _unreadable(exc: OSError) -> str:
    return _ERRNO.get(exc.errno or 0, f"cannot be read ({exc.strerror or type(exc).__name__})")


def header(fd: int) -> tuple[str, int, int]:
    """``(format, width, height)`` from the image's header (only the header is read)."""
    try:
        os.lseek(fd, 0, os.SEEK_SET)
        fp = io.BufferedReader(io.FileIO(fd, closefd=False))
        magic = fp.read(8)
    except OSError as exc:
        raise ImageError(_unreadable(exc)) from None
    plugin = next((cls for sig, cls in SIGNATURES if magic.startswith(sig)), None)
    if plugin is None:
        what = "an empty file" if not magic else "not a PNG, JPEG, TIFF or BMP image"
        raise ImageError(what if not magic else f"cannot decode image ({what})")
    fp.seek(0)
    try:  # the plugin class itself: no decompression-bomb check, the limits below apply
        with plugin(fp) as img:
            width, height = img.size
    except Exception:  # noqa: BLE001 - a hostile header may break the parser any way
        raise ImageError("cannot decode image (damaged header)") from None
    if width < 1 or height < 1:
        raise ImageError(f"cannot decode image (its header says {width}x{height} pixels)")
    if max(width, height) > MAX_SIDE or width * height > MAX_PIXELS:
        raise ImageError(_over_limit_message(width, height))
    return plugin.format, width, height


def image_size(path: Path) -> tuple[int, int]:
    """``(width, height)`` of an image file from its header; ``ImageError`` otherwise."""
    fd = open_regular(path)
    try:
        if os.fstat(fd).st_size > MAX_FILE_BYTES:
            read_limited(fd, MAX_FILE_BYTES, "a file")  # raises, saying the size
        _, width, height = header(fd)
        return width, height
    finally:
        os.close(fd)


def _over_limit_message(width: int, height: int) -> str:
    return (
        f"{width}x{height} pixels, over the limit of {MAX_SIDE} pixels a side and "
        f"{MAX_PIXELS // 10**6} megapixels; downscale it (fundus cameras write at most about "
        "6000x4000)"
    )


def working_bytes(file_bytes: int, width: int, height: int) -> int:
    """Memory one image needs while decoded and preprocessed: the decoded pixels and the file
    (or PIL's check of a JPEG without its end marker, or the RGB copy), then the pixels, a
    square padded copy and the grey-level masks of the border crop."""
    pixels, side = width * height, max(width, height)
    return 3 * pixels + max(file_bytes + 3 * pixels, 3 * side * side + 2 * pixels)


class MemoryBudget:
    """At most ``limit`` bytes reserved at a time; a reservation larger than the budget waits
    until it is alone. Each thread holds one reservation at a time, so none waits forever."""

    def __init__(self, limit: int) -> None:
        self.limit, self.used = limit, 0
        self._cond = threading.Condition()

    @contextmanager
    def hold(self, n: int) -> Iterator[None]:
        with self._cond:
            while self.used and self.used + n > self.limit:
                self._cond.wait()
            self.used += n
        try:
            yield
        finally:
            with self._cond:
                self.used -= n
                self._cond.notify_all()


@contextmanager
def decoded(path: Path | str, budget: MemoryBudget | None = None) -> Iterator[np.ndarray]:
    """The image at ``path`` as an RGB ``uint8`` array (EXIF orientation applied), held
    within ``budget`` until the block ends; ``ImageError`` if it cannot be used."""
    budget = budget or MemoryBudget(DECODE_MEMORY)
    fd = open_regular(path)
    try:
        size = os.fstat(fd).st_size
        if size > MAX_FILE_BYTES:
            read_limited(fd, MAX_FILE_BYTES, "a file")  # raises, saying the size
        with budget.hold(size):  # the header parser may read much of the file
            fmt, width, height = header(fd)
        with budget.hold(working_bytes(size, width, height)):
            data = read_limited(fd, MAX_FILE_BYTES, "a file")
            bgr = _decode(data, fmt)
            del data
            rgb = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)  # in place (dst=bgr): 8 times slower
            del bgr
            yield rgb
    finally:
        os.close(fd)


def _decode(data: bytes, fmt: str) -> np.ndarray:
    """The image in ``data`` as OpenCV decodes it (BGR), or ``ImageError``."""
    if fmt == "PNG" and not 0 <= data.rfind(b"IEND") <= len(data) - 8:  # type, checksum
        raise ImageError("truncated: the file ends before its image does (no PNG end chunk)")
    if fmt == "JPEG" and not data[-4096:].rstrip(b"\0 \r\n").endswith(b"\xff\xd9"):
        _check_jpeg_tail(data)  # data after the end marker is allowed; a cut is not
    try:
        img = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    except (cv2.error, MemoryError) as exc:
        raise ImageError(f"cannot decode image ({type(exc).__name__})") from None
    if img is None or img.ndim != 3 or img.shape[2] != 3:
        raise ImageError("cannot decode image (damaged data)")
    h, w = img.shape[:2]
    if max(w, h) > MAX_SIDE or w * h > MAX_PIXELS:  # a header PIL read otherwise than OpenCV
        raise ImageError(_over_limit_message(w, h))
    return img


def _check_jpeg_tail(data: bytes) -> None:
    """A JPEG whose last bytes are not its end marker: cut short, or followed by other data
    (some cameras append some)? PIL decodes it to tell."""
    try:
        with JpegImageFile(io.BytesIO(data)) as img:
            img.load()
    except Exception as exc:  # noqa: BLE001 - hostile data may break the decoder any way
        if "truncated" in str(exc):
            raise ImageError(
                "truncated: the file ends before its image does (no JPEG end marker)"
            ) from None
        raise ImageError("cannot decode image (damaged data)") from None


def decode_into(
    paths: Sequence[Path],
    arrays: dict[int, np.ndarray],
    prep: PreprocessConfig,
    progress: Progress | None = None,
    flagger: Flagger | None = None,
    memory: int = DECODE_MEMORY,
) -> Decoded:
    """Decode ``paths`` (in threads: OpenCV releases the GIL; as many at a time as fit
    ``memory``) and preprocess each image into ``arrays[size][i]`` at every size. An image
    that cannot be used gets its error and is left black; with ``flagger``, an image it
    flags gets its flags and is not preprocessed (left black)."""
    return decode_prepared(paths, [(prep, arrays)], progress, flagger, memory)


def decode_prepared(
    paths: Sequence[Path],
    targets: Sequence[tuple[PreprocessConfig, dict[int, np.ndarray]]],
    progress: Progress | None = None,
    flagger: Flagger | None = None,
    memory: int = DECODE_MEMORY,
) -> Decoded:
    """``decode_into`` for several preprocessings at once: each image is decoded once and
    preprocessed with each ``(preprocessing, arrays by size)`` of ``targets`` into its arrays
    (the members of an ensemble that see images differently)."""
    n = len(paths)
    result = Decoded(np.zeros(n, dtype=bool), [None] * n, [()] * n)
    budget = MemoryBudget(memory)

    def work(i: int) -> None:
        try:
            with decoded(paths[i], budget) as img:
                flags = flagger(img) if flagger else ()
                for prep, arrays in targets:
                    for s, arr in arrays.items():
                        arr[i] = 0 if flags else preprocess(img, prep, s)
            result.usable[i], result.flags[i] = not flags, flags
        except ImageError as exc:
            result.errors[i] = str(exc)
            for _, arrays in targets:
                for arr in arrays.values():
                    arr[i] = 0

    with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
        for done, _ in enumerate(pool.map(work, range(n)), start=1):
            if progress and (done % 64 == 0 or done == n):
                progress(done, n)
    return result
