"""The pixel budget: no input may make a worker allocate more than this.

Every decoder is asked to decode only after a header has been read and its
dimensions checked here, so an image that claims (or, compressed inside a
small file, really has) gigapixels is refused before its pixels exist.
"""

from bone_age import errors

# A 2000x1600 radiograph is 3.2 megapixels; 50 MP leaves room for 7000x7000
# detector images while refusing headers that would allocate gigabytes.
DEFAULT_MAX_PIXELS: int = 50_000_000


def check_pixel_count(source: str, height_px: int, width_px: int, max_pixels: int, what: str) -> None:
  """Raises before decoding if a header's dimensions are empty or too large.

  Args:
    source: The input's name, for the error.
    height_px: Height declared by the header.
    width_px: Width declared by the header.
    max_pixels: The decompression-bomb limit.
    what: The header the numbers come from, for the message ("PNG IHDR").
  """
  if height_px <= 0 or width_px <= 0:
    raise errors.InputError(source, errors.NOT_AN_IMAGE, f"{what} declares an empty {width_px}x{height_px} image")
  pixel_count = height_px * width_px
  if pixel_count > max_pixels:
    raise errors.InputError(
        source, errors.DECOMPRESSION_BOMB,
        f"{what} declares {width_px}x{height_px} = {pixel_count:,} pixels, above the limit of {max_pixels:,} "
        "(refused before decoding)")
