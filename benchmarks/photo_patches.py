"""A development competition of another kind than Fashion-MNIST: larger RGB photo patches of varied size.

    python benchmarks/photo_patches.py /tmp/photo_patches [--train 2000] [--test 800] [--seed 0]
    python benchmarks/bench_accuracy.py /tmp/photo_patches --epochs 3 --only kit --set ...

Eight of scikit-image's bundled colour photos (astronaut, chelsea, coffee, rocket, immunohistochemistry, retina,
hubble_deep_field, colorwheel) are the classes; an image is a patch of one of them: a random region 12-30 % of
the photo's short side (aspect 0.8-1.25), at a random place, mirrored half the time, saved at 96-160 px on its
longer side, with its brightness and contrast moved by up to 30 %, Gaussian noise (sigma 6-20) and JPEG quality
30-80. Which photo a patch comes from is a texture-and-colour question over objects that do not fill the frame,
the opposite of Fashion-MNIST's centred 28 px products. Writes the same layout as fashion_dev.py: OUT/train.csv
(image_id,label), OUT/train/*.jpg, OUT/test/*.jpg, OUT/sample_submission.csv, and OUT_solution.csv beside it.
"""
from __future__ import annotations

import argparse
import os

import numpy as np
import pandas as pd
from PIL import Image

PHOTOS = ["astronaut", "chelsea", "coffee", "rocket", "immunohistochemistry", "retina", "hubble_deep_field",
          "colorwheel"]


def patch(photo: np.ndarray, rng: np.random.Generator) -> Image.Image:
    h, w = photo.shape[:2]
    side = rng.uniform(0.12, 0.30) * min(h, w)
    aspect = rng.uniform(0.8, 1.25)
    ph, pw = int(side / np.sqrt(aspect)), int(side * np.sqrt(aspect))
    y, x = rng.integers(0, h - ph + 1), rng.integers(0, w - pw + 1)
    img = photo[y:y + ph, x:x + pw].astype(np.float32)
    if rng.random() < 0.5:
        img = img[:, ::-1]
    img = (img - img.mean()) * rng.uniform(0.7, 1.3) + img.mean() * rng.uniform(0.7, 1.3)
    img = img + rng.normal(0, rng.uniform(6, 20), img.shape)
    out = Image.fromarray(np.clip(img, 0, 255).astype(np.uint8))
    longer = int(rng.integers(96, 161))
    scale = longer / max(pw, ph)
    return out.resize((max(8, round(pw * scale)), max(8, round(ph * scale))), Image.BILINEAR)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("out")
    ap.add_argument("--train", type=int, default=2000)
    ap.add_argument("--test", type=int, default=800)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    from skimage import data
    photos = [getattr(data, name)()[..., :3] for name in PHOTOS]
    rng = np.random.default_rng(a.seed)
    os.makedirs(os.path.join(a.out, "train"), exist_ok=True)
    os.makedirs(os.path.join(a.out, "test"), exist_ok=True)
    rows = {"train": [], "test": []}
    for split, n in (("train", a.train), ("test", a.test)):
        for i in range(n):
            k = i % len(PHOTOS)
            image_id = f"{split[:2]}{i:05d}"
            patch(photos[k], rng).save(os.path.join(a.out, split, f"{image_id}.jpg"),
                                       quality=int(rng.integers(30, 81)))
            rows[split].append((image_id, PHOTOS[k]))
    pd.DataFrame(rows["train"], columns=["image_id", "label"]).to_csv(os.path.join(a.out, "train.csv"), index=False)
    test = pd.DataFrame(rows["test"], columns=["image_id", "label"])
    test.assign(label=PHOTOS[0])[["image_id", "label"]].to_csv(os.path.join(a.out, "sample_submission.csv"),
                                                                index=False)
    test.assign(Usage=np.where(np.arange(len(test)) % 3 == 0, "Public", "Private")).to_csv(
        f"{a.out.rstrip('/')}_solution.csv", index=False)
    print(f"{a.out}: {a.train} training and {a.test} test patches of {len(PHOTOS)} photos; answers in "
          f"{a.out.rstrip('/')}_solution.csv")


if __name__ == "__main__":
    main()
