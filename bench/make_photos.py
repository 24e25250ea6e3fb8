#!/usr/bin/env python3
"""Photos of mixed sizes, all larger than a 224 px model input, for bench/vision's input-pipeline runs.

  make_photos.py SOURCE_DIR OUT_DIR [COUNT]

The machine holds no real photos larger than 224 px (shared/data/cats_vs_dogs_small is 100x100), so each
file is a mosaic of those real 100x100 photos, tiled in a seeded random order to one of six sizes from
400x300 to 1600x1200 (every other one portrait), and saved as a baseline JPEG at quality 90 (4:2:0), as
cameras and web pages save them. Tiles keep the photos' own texture, so the entropy decoding has real
work; the seams are the only thing no camera makes. Prints the written paths, one per line.
"""
import glob, os, random, sys

from PIL import Image

SIZES = [(400, 300), (500, 375), (640, 480), (800, 600), (1024, 768), (1600, 1200)]


def main():
    source, out = sys.argv[1], sys.argv[2]
    count = int(sys.argv[3]) if len(sys.argv) > 3 else 48
    tiles = sorted(glob.glob(os.path.join(source, "**", "*.jpg"), recursive=True))
    if not tiles:
        sys.exit(f"make_photos.py: no .jpg under {source}")
    rng = random.Random(0)
    os.makedirs(out, exist_ok=True)
    for i in range(count):
        width, height = SIZES[i % len(SIZES)]
        if i % 2:
            width, height = height, width
        canvas = Image.new("RGB", (width, height))
        for y in range(0, height, 100):
            for x in range(0, width, 100):
                with Image.open(rng.choice(tiles)) as tile:
                    canvas.paste(tile.convert("RGB").resize((100, 100)), (x, y))
        path = os.path.join(out, f"photo_{i:03d}_{width}x{height}.jpg")
        canvas.save(path, quality=90, subsampling="4:2:0")
        print(path)


if __name__ == "__main__":
    main()
