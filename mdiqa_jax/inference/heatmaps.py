"""Heatmaps: one PNG per scored slice, of its patch scores and weight shares.

Each PNG shows the slice as scored, the per-patch scores over the whole slice
and each region's share of the slice score's weight (patch weights times body
fraction). Its name is the file's path under the inputs' common folder,
percent-encoded (`urllib.parse.quote`, so '/' becomes %2F and the extension
stays), then `_slice<NNNN>.png`: names are unique and `heatmap_source` turns
one back into (path, slice).
"""
import os
from typing import Any, Callable, Dict, List, Sequence, Tuple
import urllib.parse

from mdiqa_jax import command_errors
from mdiqa_jax import files
from mdiqa_jax import io as ct_io
from mdiqa_jax.inference.rows import spacing_text

_HEATMAP_SUFFIX = '_slice{index:04d}.png'


def heatmap_name(file: str, index: int, root: str) -> str:
  """PNG name of a slice's heatmap: its path under `root`, percent-encoded, + slice.

  Unique per (file, slice) and reversible (`heatmap_source`): the extension
  stays, and '/' and '%' are encoded, so 'a/x.npy', 'a__x.npy' and 'a/x.dcm'
  give three names.
  """
  relative = os.path.relpath(os.path.abspath(file), root)
  return urllib.parse.quote(relative, safe='') + _HEATMAP_SUFFIX.format(index=index)


def heatmap_source(name: str, root: str) -> Tuple[str, int]:
  """(file path, slice index) of a name made by `heatmap_name(file, index, root)`."""
  stem, _, slice_part = name.rpartition('_slice')
  return os.path.join(root, urllib.parse.unquote(stem)), int(slice_part.removesuffix('.png'))


def write_heatmap(path: str, prediction: Dict[str, Any], title: str) -> None:
  """The slice as scored, its patch scores and weight shares, as a PNG.

  Args:
    path: PNG to write.
    prediction: from `scoring.score_slices(with_maps=True)` (image,
      score_map, weight_map, score, uncertainty, pixel_mm).
    title: first line of the figure title (file and slice).
  """
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  figure, axes = plt.subplots(1, 3, figsize=(13, 4.6))
  panels = [
      (None, None, f'slice as scored ({spacing_text(prediction["pixel_mm"])} mm pixels)'),
      (prediction['score_map'], dict(cmap='RdYlGn', vmin=0.0, vmax=4.0), 'patch scores'),
      (prediction['weight_map'] / max(float(prediction['weight_map'].max()), 1e-30),
       dict(cmap='magma', vmin=0.0, vmax=1.0), 'share of the score (relative)'),
  ]
  for axis, (overlay, style, name) in zip(axes, panels):
    axis.imshow(prediction['image'], cmap='gray', vmin=0.0, vmax=1.0)
    if overlay is not None:
      shown = axis.imshow(overlay, alpha=0.55, interpolation='nearest', **style)
      figure.colorbar(shown, ax=axis, fraction=0.046, pad=0.02)
    axis.set_title(name, fontsize=9)
    axis.axis('off')
  figure.suptitle(f'{title}\nscore {prediction["score"]:.3f} ± '
                  f'{prediction["uncertainty"]:.3f} ({prediction["num_tiles"]} tiles)',
                  fontsize=10)
  figure.tight_layout()
  files.save_figure_atomically(figure, path, dpi=90)
  plt.close(figure)


def heatmap_writer(heatmap_dir: str, inputs: Sequence[str],
                   failures: List[ct_io.InputFileError]) -> Callable[[Any, Dict[str, Any]], None]:
  """on_prediction callback writing one PNG per slice into heatmap_dir.

  A heatmap that cannot be written (full disk, a name the file system
  refuses) is appended to `failures` and the run goes on.
  """
  os.makedirs(heatmap_dir, exist_ok=True)
  existing = [os.path.abspath(p) for p in inputs if os.path.exists(p)]
  root = os.path.commonpath(existing) if existing else os.getcwd()
  root = root if os.path.isdir(root) else os.path.dirname(root)

  def write(key: Any, prediction: Dict[str, Any]) -> None:
    name = heatmap_name(key.slice.file, key.slice.index, root)
    try:
      write_heatmap(os.path.join(heatmap_dir, name), prediction,
                    f'{key.slice.file} [slice {key.slice.index}]')
    except (OSError, ValueError) as e:  # ValueError: matplotlib on an unusable path.
      failures.append(ct_io.InputFileError(
          key.slice.file, f'slice {key.slice.index}: scored, but its heatmap '
          f'{os.path.join(heatmap_dir, name)} cannot be written: {command_errors.one_line(e)}'))
  return write
