"""SD score of a bone age against the Greulich-Pyle (Brush Foundation) table.

A bone age alone does not say whether a child is advanced or delayed: the
spread of normal bone ages grows with age and differs by sex. The SD score

    SDS = (BA - CA) / SD(CA, sex)

divides BA - CA by the standard deviation of skeletal age that the Brush
Foundation cohort shows at that chronological age (CA), linearly interpolated
between the table's rows. |SDS| > 2 reads as advanced (+) or delayed (-).
The table covers boys 3-204 and girls 3-192 months; outside it, or without a
CA, no SDS is given and the reason is said instead. The table is shipped in
bone_age/data with its source and caveat (a research reference, transcribed
from public copies, not checked against the atlas).
"""

from __future__ import annotations

import csv
import dataclasses
import functools
import importlib.resources
import math

TABLE_FILE = "brush_foundation_skeletal_age.csv"
TABLE_NAME = "Greulich-Pyle (Brush Foundation) skeletal age SD table"
SDS_THRESHOLD = 2.0

ADVANCED = "advanced"
NORMAL = "normal"
DELAYED = "delayed"

# Why a row has no SDS (the value of `sds_missing_reason`).
MISSING_CA_UNKNOWN = "chronological_age_unknown"
MISSING_CA_OUTSIDE_TABLE = "chronological_age_outside_table"
MISSING_SEX_UNKNOWN = "sex_unknown"


@dataclasses.dataclass(frozen=True)
class SdsResult:
  """SDS and its reading, or the reason there is none (then both are None)."""
  sds: float | None
  reading: str | None
  missing_reason: str | None


@functools.lru_cache(maxsize=1)
def sd_table() -> dict[str, tuple[tuple[float, float], ...]]:
  """{'M'|'F': ((chronological age months, SD months), ...) sorted by age} from the package data."""
  text = importlib.resources.files("bone_age").joinpath("data", TABLE_FILE).read_text(encoding="utf-8")
  rows: dict[str, list[tuple[float, float]]] = {"M": [], "F": []}
  for row in csv.DictReader(text.splitlines()):
    rows[row["sex"]].append((float(row["chronological_age_months"]), float(row["sd_months"])))
  return {sex: tuple(sorted(points)) for sex, points in rows.items()}


def age_range_months(sex: str) -> tuple[float, float]:
  """(youngest, oldest) chronological age the table covers for this sex."""
  points = sd_table()[sex]
  return points[0][0], points[-1][0]


def sd_months(chronological_age_months: float, sex: str) -> float | None:
  """SD of skeletal age at this age and sex, linear between rows; None outside the table."""
  points = sd_table()[sex]
  if not points[0][0] <= chronological_age_months <= points[-1][0]:
    return None
  for (age_lo, sd_lo), (age_hi, sd_hi) in zip(points, points[1:]):
    if chronological_age_months <= age_hi:
      fraction = (chronological_age_months - age_lo) / (age_hi - age_lo)
      return sd_lo + fraction * (sd_hi - sd_lo)
  return points[-1][1]  # only a one-row table reaches here


def reading(sds: float) -> str:
  """advanced / normal / delayed at |SDS| > 2."""
  if sds > SDS_THRESHOLD:
    return ADVANCED
  if sds < -SDS_THRESHOLD:
    return DELAYED
  return NORMAL


def sd_score(boneage_months: float, chronological_age_months: float | None, sex: str | None) -> SdsResult:
  """SDS = (BA - CA) / SD(CA, sex) with its reading, or the reason it cannot be given.

  Args:
    boneage_months: The predicted bone age (BA).
    chronological_age_months: The age at the study (CA), None when unknown.
    sex: 'M' or 'F'; anything else has no row in the table.
  """
  if sex not in ("M", "F"):
    return SdsResult(None, None, MISSING_SEX_UNKNOWN)
  if chronological_age_months is None or not math.isfinite(chronological_age_months):
    return SdsResult(None, None, MISSING_CA_UNKNOWN)
  sd = sd_months(chronological_age_months, sex)
  if sd is None:
    return SdsResult(None, None, MISSING_CA_OUTSIDE_TABLE)
  sds = (boneage_months - chronological_age_months) / sd
  return SdsResult(sds, reading(sds), None)


def sds_columns(boneage_months: float, chronological_age_months: float | None, sex: str | None) -> dict:
  """The SDS columns of an output row: `sds` (3 decimals), `sds_reading`, `sds_missing_reason`."""
  result = sd_score(boneage_months, chronological_age_months, sex)
  return {"sds": None if result.sds is None else round(result.sds, 3), "sds_reading": result.reading,
          "sds_missing_reason": result.missing_reason}
