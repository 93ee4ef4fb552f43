"""`drsearch predict` on folders of hostile files: no traceback, no crash, bounded memory.

    python bench/predict_fuzz.py [--n 2000] [--seed 0] [--keep DIR]

Writes about ``--n`` files into a fresh folder: random bytes; PNGs, JPEGs, TIFFs and BMPs that
are truncated, corrupted or whose headers claim up to 2^31-1 pixels a side; a black
20000x20000 PNG (1.2 MB, as the issue's attacker wrote it) twice; photographs at the pixel limit;
black, blank, noise and odd-sized images; sparse files over the size limit; empty files; names
that are not UTF-8 or hold newlines, commas, quotes or 250 bytes; symbolic links (to images,
to /dev/zero and /dev/urandom, to a folder, loops, dangling); FIFOs and a socket; folders named
like images; and good synthetic fundus photographs. A tiny model is exported beside them (the
demo recipe, random weights: reading the files is what is measured).

Then runs ``python -m drsearch.cli predict`` as a child process on the folder, on a CSV that
lists the files (with extra rows naming /, a missing file and /dev/zero), and on a folder of
good images only (the baseline). Checks each: exit code 0, no traceback, one CSV row per file
listed, each row either graded, flagged or with its error, no hang (``--timeout``). Prints the
files, the rows, errors and flags by kind, the child's peak resident memory (``wait4``'s
``ru_maxrss``) and wall time. Exits 1 if a check fails. The children import drsearch from
``PYTHONPATH`` like this script, so pointing it at another checkout measures that one.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import os
import re
import shutil
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
import zlib
from collections import Counter
from pathlib import Path

import cv2
import numpy as np
import torch
import yaml

from drsearch.config import Recipe, parse_config
from drsearch.data.synth import draw_fundus
from drsearch.train.model import build_model

SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".PNG", ".JPG")


def chunk(kind: bytes, data: bytes) -> bytes:
    body = kind + data
    return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))


def png_header(width: int, height: int, idat: bytes = b"") -> bytes:
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    idat = idat or zlib.compress(b"\0" * 64)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def black_png(width: int, height: int) -> bytes:
    """A valid all-black RGB PNG, compressed row by row (never held whole in memory)."""
    z = zlib.compressobj(9)
    row = b"\0" * (1 + 3 * width)
    parts = [z.compress(row) for _ in range(height)]
    return png_header(width, height, b"".join(parts) + z.flush())


def encode(img: np.ndarray, suffix: str, *params: int) -> bytes:
    ok, buf = cv2.imencode(suffix.lower(), cv2.cvtColor(img, cv2.COLOR_RGB2BGR), list(params))
    assert ok
    return buf.tobytes()


class Folder:
    """Writes the files and remembers what predict should list."""

    def __init__(self, root: Path, rng: np.random.Generator) -> None:
        self.root, self.rng = root, rng
        self.kinds: Counter[str] = Counter()
        self.listed: list[bytes] = []  # relative names (bytes) predict lists
        self.n = 0

    def name(self, suffix: str | None = None) -> bytes:
        self.n += 1
        suffix = suffix or SUFFIXES[self.rng.integers(len(SUFFIXES))]
        return f"f{self.n:05d}{suffix}".encode()

    def write(self, kind: str, data: bytes, name: bytes | None = None) -> None:
        name = name or self.name()
        fd = os.open(os.path.join(os.fsencode(self.root), name), os.O_WRONLY | os.O_CREAT, 0o644)
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        self.add(kind, name)

    def add(self, kind: str, name: bytes) -> None:
        self.kinds[kind] += 1
        self.listed.append(name)

    def good(self, size: int | None = None, suffix: str | None = None) -> bytes:
        size = size or int(self.rng.integers(64, 320))
        img = draw_fundus(int(self.rng.integers(5)), size, self.rng)
        return encode(img, suffix or SUFFIXES[self.rng.integers(6)])


def hostile(root: Path, n: int, seed: int, heavy: bool = True) -> Folder:
    """About ``n`` hostile files in ``root`` (``heavy``: with the 20000x20000 PNGs, the
    6000x4000 photographs and the sparse files, which take seconds to write and decode)."""
    rng = np.random.default_rng(seed)
    f = Folder(root, rng)
    goods = [f.good(suffix=s) for s in (".png", ".jpg", ".bmp", ".tif") for _ in range(8)]
    if heavy:
        _heavy(f)
    _special(f, goods)
    _bulk(f, goods, n)
    return f


def _heavy(f: Folder) -> None:
    root, rng = f.root, f.rng
    retina = None
    try:
        from skimage import data

        retina = data.retina()
    except ImportError:
        pass
    for _ in range(2):
        f.write("black 20000x20000 PNG", black_png(20000, 20000), f.name(".png"))
    frame = np.zeros((4000, 6000, 3), np.uint8)
    if retina is not None:
        frame[:, 1000:5000] = cv2.resize(retina, (4000, 4000), interpolation=cv2.INTER_AREA)
    big = encode(frame, ".jpg", cv2.IMWRITE_JPEG_QUALITY, 90)
    for _ in range(4):
        f.write("6000x4000 photograph", big, f.name(".jpg"))
    for _ in range(3):
        f.write("black 6000x4000 PNG", black_png(6000, 4000), f.name(".png"))
    for _ in range(5):
        name = f.name(".png")
        with open(os.path.join(os.fsencode(root), name), "wb") as fh:
            fh.write(png_header(64, 64))
            fh.truncate(int(rng.integers(101, 4000)) * 1024**2)  # sparse: no disk used
        f.add("sparse file over 100 MB", name)


def _special(f: Folder, goods: list[bytes]) -> None:
    root = f.root
    for _ in range(10):
        name = f.name(".png")
        os.mkfifo(os.path.join(os.fsencode(root), name))
        f.add("FIFO", name)
    sock_name = f.name(".png")
    sock_path = os.path.join(os.fsencode(root), sock_name)
    if len(sock_path) < 100:  # the limit of a socket's path
        with socket.socket(socket.AF_UNIX) as sock:
            sock.bind(sock_path)  # stays after the socket is closed
        f.add("socket", sock_name)
    for target in ("/dev/zero", "/dev/urandom", "/dev/null"):
        name = f.name(".jpg")
        os.symlink(target, os.path.join(os.fsencode(root), name))
        f.add("link to a device", name)
    for _ in range(5):
        name = f.name(".png")
        os.symlink(name, os.path.join(os.fsencode(root), name))
        f.add("symbolic link loop", name)
        name = f.name(".png")
        os.symlink(b"nowhere/" + name, os.path.join(os.fsencode(root), name))
        f.add("dangling link", name)
        inner = f.name(".png")
        os.makedirs(os.path.join(os.fsencode(root), inner))  # a folder named like an image
        os.symlink(inner, os.path.join(os.fsencode(root), f.name(".png")))  # and a link to it
        f.write("good image in a folder named like one", goods[0], inner + b"/" + f.name(".png"))
    for _ in range(10):
        f.write("empty file", b"")
    odd_names = [b"caf\xe9", b"\xff\xfe", b"new\nline", b'comma, "quote"', b"-dash", b" space ",
                 b"x" * 240, "\u202eevil".encode(), b"tab\tname", b"back\\slash"]  # fmt: skip
    for i, stem in enumerate(odd_names * 2):
        f.write(f"odd name ({'not UTF-8' if i % 10 < 2 else 'UTF-8'})", goods[i % len(goods)],
                stem + f"{i}".encode() + (b".png" if i % 2 else b".jpg"))  # fmt: skip
    sizes = [(1, 1), (1, 3000), (3000, 1), (40, 500), (700, 100), (30, 30)]
    for w, h in sizes:
        img = np.full((h, w, 3), 180, np.uint8)
        f.write("odd size", encode(img, ".png"), f.name(".png"))


def _bulk(f: Folder, goods: list[bytes], n: int) -> None:
    rng = f.rng
    while f.n < n:
        pick = rng.integers(10)
        if pick == 0:
            f.write("random bytes", rng.bytes(int(rng.integers(1, 65536))))
        elif pick == 1:
            magic = [b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff", b"II*\x00", b"MM\x00*", b"BM"]
            body = magic[rng.integers(5)] + rng.bytes(int(rng.integers(0, 8192)))
            f.write("image signature, random bytes", body)
        elif pick == 2:
            data = goods[rng.integers(len(goods))]
            f.write("truncated", data[: int(rng.integers(1, len(data)))])
        elif pick == 3:
            data = bytearray(goods[rng.integers(len(goods))])
            for i in rng.integers(0, len(data), int(rng.integers(1, 40))):
                data[i] = int(rng.integers(256))
            f.write("corrupted bytes", bytes(data))
        elif pick == 4:
            w, h = (int(v) for v in rng.integers(1, 2**31 - 1, 2))
            if rng.random() < 0.5:
                w, h = int(rng.integers(6145, 70000)), int(rng.integers(1, 70000))
            f.write("forged PNG header", png_header(w, h), f.name(".png"))
        elif pick == 5:
            data = bytearray(goods[8 + rng.integers(8)])  # a JPEG
            sof = data.find(b"\xff\xc0")
            data[sof + 5 : sof + 9] = struct.pack(
                ">HH", *(int(v) for v in rng.integers(1, 65536, 2))
            )
            f.write("forged JPEG header", bytes(data), f.name(".jpg"))
        elif pick == 6:
            data = bytearray(goods[16 + rng.integers(8)])  # a BMP
            data[18:26] = struct.pack("<ii", *(int(v) for v in rng.integers(-(2**31), 2**31, 2)))
            f.write("forged BMP header", bytes(data), f.name(".bmp"))
        elif pick == 7:
            size = int(rng.integers(32, 400))
            kind = ["black", "white", "grey", "noise"][rng.integers(4)]
            img = (rng.integers(0, 256, (size, size, 3), dtype=np.uint8) if kind == "noise"
                   else np.full((size, size, 3), {"black": 0, "white": 255, "grey": 128}[kind],
                                np.uint8))  # fmt: skip
            f.write(f"{kind} image", encode(img, ".png"), f.name(".png"))
        else:
            f.write("good fundus image", f.good())


def export_model(root: Path) -> Path:
    """The demo recipe, pinned with operating points, and random weights beside it."""
    recipe = yaml.safe_load(Path("recipes/demo.yaml").read_text())
    points = {e: {"threshold": 0.5} for e in ("referable", "vision_threatening")}
    recipe["pinned"] = {"seed": 0, "versions": {}, "data_fingerprint": {},
                        "evaluation": {"operating_points": points}}  # fmt: skip
    target = root / "model.yaml"
    target.write_text(yaml.safe_dump(recipe))
    parsed = parse_config(Recipe, recipe, "bench")
    state = build_model(parsed.model, parsed.data.image_size, False).state_dict()
    sha = hashlib.sha256(target.read_bytes()).hexdigest()
    torch.save({"state_dict": state, "recipe_sha256": sha}, target.with_suffix(".pt"))
    return target


def run(model: Path, images: Path, out: Path, timeout: float) -> tuple[int, str, float, float]:
    """``drsearch predict`` as a child: exit code, its output, peak RSS in MB, wall seconds
    (killed after ``timeout`` seconds: a hang)."""
    start = time.perf_counter()
    with tempfile.TemporaryFile() as log:
        child = subprocess.Popen(
            [sys.executable, "-m", "drsearch.cli", "predict", str(model), str(images), "-o",
             str(out)], stdout=log, stderr=subprocess.STDOUT,
        )  # fmt: skip
        timer = threading.Timer(timeout, child.kill)
        timer.start()
        _, status, usage = os.wait4(child.pid, 0)
        timer.cancel()
        child.returncode = os.waitstatus_to_exitcode(status)
        log.seek(0)
        text = log.read().decode("utf-8", "replace")
    if time.perf_counter() - start >= timeout:
        text += f"\n(killed after {timeout:.0f} s: it hung)"
    return child.returncode, text, usage.ru_maxrss / 1024, time.perf_counter() - start


def kind(message: str) -> str:
    return re.sub(r"\d+", "N", message)[:70]


def check(what: str, rc: int, text: str, out: Path, expected: int) -> tuple[bool, list[dict]]:
    rows = []
    if out.is_file():
        with out.open(newline="", encoding="utf-8") as fh:
            rows = list(csv.DictReader(fh))
    problems = []
    if rc != 0:
        problems.append(f"exit code {rc}")
    if "Traceback" in text:
        problems.append("a traceback")
    if "it hung" in text:
        problems.append("it hung")
    if len(rows) != expected:
        problems.append(f"{len(rows)} rows for {expected} files")
    for r in rows:
        states = [bool(r["grade"]), bool(r.get("flags", "")), bool(r["error"])]
        if sum(states) != 1:
            problems.append(f"row {r['id']!r}: graded {states[0]}, flags {r['flags']!r}, "
                            f"error {r['error']!r}")  # fmt: skip
            break
    for p in problems:
        print(f"  FAIL ({what}): {p}")
    if problems:
        print(text[-3000:])
    return not problems, rows


def summary(rows: list[dict]) -> None:
    graded = sum(bool(r["grade"]) for r in rows)
    flags = Counter(f for r in rows for f in r.get("flags", "").split(";") if f)
    errors = Counter(kind(r["error"]) for r in rows if r["error"])
    flagged = sum(bool(r.get("flags")) for r in rows)
    print(f"  rows {len(rows)}: graded {graded}, flagged {flagged}, errors {sum(errors.values())}")
    print(f"  flags: {dict(flags.most_common())}")
    for message, count in errors.most_common():
        print(f"  {count:5d}  {message}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--keep", type=Path, help="write the files here (kept) instead")
    parser.add_argument("--timeout", type=float, default=600, help="seconds before a run is "
                        "killed as hung (default 600)")  # fmt: skip
    args = parser.parse_args()
    root = Path(args.keep or tempfile.mkdtemp(prefix="pf-"))
    ok = True
    try:
        folder = root / "clinic"
        folder.mkdir(parents=True)
        start = time.perf_counter()
        made = hostile(folder, args.n, args.seed)
        model = export_model(root)
        print(f"{len(made.listed)} files listed in "
              f"{time.perf_counter() - start:.0f} s under {root}")  # fmt: skip
        for k, v in sorted(made.kinds.items(), key=lambda kv: -kv[1]):
            print(f"  {v:5d}  {k}")
        good = root / "good"
        good.mkdir()
        for i in range(50):
            (good / f"g{i}.png").write_bytes(made.good(256, ".png"))
        table = root / "list.csv"
        names = [n.decode() for n in made.listed if _utf8(n)] + ["/", "missing.png", "/dev/zero"]
        with table.open("w", newline="", encoding="utf-8") as fh:
            writer = csv.writer(fh)
            writer.writerow(["path"])
            writer.writerows([f"clinic/{n}" if not n.startswith("/") and n != "missing.png"
                              else n] for n in names)  # fmt: skip
        for what, images, expected in [
            ("baseline: 50 good PNGs", good, 50),
            ("hostile folder", folder, len(made.listed)),
            ("hostile CSV", table, len(names)),
        ]:
            out = root / f"{what.split()[0]}-{what.split()[-1]}.csv"
            rc, text, peak, wall = run(model, images, out, args.timeout)
            print(f"\n{what}: exit {rc}, peak RSS {peak:.0f} MB, wall {wall:.1f} s")
            passed, rows = check(what, rc, text, out, expected)
            ok &= passed
            summary(rows)
    finally:
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)
    print("\nall checks passed" if ok else "\nSOME CHECKS FAILED")
    sys.exit(0 if ok else 1)


def _utf8(name: bytes) -> bool:
    try:
        name.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


if __name__ == "__main__":
    main()
