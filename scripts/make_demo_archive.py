"""Packs the demo's scoring input: one zip that mixes PNG phantoms, DICOM
phantoms and one corrupt file, plus the metadata CSV for the PNGs.

The PNGs carry no sex or birth date, so their sex (and chronological age)
comes from the CSV; the DICOMs carry PatientSex/BirthDate/StudyDate tags.
The corrupt member must show up in rejects.jsonl, not crash the job.
Usage: python scripts/make_demo_archive.py PNG_DIR DICOM_DIR OUT_ZIP OUT_CSV
"""

import csv
import pathlib
import sys
import zipfile

CORRUPT_MEMBER = "scans/corrupt_export.png"


def main(png_dir: str, dicom_dir: str, out_zip: str, out_csv: str) -> None:
  png_dir, dicom_dir = pathlib.Path(png_dir), pathlib.Path(dicom_dir)
  with open(png_dir / "labels.csv", newline="") as f:
    labels = list(csv.DictReader(f))
  with zipfile.ZipFile(out_zip, "w", compression=zipfile.ZIP_STORED) as archive:
    for path in sorted((png_dir / "images").iterdir()):
      archive.write(path, f"scans/{path.name}")
    for path in sorted((dicom_dir / "images").iterdir()):
      archive.write(path, f"pacs/{path.name}")
    # A PNG signature followed by garbage: passes a glance at the extension,
    # fails the decoder.
    archive.writestr(CORRUPT_MEMBER, b"\x89PNG\r\n\x1a\n" + b"not really a radiograph" * 40)
  with open(out_csv, "w", newline="") as f:
    writer = csv.writer(f)
    writer.writerow(["id", "male"])
    for row in labels:
      writer.writerow([row["id"], row["male"]])
  members = len(labels) + len(list((dicom_dir / "images").iterdir())) + 1
  print(f"wrote {out_zip} ({members} members, 1 of them corrupt) and {out_csv}")


if __name__ == "__main__":
  if len(sys.argv) != 5:
    sys.exit(__doc__)
  main(*sys.argv[1:])
