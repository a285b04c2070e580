"""The image files of the bad-input corpus (tests/test_reliability_inputs.py): what people upload, broken or
odd, each with what the server must do: refuse it with a message (a regular expression), or accept it
(converted) and give outputs of a known size (H×W at resolution 256)."""
from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import PIL.Image

H, W = 256, 320  # the corpus pictures' size; at resolution 256 the outputs are 256×320


@dataclass(frozen=True)
class CorpusFile:
    name: str
    path: Path
    message: str | None  # None: accepted
    size: tuple[int, int] | None = (H, W)  # the outputs' H×W when accepted
    note: str | None = None  # a warning the server shows when it accepts it

    @property
    def accepted(self) -> bool:
        return self.message is None


def picture(height: int = H, width: int = W) -> np.ndarray:
    """An RGB picture with edges (so Canny finds something) that differs left/right and top/bottom."""
    rng = np.random.default_rng(0)
    img = np.full((height, width, 3), 220, np.uint8)
    img[height // 4: height // 2, width // 5: width // 2] = (200, 40, 40)
    img[height // 2:, width // 2:] = (30, 60, 200)
    img[::17, :] = 0
    img += rng.integers(0, 8, img.shape, dtype=np.uint8)
    return img


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png_declaring(width: int, height: int, pixels: bytes | None = None, grey: bool = False) -> bytes:
    """A PNG whose header declares width×height; its pixel data is `pixels` (compressed here) or almost none."""
    header = struct.pack(">IIBBBBB", width, height, 8, 0 if grey else 2, 0, 0, 0)
    data = zlib.compress(pixels if pixels is not None else b"\x00" * 16, 9)
    return b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", header) + _chunk(b"IDAT", data) + _chunk(b"IEND", b"")


def zero_rows(width: int, height: int) -> bytes:
    """The filtered scanlines of an all-black greyscale image (what a real decompression bomb holds)."""
    return (b"\x00" * (width + 1)) * height


def build_corpus(folder: Path) -> dict[str, CorpusFile]:
    folder.mkdir(parents=True, exist_ok=True)
    files: dict[str, CorpusFile] = {}
    rgb = picture()
    pil = PIL.Image.fromarray(rgb)

    def add(name: str, message: str | None, write, size=(H, W), note=None) -> None:
        path = folder / name
        write(path)
        files[name] = CorpusFile(name, path, message, size if message is None else None, note)

    def data(content: bytes):
        return lambda path: path.write_bytes(content)

    def save(image: PIL.Image.Image, **options):
        return lambda path: image.save(path, **options)

    def truncated(fmt: str, keep: float):
        def write(path: Path) -> None:
            noisy = PIL.Image.fromarray(np.random.default_rng(1).integers(0, 255, (H, W, 3), dtype=np.uint8))
            noisy.save(path, format=fmt)
            content = path.read_bytes()
            path.write_bytes(content[: int(len(content) * keep)])
        return write

    # refused
    add("empty.png", r"empty.png is empty \(0 bytes\)", data(b""))
    add("truncated.png", r"Could not read truncated.png: the file is truncated or corrupt", truncated("PNG", 0.6))
    add("truncated.jpg", r"Could not read truncated.jpg: the file is truncated or corrupt", truncated("JPEG", 0.5))
    add("header_only.png", r"header_only.png is 64×64 px|truncated or corrupt", data(png_declaring(64, 64)))
    add("text.png", r"text.png is a text file, not an image", data(b"hello, this is not a picture\n"))
    add("page.jpg", r"page.jpg is a text file, not an image", data(b"<html><body>404 Not Found</body></html>"))
    add("json.png", r"json.png is a text file", data(b'{"image": "base64..."}'))
    add("random.png", r"Could not read random.png: it is not in an image format the server reads",
        data(np.random.default_rng(2).integers(0, 255, 4096, dtype=np.uint8).tobytes()))
    svg = b'<?xml version="1.0"?><svg xmlns="http://www.w3.org/2000/svg" width="64" height="64"><rect width="64" height="64"/></svg>'
    add("drawing.svg", r"drawing.svg is an SVG \(vector\) drawing; .*export it as PNG", data(svg))
    add("svg_named.png", r"svg_named.png is an SVG \(vector\) drawing", data(svg))
    add("one_pixel.png", r"1×1 px; at least 16 px per side", save(PIL.Image.new("RGB", (1, 1), (255, 0, 0))))
    add("tiny_8x8.png", r"8×8 px; at least 16 px per side", save(PIL.Image.new("RGB", (8, 8))))
    add("sixteen_bit.png", r"sixteen_bit.png has I;16 pixels .*only 8-bit images are accepted",
        save(PIL.Image.fromarray(np.full((64, 64), 40000, np.uint16))))
    add("sixteen_bit.tiff", r"sixteen_bit.tiff has I;16 pixels", save(PIL.Image.fromarray(np.full((64, 64), 40000, np.uint16))))
    add("float.tiff", r"float.tiff has F pixels", save(PIL.Image.fromarray(np.full((64, 64), 0.5, np.float32))))
    add("int32.tiff", r"int32.tiff has I pixels", save(PIL.Image.fromarray(np.full((64, 64), 70000, np.int32))))
    add("bomb_declared.png", r"bomb_declared.png declares a size of hundreds of millions of pixels; at most 4096",
        data(png_declaring(50_000, 50_000)))
    add("bomb_8000.png", r"bomb_8000.png is 8000×8000 px; at most 4096 px per side",
        data(png_declaring(8000, 8000, zero_rows(8000, 8000), grey=True)))
    add("too_wide.png", r"too_wide.png is 5000×64 px; at most 4096 px per side", save(PIL.Image.new("RGB", (5000, 64))))
    add("too_tall.jpg", r"too_tall.jpg is 32×4100 px; at most 4096", save(PIL.Image.new("RGB", (32, 4100))))
    add("thin.png", r"cannot resize a 3000×20 image to resolution 256", save(PIL.Image.new("RGB", (3000, 20), "white")))

    # accepted (converted)
    add("rgba.png", None, save(PIL.Image.fromarray(np.dstack([rgb, np.full((H, W), 128, np.uint8)]))))
    add("grey.png", None, save(pil.convert("L")))
    add("grey_alpha.png", None, save(pil.convert("LA")))
    add("one_bit.png", None, save(pil.convert("1")))
    palette = pil.convert("P", palette=PIL.Image.Palette.ADAPTIVE, colors=16)
    add("palette.png", None, save(palette))
    add("palette_transparent.png", None, save(palette, transparency=0))
    add("cmyk.jpg", None, save(pil.convert("CMYK"), quality=95))
    exif = PIL.Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90° clockwise to display
    add("exif_rotated.jpg", None, save(pil, exif=exif, quality=95), size=(W, H))
    frames = [PIL.Image.fromarray(np.roll(rgb, 40 * k, axis=1)) for k in range(3)]
    add("animated.gif", None, save(frames[0], save_all=True, append_images=frames[1:], duration=100),
        note="animated.gif is animated (3 frames): its first frame is used.")
    add("animated.webp", None, save(frames[0], save_all=True, append_images=frames[1:], duration=100),
        note="animated.webp is animated (3 frames): its first frame is used.")
    add("animated.png", None, save(frames[0], save_all=True, append_images=frames[1:], duration=100),
        note="animated.png is animated (3 frames): its first frame is used.")
    add("jpeg_named.png", None, save(pil, format="JPEG"))
    add("picture.bmp", None, save(pil))
    add("picture.tiff", None, save(pil))
    add("small_16.png", None, save(PIL.Image.fromarray(picture(16, 20))), size=(256, 320))
    return files
