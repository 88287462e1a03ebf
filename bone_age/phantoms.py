"""Synthetic hand radiographs whose bone age is known and visible.

The project cannot ship RSNA images, yet the whole chain (dataset build,
training, scoring, Grad-CAM checks, benchmarks) needs labeled radiographs.
A phantom is a left-hand PA view drawn by `phantom_drawing` whose skeleton
matures with bone age and sex, under the nuisance real radiographs have
(rotation, shift, exposure, background gradient, collimation border, an "L"
side marker, noise). Each phantom comes with the mask of where its age
information lies, and everything is deterministic by seed.

`write_dataset` writes the generic layout every reader of this project
accepts: `labels.csv` (id,boneage,male with True/False, as RSNA's train.csv),
`images/<id>.png` (or `.dcm`) and `masks/<id>.png`.

  boneage-phantoms --output_dir=/tmp/phantoms --num_images=200 --seed=0
"""

import csv
import dataclasses
import datetime
import json
import os
import pathlib
import sys
import time

import cv2
import numpy as np

from bone_age import cli

from bone_age import phantom_drawing
from bone_age import schema

IMAGE_FORMATS = ("png", "dicom", "mixed")
LABELS_FILE = "labels.csv"
IMAGES_DIR = "images"
MASKS_DIR = "masks"

# RSNA training labels: mean 127 months, SD 41, whole months, 54% boys.
_BONEAGE_MEAN_MONTHS = 127.0
_BONEAGE_SD_MONTHS = 41.0
_BONEAGE_RANGE_MONTHS = (6.0, 228.0)
_MALE_FRACTION = 0.54
# Drawing above this size costs time without adding information: larger
# phantoms are drawn at this size and upsampled (like a detector's blur).
_MAX_DRAW_PX = 640
# Fast zlib level with the "up" filter: ~2x faster than the default filters at a smaller size.
_PNG_PARAMS = [cv2.IMWRITE_PNG_COMPRESSION, 1, cv2.IMWRITE_PNG_FILTER, cv2.IMWRITE_PNG_FILTER_UP]
# Independent random streams derived from the user's seed.
_LABEL_STREAM, _IMAGE_STREAM, _DICOM_STREAM = 1, 2, 3
_CHRONOLOGICAL_SD_MONTHS = 12.0  # |BA - CA| in healthy children is mostly within 2 SD ~ 2 years
_DAYS_PER_MONTH = 365.25 / 12.0
_FINGER_TILT_DEG = 1.5  # independent tilt of each digit on top of the fan
_MAX_12_BIT = 4095


@dataclasses.dataclass(frozen=True)
class Phantom:
  """One synthetic radiograph and where its age information is drawn.

  Attributes:
    image: (H, W) uint8, bone bright on a dark background.
    age_signal_mask: (H, W) bool, True on the growth-plate zones (epiphyses
      and gaps) and carpal ossification centres, in final image coordinates.
  """
  image: np.ndarray
  age_signal_mask: np.ndarray


def _draw_size(height_px: int, width_px: int) -> tuple[int, int]:
  scale = min(1.0, _MAX_DRAW_PX / max(height_px, width_px))
  return max(1, int(round(height_px * scale))), max(1, int(round(width_px * scale)))


def _random_pose(rng, height_px: int, width_px: int) -> np.ndarray:
  """Affine matrix for a rotation of up to 15 degrees, a shift and a mild zoom."""
  angle_deg = rng.uniform(-15.0, 15.0)
  zoom = rng.uniform(0.92, 1.05)
  centre = (width_px / 2.0, height_px / 2.0)
  matrix = cv2.getRotationMatrix2D(centre, angle_deg, zoom)
  matrix[0, 2] += rng.uniform(-0.06, 0.06) * width_px
  matrix[1, 2] += rng.uniform(-0.05, 0.05) * height_px
  return matrix


def _grey_levels(rng, tissue: np.ndarray, bone: np.ndarray, unit_px: float) -> np.ndarray:
  """Coverage layers -> float32 grey levels: soft tissue over background, bone on top."""
  background = rng.uniform(4.0, 24.0)
  tissue_level = rng.uniform(50.0, 85.0)
  bone_level = rng.uniform(105.0, 145.0)
  tissue_f = cv2.GaussianBlur(tissue, (0, 0), 3.0 * unit_px).astype(np.float32)
  bone_f = cv2.GaussianBlur(bone, (0, 0), 0.7 * unit_px).astype(np.float32)
  # Mottled mineralisation: a smooth random field modulates bone brightness by a few percent.
  height, width = bone.shape
  texture = rng.standard_normal((max(2, height // 12), max(2, width // 12)), dtype=np.float32)
  bone_f *= 1.0 + 0.07 * cv2.resize(texture, (width, height), interpolation=cv2.INTER_CUBIC)
  return np.float32(background) + tissue_f * np.float32(tissue_level / 255.0) + bone_f * np.float32(bone_level / 255.0)


def _expose(rng, image: np.ndarray) -> np.ndarray:
  """Detector and exposure: heel-effect gradient, then gain and gamma."""
  height, width = image.shape
  ramp_x = np.linspace(-0.5, 0.5, width, dtype=np.float32)[None, :] * np.float32(rng.uniform(-20.0, 20.0))
  ramp_y = np.linspace(-0.5, 0.5, height, dtype=np.float32)[:, None] * np.float32(rng.uniform(-20.0, 20.0))
  image = np.clip(image + ramp_x + ramp_y, 0.0, 255.0)
  return np.float32(255.0 * rng.uniform(0.85, 1.15)) * (image / np.float32(255.0)) ** np.float32(rng.uniform(0.8, 1.25))


def _add_collimation(rng, image: np.ndarray, mask: np.ndarray) -> None:
  """Unexposed bands on up to two sides, bright like a collimator shadow."""
  height, width = image.shape
  sides = rng.permutation(4)[:rng.choice(3, p=(0.5, 0.35, 0.15))]  # half the films show no border
  level = rng.uniform(150.0, 240.0)
  for side in sides:
    frac = rng.uniform(0.02, 0.07)
    band_y, band_x = max(1, int(frac * height)), max(1, int(frac * width))
    region = {0: np.s_[:band_y, :], 1: np.s_[-band_y:, :], 2: np.s_[:, :band_x], 3: np.s_[:, -band_x:]}[int(side)]
    image[region] = level
    mask[region] = False


def _add_side_marker(rng, image: np.ndarray, mask: np.ndarray) -> None:
  """A bright 'L' lead marker in a top corner, as technologists place it."""
  height, width = image.shape
  font_scale = height / 450.0 * rng.uniform(0.8, 1.2)
  thickness = max(1, int(round(height / 160.0)))
  (text_w, text_h), _ = cv2.getTextSize("L", cv2.FONT_HERSHEY_SIMPLEX, font_scale, thickness)
  margin = int(0.08 * min(height, width))
  x = margin if rng.random() < 0.5 else width - margin - text_w
  y = margin + text_h
  coverage = np.zeros(image.shape, np.uint8)  # cv2 draws text on 8-bit images only
  cv2.putText(coverage, "L", (x, y), cv2.FONT_HERSHEY_SIMPLEX, font_scale, 255, thickness, cv2.LINE_AA)
  alpha = coverage.astype(np.float32) / 255.0
  image += alpha * (np.float32(rng.uniform(225.0, 255.0)) - image)
  mask[max(0, y - text_h - thickness):y + thickness, max(0, x - thickness):x + text_w + thickness] = False


def render_phantom(boneage_months: float, male: bool, seed: int, *, height_px: int = 520,
                   width_px: int = 400) -> Phantom:
  """Draws one phantom radiograph of a given bone age and sex.

  Args:
    boneage_months: Bone age the skeleton shows (0-240).
    male: Sex; girls' skeletons are drawn more mature for the same bone age.
    seed: All nuisance comes from this seed: same arguments, same pixels.
    height_px, width_px: Output size. Sizes above 640 px are drawn at 640 and
      upsampled, which keeps 2080 x 1600 phantoms fast to make.

  Returns:
    The Phantom (image and age-signal mask, both (height_px, width_px)).
  """
  if height_px < 16 or width_px < 16:
    raise ValueError(f"phantoms need at least 16 x 16 pixels, got {height_px} x {width_px}")
  rng = np.random.default_rng(seed)
  draw_h, draw_w = _draw_size(height_px, width_px)
  tissue, bone, mask_u8 = phantom_drawing.draw_anatomy(
      boneage_months, male, draw_h, draw_w, finger_spread=rng.uniform(0.8, 1.25),
      finger_tilts_deg=rng.uniform(-_FINGER_TILT_DEG, _FINGER_TILT_DEG, len(phantom_drawing.FINGERS)))
  unit_px = min(draw_h / phantom_drawing.REFERENCE_HEIGHT, draw_w / phantom_drawing.REFERENCE_WIDTH)

  image = _grey_levels(rng, tissue, bone, unit_px)
  pose = _random_pose(rng, draw_h, draw_w)
  # Replicating the border keeps the forearm running off the film whatever the pose.
  image = cv2.warpAffine(image, pose, (draw_w, draw_h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
  mask = cv2.warpAffine(mask_u8, pose, (draw_w, draw_h), flags=cv2.INTER_NEAREST) >= 128

  image = _expose(rng, image)
  _add_collimation(rng, image, mask)
  _add_side_marker(rng, image, mask)
  image += rng.standard_normal((draw_h, draw_w), dtype=np.float32) * np.float32(rng.uniform(2.0, 6.0))

  image = np.clip(image + 0.5, 0.0, 255.0).astype(np.uint8)
  if (draw_h, draw_w) != (height_px, width_px):
    # Upsampling 8-bit pixels is what keeps 2080 x 1600 phantoms cheap.
    image = cv2.resize(image, (width_px, height_px), interpolation=cv2.INTER_LINEAR)
    mask = cv2.resize(mask.astype(np.uint8), (width_px, height_px), interpolation=cv2.INTER_NEAREST) > 0
  return Phantom(image=image, age_signal_mask=mask)


def image_seed(seed: int, index: int) -> int:
  """The seed of image `index` of a dataset made with `seed` (order-independent)."""
  return int(np.random.SeedSequence([seed, _IMAGE_STREAM, index]).generate_state(1, np.uint64)[0])


def sample_labels(num_images: int, seed: int, *, first_id: int = 1) -> list[tuple[str, float, bool]]:
  """RSNA-like labels: bone age ~ N(127, 41) months, whole months in [6, 228], 54% male.

  Returns:
    (id, boneage_months, male) per image; ids are the integers from first_id
    as strings, like RSNA ids.
  """
  if num_images < 0:
    raise ValueError(f"num_images must be >= 0, got {num_images}")
  rng = np.random.default_rng(np.random.SeedSequence([seed, _LABEL_STREAM]))
  ages = np.clip(np.round(rng.normal(_BONEAGE_MEAN_MONTHS, _BONEAGE_SD_MONTHS, num_images)), *_BONEAGE_RANGE_MONTHS)
  males = rng.random(num_images) < _MALE_FRACTION
  return [(str(first_id + i), float(a), bool(m)) for i, (a, m) in enumerate(zip(ages, males))]


def _dicom_bytes(pixels: np.ndarray, example_id: str, boneage_months: float, male: bool, inverted: bool,
                 rng) -> bytes:
  """The phantom as a 12-bit DICOM with sex and dates so that CA ~ BA.

  inverted writes MONOCHROME1 (stored high = dark), as many CR detectors do,
  so readers must invert it to get the same picture back.
  """
  from bone_age import dicom_writer  # pylint: disable=g-import-not-at-top  (pydicom only when DICOM is asked for)

  study_date = datetime.date(2019, 1, 1) + datetime.timedelta(days=int(rng.integers(0, 730)))
  chronological_months = max(1.0, boneage_months + rng.normal(0.0, _CHRONOLOGICAL_SD_MONTHS))
  birth_date = study_date - datetime.timedelta(days=int(round(chronological_months * _DAYS_PER_MONTH)))
  stored = pixels.astype(np.uint16) * 16  # 8-bit grey levels spread over 12 bits
  if inverted:
    stored = _MAX_12_BIT - stored
  return dicom_writer.encode_dicom(stored, photometric="MONOCHROME1" if inverted else "MONOCHROME2", bits_stored=12,
                                   sex="M" if male else "F", birth_date=birth_date, study_date=study_date,
                                   patient_name=f"PHANTOM^CASE {example_id}")


def _is_dicom(image_format: str, index: int) -> bool:
  return image_format == "dicom" or (image_format == "mixed" and index % 2 == 1)


def _is_monochrome1(index: int) -> bool:
  """Every fourth image (by index) of a DICOM-writing set is stored inverted."""
  return index % 4 == 3


def write_dataset(output_dir, num_images: int, seed: int, *, height_px: int = 520, width_px: int = 400,
                  image_format: str = "png", first_id: int = 1) -> pathlib.Path:
  """Writes `num_images` phantoms in the generic layout.

  Layout: output_dir/labels.csv (id,boneage,male; male as True/False),
  output_dir/images/<id>.png or <id>.dcm, output_dir/masks/<id>.png (age
  signal mask, 0/255). With image_format "mixed" every second image is DICOM.
  DICOM files are 12-bit with PatientSex, PatientBirthDate and StudyDate
  (chronological age = bone age + N(0, 12) months) and a PatientName; every
  fourth image (index 3, 7, ...) is stored MONOCHROME1.

  Returns:
    output_dir as a pathlib.Path.
  """
  if image_format not in IMAGE_FORMATS:
    raise ValueError(f"image_format must be one of {IMAGE_FORMATS}, got {image_format!r}")
  out = pathlib.Path(output_dir)
  (out / IMAGES_DIR).mkdir(parents=True, exist_ok=True)
  (out / MASKS_DIR).mkdir(parents=True, exist_ok=True)
  labels = sample_labels(num_images, seed, first_id=first_id)
  for index, (example_id, boneage_months, male) in enumerate(labels):
    phantom = render_phantom(boneage_months, male, image_seed(seed, index), height_px=height_px, width_px=width_px)
    if _is_dicom(image_format, index):
      rng = np.random.default_rng(np.random.SeedSequence([seed, _DICOM_STREAM, index]))
      data = _dicom_bytes(phantom.image, example_id, boneage_months, male, _is_monochrome1(index), rng)
      (out / IMAGES_DIR / f"{example_id}.dcm").write_bytes(data)
    else:
      _write_png(out / IMAGES_DIR / f"{example_id}.png", phantom.image)
    _write_png(out / MASKS_DIR / f"{example_id}.png", phantom.age_signal_mask.astype(np.uint8) * 255)
  with open(out / LABELS_FILE, "w", newline="") as f:
    writer = csv.writer(f, lineterminator="\n")
    writer.writerow(["id", "boneage", "male"])
    for example_id, boneage_months, male in labels:
      writer.writerow([example_id, f"{boneage_months:g}", "True" if male else "False"])
  (out / schema.SYNTHETIC_MARKER_FILE).write_text(json.dumps(
      {"generator": "boneage-phantoms", "seed": seed, "num_images": num_images, "first_id": first_id}) + "\n")
  return out


def _write_png(path: pathlib.Path, pixels: np.ndarray) -> None:
  ok, encoded = cv2.imencode(".png", pixels, _PNG_PARAMS)
  if not ok:
    raise OSError(f"could not encode {path} as PNG")
  path.write_bytes(encoded.tobytes())


def _parse_flags(argv):
  """Parses argv into a private FlagValues, so importing this module defines no global flags."""
  from absl import flags  # pylint: disable=g-import-not-at-top

  fv = flags.FlagValues()
  flags.DEFINE_string("output_dir", None, "Folder to write labels.csv, images/ and masks/ into.", flag_values=fv)
  flags.DEFINE_integer("num_images", 200, "How many phantoms to write.", lower_bound=0, flag_values=fv)
  flags.DEFINE_integer("seed", 0, "Seed: same seed, same files.", lower_bound=0, flag_values=fv)
  flags.DEFINE_integer("height_px", 520, "Image height (RSNA originals are ~2080).", lower_bound=16, flag_values=fv)
  flags.DEFINE_integer("width_px", 400, "Image width (RSNA originals are ~1600).", lower_bound=16, flag_values=fv)
  flags.DEFINE_enum("image_format", "png", IMAGE_FORMATS, "png, dicom, or mixed (every second image DICOM).",
                    flag_values=fv)
  flags.DEFINE_integer("first_id", 1, "Id of the first image.", lower_bound=0, flag_values=fv)
  groups = (cli.FlagGroup("Output", ("output_dir", "num_images", "first_id", "seed")),
            cli.FlagGroup("Images", ("height_px", "width_px", "image_format")))
  cli.parse("boneage-phantoms", "--output_dir=DIR [--num_images=N --seed=S ...]", fv, argv, groups,
            required=("output_dir",))
  return fv


def main(argv=None) -> None:
  """Console script `boneage-phantoms`: writes a phantom dataset and says what it wrote."""
  argv = list(sys.argv if argv is None else argv)
  cli.quiet_start(argv)
  cli.run_main("boneage-phantoms", lambda: _write(argv), argv)


def _write(argv: list[str]) -> int:
  fv = _parse_flags(argv)
  start = time.perf_counter()
  out = write_dataset(fv.output_dir, fv.num_images, fv.seed, height_px=fv.height_px, width_px=fv.width_px,
                      image_format=fv.image_format, first_id=fv.first_id)
  num_dicom = sum(_is_dicom(fv.image_format, i) for i in range(fv.num_images))
  print(f"wrote {fv.num_images} phantoms ({fv.num_images - num_dicom} PNG, {num_dicom} DICOM) of "
        f"{fv.height_px}x{fv.width_px} px with age-signal masks and {LABELS_FILE} to {os.fspath(out)} "
        f"in {time.perf_counter() - start:.1f} s (seed {fv.seed})")
  return 0


if __name__ == "__main__":
  main()
