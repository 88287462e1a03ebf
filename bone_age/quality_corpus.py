"""Inputs the quality gate must handle, made in code, deterministic by seed.

Good inputs are phantoms (`phantoms.render_phantom`); the others are what a
PACS export or a careless user hands over: phantoms mirrored (right hands),
inverted, rotated, small on a large canvas or cropped to the fingers;
synthetic chest-, skull- and knee-like radiographs, a text page, noise,
constant frames; DICOMs naming another modality or body part. The tests and
scripts/quality_table.py both draw from here.
"""

from __future__ import annotations

import dataclasses
import datetime
import io

import cv2
import numpy as np

from bone_age import dicom_writer
from bone_age import phantoms

# What the gate should do with an input.
PASS = "pass"  # a usable left hand: no reject, no flag
HANDLE = "reject_or_flag"  # unusable as it is: a reject or at least one flag


@dataclasses.dataclass(frozen=True)
class Case:
  """One corpus input: a name, the encoded file and the expected outcome."""
  name: str
  kind: str
  data: bytes
  expected: str


def png(pixels: np.ndarray) -> bytes:
  ok, data = cv2.imencode(".png", pixels)
  if not ok:
    raise ValueError("PNG encoding failed")
  return data.tobytes()


def dicom(pixels: np.ndarray, *, modality: str = "DX", body_part: str | None = "HAND",
          laterality: str | None = None) -> bytes:
  """An uncompressed 8-bit MONOCHROME2 DICOM (`dicom_writer`) with the given acquisition tags."""
  import pydicom  # pylint: disable=g-import-not-at-top

  data = dicom_writer.encode_dicom(np.ascontiguousarray(pixels, dtype=np.uint8), sex="M",
                                   birth_date=datetime.date(2010, 1, 15), study_date=datetime.date(2020, 7, 15))
  # The writer makes hand Secondary Captures; the corpus needs other acquisitions too.
  ds = pydicom.dcmread(io.BytesIO(data))
  ds.Modality = modality
  if body_part is None:
    del ds.BodyPartExamined
  else:
    ds.BodyPartExamined = body_part
  if laterality is not None:
    ds.ImageLaterality = laterality
  out = io.BytesIO()
  ds.save_as(out, enforce_file_format=True)
  return out.getvalue()


def phantom(seed: int, height_px: int = 520, width_px: int = 400) -> np.ndarray:
  rng = np.random.default_rng(seed)
  return phantoms.render_phantom(float(rng.integers(12, 216)), bool(rng.random() < 0.5), seed,
                                 height_px=height_px, width_px=width_px).image


def on_large_canvas(image: np.ndarray, scale: float, seed: int, canvas_hw=(1600, 1300)) -> np.ndarray:
  """`image` resized to `scale` of the canvas height, placed at random on a dark detector."""
  rng = np.random.default_rng(seed)
  height, width = canvas_hw
  canvas = np.clip(rng.normal(12.0, 3.0, canvas_hw), 0, 255).astype(np.uint8)
  new_h = int(round(scale * height))
  new_w = int(round(new_h * image.shape[1] / image.shape[0]))
  small = cv2.resize(image, (new_w, new_h), interpolation=cv2.INTER_AREA)
  top = int(rng.integers(0, height - new_h + 1))
  left = int(rng.integers(0, width - new_w + 1))
  canvas[top:top + new_h, left:left + new_w] = small
  return canvas


def _radiograph_look(coverage: np.ndarray, seed: int) -> np.ndarray:
  """Float coverage (0..1 tissue, >1 bone) -> noisy uint8 with a dark background."""
  rng = np.random.default_rng(seed)
  image = 12.0 + 110.0 * cv2.GaussianBlur(coverage.astype(np.float32), (0, 0), 2.0)
  image += rng.normal(0.0, 4.0, image.shape)
  return np.clip(image, 0, 255).astype(np.uint8)


def chest_like(seed: int, size=(520, 480)) -> np.ndarray:
  rng = np.random.default_rng(seed)
  h, w = size
  cov = np.zeros(size, np.float32)
  cv2.ellipse(cov, (w // 2, int(h * 0.55)), (int(w * 0.42), int(h * 0.5)), 0, 0, 360, 1.0, -1)
  for side in (-1, 1):  # lungs: dark
    cv2.ellipse(cov, (w // 2 + side * int(w * 0.18), int(h * 0.5)), (int(w * 0.13), int(h * 0.3)), 0, 0, 360,
                0.35, -1)
  cv2.rectangle(cov, (w // 2 - 12, 0), (w // 2 + 12, h), 1.8, -1)  # spine
  for k in range(9):  # ribs
    y = int(h * (0.25 + 0.06 * k + rng.uniform(-0.01, 0.01)))
    cv2.ellipse(cov, (w // 2, y), (int(w * 0.36), 40), 0, 200, 340, 1.6, 5)
  return _radiograph_look(cov, seed)


def skull_like(seed: int, size=(520, 440)) -> np.ndarray:
  rng = np.random.default_rng(seed)
  h, w = size
  cov = np.zeros(size, np.float32)
  centre = (w // 2 + int(rng.integers(-20, 20)), h // 2)
  axes = (int(w * 0.4), int(h * 0.42))
  cv2.ellipse(cov, centre, axes, 0, 0, 360, 1.0, -1)
  cv2.ellipse(cov, centre, axes, 0, 0, 360, 2.0, 14)  # calvarium
  cv2.ellipse(cov, (centre[0], int(h * 0.78)), (int(w * 0.2), int(h * 0.08)), 0, 0, 180, 1.8, 10)  # jaw
  return _radiograph_look(cov, seed)


def knee_like(seed: int, size=(520, 400)) -> np.ndarray:
  rng = np.random.default_rng(seed)
  h, w = size
  cov = np.zeros(size, np.float32)
  cx = w // 2 + int(rng.integers(-20, 20))
  cv2.rectangle(cov, (cx - 110, 0), (cx + 110, h), 1.0, -1)  # soft tissue of the leg
  cv2.rectangle(cov, (cx - 45, 0), (cx + 45, int(h * 0.45)), 1.8, -1)  # femur
  cv2.ellipse(cov, (cx, int(h * 0.45)), (80, 35), 0, 0, 180, 1.8, -1)  # condyles
  cv2.rectangle(cov, (cx - 50, int(h * 0.55)), (cx + 50, h), 1.8, -1)  # tibia
  cv2.ellipse(cov, (cx, int(h * 0.55)), (75, 20), 0, 180, 360, 1.8, -1)  # plateau
  return _radiograph_look(cov, seed)


def text_page(seed: int, size=(1100, 850)) -> np.ndarray:
  rng = np.random.default_rng(seed)
  page = np.full(size, 245, np.uint8)
  words = ("bone", "age", "report", "patient", "left", "hand", "radiograph", "normal", "findings", "the")
  for row in range(40, size[0] - 40, 34):
    line = " ".join(rng.choice(words, 8))
    cv2.putText(page, line, (50, row), cv2.FONT_HERSHEY_SIMPLEX, 0.9, 20, 2, cv2.LINE_AA)
  return page


def cases(num_phantoms: int = 20, seed: int = 0) -> list[Case]:
  """The synthetic corpus: good phantoms and every kind of input to reject or flag."""
  out = []
  for i in range(num_phantoms):
    s = seed * 10_000 + i
    image = phantom(s)
    out.append(Case(f"phantom_{i}.png", "phantom", png(image), PASS))
    out.append(Case(f"phantom_{i}.dcm", "phantom_dicom", dicom(image), PASS))
    out.append(Case(f"mirrored_{i}.png", "mirrored", png(np.ascontiguousarray(image[:, ::-1])), HANDLE))
    out.append(Case(f"right_tag_{i}.dcm", "right_laterality_tag", dicom(np.ascontiguousarray(image[:, ::-1]),
                                                                          laterality="R"), HANDLE))
    out.append(Case(f"inverted_{i}.png", "inverted", png(255 - image), HANDLE))
    out.append(Case(f"rotated90_{i}.png", "rotated_90", png(np.ascontiguousarray(np.rot90(image, 1 + 2 * (i % 2)))),
                    HANDLE))
    scale = 0.2 + 0.1 * (i % 5) / 4
    out.append(Case(f"small_{i}.png", "scaled_20_30pct", png(on_large_canvas(image, scale, s)), HANDLE))
    out.append(Case(f"fingers_{i}.png", "cropped_to_fingers", png(image[:int(0.42 * image.shape[0])]), HANDLE))
    out.append(Case(f"chest_{i}.png", "chest_like", png(chest_like(s)), HANDLE))
    out.append(Case(f"skull_{i}.png", "skull_like", png(skull_like(s)), HANDLE))
    out.append(Case(f"knee_{i}.png", "knee_like", png(knee_like(s)), HANDLE))
    rng = np.random.default_rng(s)
    out.append(Case(f"noise_{i}.png", "noise", png(rng.integers(0, 256, (400, 300), dtype=np.uint8)), HANDLE))
    body, modality = (("CHEST", "DX"), ("SKULL", "CR"), ("KNEE", "DX"), ("HAND", "CT"), ("HAND", "MR"))[i % 5]
    out.append(Case(f"tags_{modality}_{body}_{i}.dcm", "dicom_other_tags",
                    dicom(image, modality=modality, body_part=body), HANDLE))
  for i in range(max(1, num_phantoms // 4)):
    out.append(Case(f"text_{i}.png", "text_page", png(text_page(seed * 10_000 + i)), HANDLE))
  for value in (0, 128, 255):
    out.append(Case(f"constant_{value}.png", "constant", png(np.full((300, 240), value, np.uint8)), HANDLE))
  out.append(Case("one_pixel.png", "constant", png(np.zeros((1, 1), np.uint8)), HANDLE))
  transparent = np.zeros((200, 160, 4), np.uint8)
  out.append(Case("transparent.png", "constant", png(transparent), HANDLE))
  return out


def pydicom_test_files() -> list[Case]:
  """pydicom's bundled test files (CT, MR, RT, colour, ...): none is a hand radiograph."""
  import pathlib  # pylint: disable=g-import-not-at-top
  from pydicom import data  # pylint: disable=g-import-not-at-top
  out = []
  for path in sorted(data.get_testdata_files("*.dcm")):
    out.append(Case(pathlib.Path(path).name, "pydicom_test_file", pathlib.Path(path).read_bytes(), HANDLE))
  return out


def real_sample(directory) -> list[Case]:
  """Real left-hand radiographs (e.g. the RSNA sample): every one must pass."""
  import pathlib  # pylint: disable=g-import-not-at-top
  return [Case(p.name, "real_rsna", p.read_bytes(), PASS) for p in sorted(pathlib.Path(directory).glob("*.png"))]


