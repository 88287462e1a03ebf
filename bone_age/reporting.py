"""How a bone age is stated to a radiologist: years and months, next to the age.

Greulich-Pyle bone age (BA) is read in years and months ("10 years 4 months")
and compared with the chronological age (CA) at the study date; the scorer,
the evaluator and the demo all format ages through this module so a report
reads the same everywhere.
"""

import datetime
import math

_DAYS_PER_YEAR = 365.25
_DAYS_PER_MONTH = _DAYS_PER_YEAR / 12.0


def format_years_months(age_months: float) -> str:
  """'10 years 4 months' for 124 months, rounded to whole months.

  Args:
    age_months: A non-negative age in months (fractions allowed).

  Returns:
    The age in words, singular where it is one ("1 year 1 month").

  Raises:
    ValueError: for a negative or non-finite age (a model output that is not
      an age must not be dressed up as one).
  """
  if not math.isfinite(age_months) or age_months < 0:
    raise ValueError(f"not an age in months: {age_months!r}")
  total = int(math.floor(age_months + 0.5))  # half-up, not banker's rounding
  years, months = divmod(total, 12)
  year_word = "year" if years == 1 else "years"
  month_word = "month" if months == 1 else "months"
  return f"{years} {year_word} {months} {month_word}"


def chronological_age_months(birth_date: datetime.date | None, study_date: datetime.date | None) -> float | None:
  """Age in months at the study date, or None when it cannot be known.

  Computed from the day count (365.25 / 12 days per month), the convention
  of bone-age tables, so it is continuous and comparable with a predicted BA.

  Args:
    birth_date: DICOM PatientBirthDate, or None.
    study_date: DICOM StudyDate, or None.

  Returns:
    Months as a float; None when a date is missing or the study predates the
    birth (a date error in the header, not an age).
  """
  if birth_date is None or study_date is None:
    return None
  days = (study_date - birth_date).days
  if days < 0:
    return None
  return days / _DAYS_PER_MONTH
