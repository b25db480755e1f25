"""Stores PNGs for docs/: a 256-colour palette, downscaled until at most 400 KB.

    python docs/shrink_png.py SOURCE.png DEST.png [SOURCE.png DEST.png ...]
"""

import io
import sys

from PIL import Image

LIMIT = 400_000  # bytes


def shrink(source: str, dest: str, limit: int = LIMIT) -> None:
    image = Image.open(source).convert("RGB")
    scale = 1.0
    while True:
        size = (round(image.width * scale), round(image.height * scale))
        small = image if scale == 1.0 else image.resize(size, Image.LANCZOS)
        palette = small.quantize(256, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE)
        buffer = io.BytesIO()
        palette.save(buffer, format="PNG", optimize=True)
        if buffer.tell() <= limit or scale < 0.4:
            with open(dest, "wb") as f:
                f.write(buffer.getvalue())
            print(f"{dest}: {image.size} -> {size}, {buffer.tell() // 1000} KB")
            return
        scale *= 0.9


if __name__ == "__main__":
    pairs = sys.argv[1:]
    if not pairs or len(pairs) % 2:
        sys.exit("usage: python docs/shrink_png.py SOURCE.png DEST.png [SOURCE DEST ...]")
    for source, dest in zip(pairs[::2], pairs[1::2]):
        shrink(source, dest)
