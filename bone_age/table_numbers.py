"""Strict decimal numbers from table cells (label tables, metadata CSVs).

Python's `float` reads far more than a table should hold: `1_2` is 12 (digit
grouping), `nan`, `inf` and `infinity` are floats, and surrounding
whitespace is allowed. A label read that way is a silent error in a dataset,
so table cells accept only plain decimal notation: an optional sign, digits
with at most one decimal point, and an optional exponent.
"""

import re

_DECIMAL = re.compile(r"[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?")


def parse_decimal(text: str, column: str) -> float:
  """The cell's value as a finite float.

  Args:
    text: The cell (surrounding spaces are ignored).
    column: The column's name, for the message.

  Raises:
    ValueError: the cell is not plain decimal notation (underscores, nan,
      inf, hex, words) or its value overflows to infinity; the message names
      the column and quotes the cell.
  """
  cell = text.strip()
  if not _DECIMAL.fullmatch(cell):
    raise ValueError(f"column {column!r}: {text!r} is not a decimal number")
  value = float(cell)
  if value in (float("inf"), float("-inf")):
    raise ValueError(f"column {column!r}: {text!r} is too large to be a finite number")
  return value
