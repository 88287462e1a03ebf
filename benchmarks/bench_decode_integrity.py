"""Cost of the integrity checks in `bone_age.imaging.decode_radiograph`.

  python benchmarks/bench_decode_integrity.py --output_dir=bench_output [--num_images=8] [--repeats=5]

Writes `<output_dir>/decode_integrity.json`. Inputs: realistic-size
(2080x1600) phantom radiographs, as PNG and as JPEG (quality 90), in memory.

Measured in the same run, per image, in process CPU time (user + system):
  * bare: cv2.imdecode(GRAYSCALE) + `imaging.normalize_to_uint8`, the decode
    without any check;
  * checked: `imaging.decode_radiograph` (PNG: chunk walk with every CRC;
    JPEG: marker walk, then simplejpeg in strict mode, which raises on
    libjpeg's corrupt-data warnings);
  * checked without simplejpeg (JPEG only): the fallback that has
    pylibjpeg-libjpeg check the stream before cv2 decodes it.
Each figure is the median of `--repeats` passes over all images, with the
spread (min-max) beside it. Target: checked / bare <= 1.1 for PNG and JPEG.
"""

import argparse
import json
import pathlib
import statistics
import sys
import tempfile
import time

import cv2
import numpy as np

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

from bone_age import imaging  # pylint: disable=g-import-not-at-top,wrong-import-position
from bone_age import phantoms  # pylint: disable=g-import-not-at-top,wrong-import-position


def _images(num_images: int) -> list[np.ndarray]:
  with tempfile.TemporaryDirectory() as folder:
    phantoms.write_dataset(folder, num_images, seed=0, height_px=2080, width_px=1600)
    return [cv2.imread(str(path), cv2.IMREAD_GRAYSCALE) for path in sorted(pathlib.Path(folder, "images").glob("*.png"))]


def _cpu_ms_per_image(decode, blobs: list[bytes], repeats: int) -> dict:
  passes = []
  for _ in range(repeats):
    start = time.process_time()
    for blob in blobs:
      decode(blob)
    passes.append((time.process_time() - start) / len(blobs) * 1000.0)
  return {"median_ms": statistics.median(passes), "min_ms": min(passes), "max_ms": max(passes)}


def _bare(blob: bytes) -> np.ndarray:
  return imaging.normalize_to_uint8(cv2.imdecode(np.frombuffer(blob, np.uint8), cv2.IMREAD_GRAYSCALE))


def _checked(blob: bytes) -> np.ndarray:
  return imaging.decode_radiograph(blob, "bench").pixels


def _checked_without_simplejpeg(blob: bytes) -> np.ndarray:
  saved = sys.modules.get("simplejpeg")
  sys.modules["simplejpeg"] = None  # import simplejpeg -> ImportError: the fallback path.
  try:
    return _checked(blob)
  finally:
    if saved is None:
      del sys.modules["simplejpeg"]
    else:
      sys.modules["simplejpeg"] = saved


def main(argv=None) -> dict:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--output_dir", default="bench_output")
  parser.add_argument("--num_images", type=int, default=8)
  parser.add_argument("--repeats", type=int, default=5)
  args = parser.parse_args(argv)
  images = _images(args.num_images)
  blobs = {"png": [cv2.imencode(".png", image)[1].tobytes() for image in images],
           "jpeg": [cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, 90])[1].tobytes() for image in images]}
  results = {"num_images": len(images), "size_px": list(images[0].shape), "repeats": args.repeats}
  for image_format, data in blobs.items():
    row = {"bare": _cpu_ms_per_image(_bare, data, args.repeats),
           "checked": _cpu_ms_per_image(_checked, data, args.repeats)}
    if image_format == "jpeg":
      row["checked_without_simplejpeg"] = _cpu_ms_per_image(_checked_without_simplejpeg, data, args.repeats)
    for name in list(row):
      row[f"{name}_over_bare"] = row[name]["median_ms"] / row["bare"]["median_ms"]
    results[image_format] = row
  out = pathlib.Path(args.output_dir)
  out.mkdir(parents=True, exist_ok=True)
  (out / "decode_integrity.json").write_text(json.dumps(results, indent=2))
  for image_format in blobs:
    row = results[image_format]
    for name in ("bare", "checked", "checked_without_simplejpeg"):
      if name in row:
        timing = row[name]
        print(f"{image_format:5s} {name:27s} {timing['median_ms']:7.2f} ms/image CPU "
              f"(spread {timing['min_ms']:.2f}-{timing['max_ms']:.2f})  x{row[name + '_over_bare']:.3f} of bare")
  return results


if __name__ == "__main__":
  main()
