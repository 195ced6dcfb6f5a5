"""The image scan (kit.data.scan) on a folder of small PNGs: images/s on the first run, which decodes every file,
and on the second, which finds every verdict in the cache and only stats the files; also the first run with one
thread, to show what the threads buy. Everything lives in a temporary folder (images and KIT_CACHE_DIR).

    python benchmarks/bench_scan.py --images 3000 --size 64 --workers 2
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing kit


def make_folder(root: Path, n: int, size: int, classes: int = 4) -> None:
    rng = np.random.default_rng(0)
    base = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
    for i in range(n):
        folder = root / "train" / f"class_{i % classes}"
        folder.mkdir(parents=True, exist_ok=True)
        img = np.roll(base, i, axis=1)  # a distinct file each time, cheap to make
        Image.fromarray(img).save(folder / f"img_{i:05d}.png")


def timed_scan(sources, workers: int, cache: Path | None) -> float:
    """Seconds for one scan; `cache` (the scan cache folder) is emptied first to time a first run."""
    from kit.data.scan import scan_sources
    if cache is not None and cache.exists():
        for f in cache.iterdir():
            f.unlink()
    t0 = time.perf_counter()
    bad = scan_sources(sources, workers=workers, progress=False)
    seconds = time.perf_counter() - t0
    assert bad == [], bad[:3]
    return seconds


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=3000)
    ap.add_argument("--size", type=int, default=64, help="side of each PNG, pixels")
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--rounds", type=int, default=3, help="the methods alternate; the best round of each counts")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        os.environ["KIT_CACHE_DIR"] = str(Path(tmp) / "cache")
        cache = Path(tmp) / "cache" / "scan"
        from kit.data import load_sources
        from kit.recipe import DataSpec
        import kit.runtime  # noqa: F401  (torch: imported by the scan's first call, not timed)
        import rich.console  # noqa: F401
        t0 = time.perf_counter()
        make_folder(Path(tmp) / "data", args.images, args.size)
        print(f"made {args.images} PNGs of {args.size}x{args.size} in {time.perf_counter() - t0:.1f} s")
        sources = load_sources(DataSpec(source="imagefolder", root=str(Path(tmp) / "data")))
        n = len(sources.train)
        best = {"one": [], "first": [], "cached": []}
        for _ in range(args.rounds):
            best["one"].append(timed_scan(sources, 1, cache))
            best["first"].append(timed_scan(sources, args.workers, cache))
            best["cached"].append(timed_scan(sources, args.workers, None))  # the cache the line above wrote
    one, first, cached = (min(best[k]) for k in ("one", "first", "cached"))
    print(f"first run, 1 thread:   {n / one:10.0f} images/s ({one:.3f} s)")
    print(f"first run, {args.workers} threads:  {n / first:10.0f} images/s ({first:.3f} s), "
          f"{one / first:.2f}x one thread")
    print(f"cached run, {args.workers} threads: {n / cached:10.0f} images/s ({cached:.3f} s)")
    print(f"cached / first run: {first / cached:.1f}x faster")


if __name__ == "__main__":
    main()
