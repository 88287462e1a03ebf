"""The evaluation plots a radiologist looks at, written as PNGs (matplotlib Agg).

- predicted vs true bone age (with the identity line and a +-12 month band),
- Bland-Altman (difference vs mean, bias and 95% limits of agreement),
- age-group confusion matrix (counts, and the share of each reference group
  as shading and percentage: rows sum to 100%),
- signed error by true age in 2-year bands (shows regression to the mean at
  the youngest and oldest ages, which a single MAE hides).
"""

import io
import os

import numpy as np

SCATTER_FILE = "pred_vs_true.png"
BLAND_ALTMAN_FILE = "bland_altman.png"
CONFUSION_FILE = "confusion_matrix.png"
ERROR_BY_AGE_FILE = "error_by_age.png"
AGE_BAND_YEARS = 2


def _pyplot():
  import matplotlib  # pylint: disable=g-import-not-at-top

  matplotlib.use("Agg")  # no display on training/eval machines
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top

  return plt


def _save(fig, path: str) -> str:
  import tensorflow as tf  # pylint: disable=g-import-not-at-top  (gfile: output may be on GCS)

  buffer = io.BytesIO()
  fig.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
  tf.io.gfile.makedirs(os.path.dirname(path) or ".")
  with tf.io.gfile.GFile(path, "wb") as f:
    f.write(buffer.getvalue())
  _pyplot().close(fig)
  return path


def scatter(path: str, true_months, pred_months, male, title: str = "") -> str:
  plt = _pyplot()
  fig, ax = plt.subplots(figsize=(5.5, 5.5))
  limit = 240.0
  ax.fill_between([0, limit], [-12, limit - 12], [12, limit + 12], color="0.9", label="within 12 months")
  ax.plot([0, limit], [0, limit], "k--", lw=1, label="prediction = reference")
  for mask, label, color in ((~male, "girls", "tab:red"), (male, "boys", "tab:blue")):
    ax.scatter(true_months[mask], pred_months[mask], s=10, alpha=0.6, color=color, label=f"{label} (n={mask.sum()})")
  mae = f"MAE {np.mean(np.abs(pred_months - true_months)):.1f} months" if true_months.size else "no examples"
  ax.set(xlim=(0, limit), ylim=(0, limit), xlabel="reference bone age (months)",
         ylabel="predicted bone age (months)", title=f"Predicted vs reference bone age, {mae}\n{title}")
  ax.set_xticks(np.arange(0, limit + 1, 24))
  ax.set_yticks(np.arange(0, limit + 1, 24))
  ax.legend(loc="upper left", fontsize=8)
  return _save(fig, path)


def bland_altman(path: str, true_months, pred_months, title: str = "") -> str:
  plt = _pyplot()
  fig, ax = plt.subplots(figsize=(6.5, 4.5))
  mean = (true_months + pred_months) / 2.0
  diff = pred_months - true_months
  ax.scatter(mean, diff, s=10, alpha=0.6, color="tab:gray")
  if diff.size:
    bias = float(diff.mean())
    sd = float(diff.std(ddof=1)) if diff.size > 1 else 0.0
    lines = ((bias, "-", f"bias {bias:+.1f} months"),
             (bias + 1.96 * sd, "--", f"upper 95% limit {bias + 1.96 * sd:+.1f} months"),
             (bias - 1.96 * sd, "--", f"lower 95% limit {bias - 1.96 * sd:+.1f} months"))
    for value, style, label in lines:
      ax.axhline(value, color="tab:blue", ls=style, lw=1, label=label)
    ax.legend(fontsize=8, loc="upper right")
  ax.axhline(0.0, color="k", lw=0.5)
  ax.set(xlabel="mean of reference and prediction (months)", ylabel="prediction - reference (months)",
         title=f"Agreement (Bland-Altman)\n{title}")
  return _save(fig, path)


def confusion_plot(path: str, matrix, group_names, title: str = "") -> str:
  plt = _pyplot()
  matrix = np.asarray(matrix)
  row_sums = matrix.sum(axis=1, keepdims=True)
  shading = np.divide(matrix, row_sums, out=np.zeros(matrix.shape, float), where=row_sums > 0)
  fig, ax = plt.subplots(figsize=(1.4 * len(group_names) + 2, 1.2 * len(group_names) + 1.5))
  ax.imshow(shading, cmap="Blues", vmin=0.0, vmax=1.0)
  for (i, j), count in np.ndenumerate(matrix):
    ax.text(j, i, f"{count}\n{shading[i, j]:.0%}", ha="center", va="center",
            color="white" if shading[i, j] > 0.6 else "black", fontsize=9)
  ticks = np.arange(len(group_names))
  ax.set_xticks(ticks, group_names, rotation=30, ha="right")
  ax.set_yticks(ticks, group_names)
  ax.set(xlabel="predicted age group", ylabel="reference age group",
         title=f"Age groups: count and share of each reference group (rows sum to 100%)\n{title}")
  return _save(fig, path)


def error_by_age(path: str, true_months, pred_months, male, title: str = "") -> str:
  plt = _pyplot()
  band = np.floor(true_months / (12 * AGE_BAND_YEARS)).astype(int)
  bands = np.unique(band)
  fig, ax = plt.subplots(figsize=(7.5, 4.5))
  positions, data, colors, labels = [], [], [], []
  for k, b in enumerate(bands):
    for offset, mask, color in ((-0.2, ~male, "tab:red"), (0.2, male, "tab:blue")):
      values = (pred_months - true_months)[(band == b) & mask]
      if values.size:
        positions.append(k + offset)
        data.append(values)
        colors.append(color)
    n = int((band == b).sum())
    labels.append(f"{b * AGE_BAND_YEARS}-{(b + 1) * AGE_BAND_YEARS} y\nn={n}")
  if data:
    parts = ax.boxplot(data, positions=positions, widths=0.35, patch_artist=True, showfliers=True)
    for patch, color in zip(parts["boxes"], colors):
      patch.set_facecolor(color)
      patch.set_alpha(0.5)
  ax.axhline(0.0, color="k", lw=0.5)
  ax.set_xticks(np.arange(len(bands)), labels, fontsize=8)
  import matplotlib.patches as mpatches  # pylint: disable=g-import-not-at-top
  ax.legend(handles=[mpatches.Patch(color="tab:red", alpha=0.5, label="girls"),
                     mpatches.Patch(color="tab:blue", alpha=0.5, label="boys")], fontsize=8, loc="upper right")
  ax.set(xlabel="reference bone age band (years)", ylabel="prediction - reference (months)",
         title=f"Signed error by age band (boxes: quartiles; whiskers: 1.5 IQR)\n{title}")
  return _save(fig, path)


def write_all(output_dir: str, *, true_months, pred_months, male, confusion_matrix, group_names,
              title: str = "") -> list[str]:
  """All four plots into output_dir; returns their file names."""
  true_months = np.asarray(true_months, dtype=np.float64)
  pred_months = np.asarray(pred_months, dtype=np.float64)
  male = np.asarray(male, dtype=bool)
  paths = [
      scatter(os.path.join(output_dir, SCATTER_FILE), true_months, pred_months, male, title),
      bland_altman(os.path.join(output_dir, BLAND_ALTMAN_FILE), true_months, pred_months, title),
      confusion_plot(os.path.join(output_dir, CONFUSION_FILE), confusion_matrix, group_names, title),
      error_by_age(os.path.join(output_dir, ERROR_BY_AGE_FILE), true_months, pred_months, male, title),
  ]
  return [os.path.basename(p) for p in paths]
