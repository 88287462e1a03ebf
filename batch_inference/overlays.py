"""Grad-CAM overlays a radiologist can read: radiograph and heatmap side by side, with the results in words.

Each overlay shows the radiograph, the same radiograph with the Grad-CAM
heat drawn only where it is high (perceptually uniform colormap), a colour
bar, and a footer with the id, bone age (and its interval when the row has
one), chronological age, BA - CA, SD score, the provenance (model id,
experiment, checkpoint, dataset, software version, run time, the input's
sha256) and "research use only, not a medical device".

Overlays are written by the worker that scored the image, right after the
batch, so only a downscaled original (at most --overlay_max_px on its long
side) travels with each image. File names come from the id through
`overlay_file_name`, which keeps only [A-Za-z0-9._-]: an archive member named
'../../x.png' or '/abs/x.png' still lands inside overlays/.
"""

from __future__ import annotations

import functools
import hashlib
import re

import numpy as np

from bone_age import provenance
from bone_age import reporting

OVERLAYS_DIR = "overlays"
DEFAULT_OVERLAY_MAX_PX = 512
_MAX_NAME_CHARS = 80
# A perceptually uniform colormap: equal steps of heat look like equal steps of colour.
_COLORMAP = "inferno"
_HEAT_ALPHA_FLOOR = 0.3  # heat below this is not drawn at all
_HEAT_ALPHA_MAX = 0.65  # the hottest regions still let the bone show through
_MARGIN_PX = 8
_GAP_PX = 8
_TITLE_PX = 22
_FOOTER_PX = 80
_COLORBAR_PX = 100  # the bar and its labels
_BAR_WIDTH_PX = 14
_MIN_PANEL_PX = 320
_MIN_FIGURE_WIDTH_PX = 760


def overlay_file_name(example_id: str, source: str, suffix: str = "") -> str:
  """A safe, unique PNG file name for an image's overlay.

  The readable part is the id with every other character replaced by '_';
  a hash of the source keeps two inputs whose ids sanitise alike apart.
  """
  readable = re.sub(r"[^A-Za-z0-9._-]+|\.{2,}", "_", example_id)
  readable = re.sub(r"_+", "_", readable).strip("._-")[:_MAX_NAME_CHARS] or "image"
  digest = hashlib.sha1(source.encode("utf-8")).hexdigest()[:10]
  return f"{readable}-{digest}{suffix}.png"


def downscale(pixels: np.ndarray, max_px: int) -> np.ndarray:
  """The image shrunk (area interpolation) so its long side is at most max_px."""
  import cv2  # pylint: disable=g-import-not-at-top

  height, width = pixels.shape[:2]
  scale = max_px / max(height, width)
  if scale >= 1.0:
    return np.ascontiguousarray(pixels)
  size = (max(1, round(width * scale)), max(1, round(height * scale)))
  return cv2.resize(pixels, size, interpolation=cv2.INTER_AREA)


def heatmap_on_original(transform, square_heatmap: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
  """Square Grad-CAM -> (h, w) float32 in [0, 1] over the (downscaled) original.

  LetterboxTransform.to_source undoes the letterbox (padding and scale) onto
  the original geometry; the result is then resized to the overlay's size.
  """
  import cv2  # pylint: disable=g-import-not-at-top

  on_source = np.asarray(transform.to_source(np.asarray(square_heatmap, dtype=np.float32)), dtype=np.float32)
  if on_source.shape != tuple(shape):
    on_source = cv2.resize(on_source, (shape[1], shape[0]), interpolation=cv2.INTER_LINEAR)
  return np.clip(on_source, 0.0, 1.0)


def _signed(value: float, digits: int = 1) -> str:
  return f"{value:+.{digits}f}"


def footer_lines(row: dict, model_id: str | None = None) -> list[str]:
  """The overlay's footer in plain words, from an output row.

  Optional row keys are shown when present: a prediction interval
  (`interval_low_months`, `interval_high_months`, `interval_level`), the TTA
  spread (`boneage_tta_sd_months`), `model_id` (the row's own wins over the
  argument) and the provenance fields (bone_age.provenance.ROW_FIELDS,
  `input_sha256`).
  """
  ba = f"Bone age {row['boneage']} ({row['boneage_months']:.1f} months)"
  if row.get("interval_low_months") is not None and row.get("interval_high_months") is not None:
    level = row.get("interval_level")
    level_text = f"{100 * float(level):.0f}% " if level is not None else ""
    ba += f", {level_text}interval {row['interval_low_months']:.1f} to {row['interval_high_months']:.1f} months"
  if row.get("boneage_tta_sd_months") is not None:
    ba += f", TTA SD {row['boneage_tta_sd_months']:.1f}"
  sex = {"M": "male", "F": "female"}.get(row["sex"], row["sex"])
  sex_from = {"csv": "from the metadata table", "dicom": "from the DICOM header", "assumed": "assumed, not known",
              "assumed_both": "assumed, not known (scored as both)"}.get(row["sex_source"], row["sex_source"])
  ca = row.get("chronological_age_months")
  if ca is None:
    age_line = "Chronological age unknown, so no BA - CA and no SD score"
  else:
    age_line = (f"Chronological age {reporting.format_years_months(ca)} ({ca:.1f} months); "
                f"BA - CA {_signed(row['ba_minus_ca_months'])} months")
    if row.get("sds") is not None:
      age_line += f"; SD score {_signed(row['sds'], 2)} ({row['sds_reading']})"
    elif row.get("sds_missing_reason"):
      age_line += f"; no SD score ({row['sds_missing_reason'].replace('_', ' ')})"
  model = (f"Model {row.get('model_id') or model_id or 'unknown'}: experiment {row.get('experiment') or 'unknown'}, "
           f"step {row.get('checkpoint_step') if row.get('checkpoint_step') is not None else 'unknown'} "
           f"({row.get('checkpoint_reason') or 'reason unknown'}), trained on {row.get('dataset') or 'unknown'} "
           f"{row.get('dataset_version') or ''}; software {row.get('software_version') or 'unknown'}")
  sha = row.get("input_sha256")
  run = (f"Run {row.get('run_started_utc') or 'time unknown'}; input sha256 {sha[:16] + '...' if sha else 'unknown'}. "
         f"{provenance.RESEARCH_USE_NOTICE}")
  return [f"{row['id']}: {ba}; {sex} ({sex_from})", age_line, model, run]


def _heat_alpha(heatmap: np.ndarray) -> np.ndarray:
  """Opacity that is zero where the heat is low, so bone detail stays visible there."""
  return np.clip((heatmap - _HEAT_ALPHA_FLOOR) / (1.0 - _HEAT_ALPHA_FLOOR), 0.0, 1.0) * _HEAT_ALPHA_MAX


def _heat_on_grey(original: np.ndarray, heatmap: np.ndarray, colormap) -> np.ndarray:
  """(h, w, 3) uint8: the radiograph with the colormapped heat blended in where it is high."""
  lut = np.asarray(colormap(np.linspace(0.0, 1.0, 256))[:, :3] * 255.0, np.float32)
  colour = lut[np.uint8(np.round(np.clip(heatmap, 0.0, 1.0) * 255.0))]
  alpha = _heat_alpha(heatmap)[..., None].astype(np.float32)
  grey = original.astype(np.float32)[..., None]
  return np.uint8(np.round(grey * (1.0 - alpha) + colour * alpha))


def _at_least_readable_size(original: np.ndarray, heatmap: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """Both enlarged (linear) so the long side is at least _MIN_PANEL_PX: a tiny image beside text is unreadable."""
  import cv2  # pylint: disable=g-import-not-at-top

  height, width = original.shape[:2]
  scale = _MIN_PANEL_PX / max(height, width)
  if scale <= 1.0:
    return original, heatmap
  size = (round(width * scale), round(height * scale))
  return (cv2.resize(original, size, interpolation=cv2.INTER_LINEAR),
          cv2.resize(np.asarray(heatmap, np.float32), size, interpolation=cv2.INTER_LINEAR))


@functools.lru_cache(maxsize=4)
def _font(size_px: int):
  """DejaVu Sans (shipped with matplotlib) at this size; Pillow's own font if it cannot be found."""
  from matplotlib import font_manager  # pylint: disable=g-import-not-at-top
  from PIL import ImageFont  # pylint: disable=g-import-not-at-top
  try:
    return ImageFont.truetype(font_manager.findfont("DejaVu Sans", fallback_to_default=False), size_px)
  except (OSError, ValueError):
    return ImageFont.load_default(size_px)


def render(original: np.ndarray, heatmap: np.ndarray, row: dict, model_id: str | None = None) -> np.ndarray:
  """(H, W, 3) uint8 RGB: the radiograph beside it with the heat on top, a colour bar and a footer.

  The heat uses a perceptually uniform colormap, drawn only where it is
  high (alpha rises from zero above a floor), so the bones under cool regions
  are not tinted. Both panels keep the overlay's pixels one to one (composed
  in numpy, never resampled); Pillow writes the text, which keeps an overlay
  far cheaper than a matplotlib figure.

  Args:
    original: (h, w) uint8 radiograph (bone bright).
    heatmap: (h, w) float in [0, 1], the Grad-CAM on the same geometry.
    row: The output row (records.prediction_row) the footer is written from.
    model_id: Shown when the row has no `model_id`.
  """
  import matplotlib  # pylint: disable=g-import-not-at-top
  from PIL import Image, ImageDraw  # pylint: disable=g-import-not-at-top

  colormap = matplotlib.colormaps[_COLORMAP]
  original, heatmap = _at_least_readable_size(original, heatmap)
  height, width = original.shape[:2]
  grey = np.repeat(original[..., None], 3, axis=2)
  gap = np.full((height, _GAP_PX, 3), 255, np.uint8)
  panels = np.concatenate([grey, gap, _heat_on_grey(original, heatmap, colormap)], axis=1)
  footer = footer_lines(row, model_id)
  text, small = _font(13), _font(11)
  footer_w = max(text.getlength(line) for line in footer)
  # Wide enough for the panels and the colour bar, and for the longest footer line.
  fig_w = max(_MARGIN_PX + panels.shape[1] + _COLORBAR_PX, _MIN_FIGURE_WIDTH_PX, int(footer_w) + 2 * _MARGIN_PX)
  fig_h = _TITLE_PX + height + _FOOTER_PX
  canvas = np.full((fig_h, fig_w, 3), 255, np.uint8)
  canvas[_TITLE_PX:_TITLE_PX + height, _MARGIN_PX:_MARGIN_PX + panels.shape[1]] = panels
  # The colour bar: the colormap from 1 (top) to 0 (bottom), as opaque as the hottest heat is drawn.
  bar_x = _MARGIN_PX + panels.shape[1] + 10
  levels = np.linspace(1.0, 0.0, height)
  canvas[_TITLE_PX:_TITLE_PX + height, bar_x:bar_x + _BAR_WIDTH_PX] = np.uint8(
      np.round(colormap(levels)[:, :3] * 255.0))[:, None, :]
  image = Image.fromarray(canvas)
  draw = ImageDraw.Draw(image)
  draw.text((_MARGIN_PX, 3), "Radiograph", font=text, fill=(0, 0, 0))
  draw.text((_MARGIN_PX + width + _GAP_PX, 3), "Where the model looked (Grad-CAM)", font=text, fill=(0, 0, 0))
  label_x = bar_x + _BAR_WIDTH_PX + 4
  draw.text((bar_x, 3), "relevance", font=small, fill=(0, 0, 0))
  for fraction, label in ((0.0, "1 highest"), (0.5, "0.5"), (1.0, "0 none")):
    y = _TITLE_PX + fraction * (height - 1)
    draw.text((label_x, y), label, font=small, fill=(0, 0, 0), anchor="lm")
  for i, line in enumerate(footer):
    draw.text((_MARGIN_PX, _TITLE_PX + height + 6 + i * 18), line, font=text, fill=(0, 0, 0))
  return np.asarray(image)


def write_png(path: str, image: np.ndarray) -> None:
  """Encodes an (H, W, 3) uint8 RGB image and writes it through Beam's filesystems (local or gs://)."""
  import cv2  # pylint: disable=g-import-not-at-top
  from apache_beam.io.filesystems import FileSystems  # pylint: disable=g-import-not-at-top

  ok, encoded = cv2.imencode(".png", cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
  if not ok:
    raise RuntimeError(f"cannot encode overlay {path}")
  with FileSystems.create(path, mime_type="image/png") as f:
    f.write(encoded.tobytes())
