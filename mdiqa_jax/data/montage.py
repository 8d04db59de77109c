r"""Renders one synthetic slice at every degradation level, 1:1, with its labels.

  mdiqa-montage --output=docs/images/montage.png [--size=clinical|challenge] \
      [--seed=0] [--split=test] [--patient=0] [--slice=0] [--crop=160] \
      [--kernel=hann] [--slice_thickness_mm=3]

Every panel is a crop of `--crop` x `--crop` native pixels shown at one
screen pixel per image pixel (no resampling), so the noise grain and the
streaks look as a reader sees them at native resolution; crops are centred
on the liver. Rows: dose fractions (full dose first); columns: full views,
then the sparse view counts from most to fewest; a last row shows the
full-dose, full-view scan with every kernel. The first column shows the
whole slice (scaled down, with the crop outlined), the phantom and the
noise-free full-view reconstruction the raters compare against. Panel
titles give the cell, the label (mean score) and the raters' integer
scores. Images are the stored uint8 window (W350 / L40 HU).
"""
import dataclasses

from absl import app
from absl import flags
import matplotlib

matplotlib.use('Agg')
import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
import numpy as np  # pylint: disable=g-import-not-at-top

from mdiqa_jax import files  # pylint: disable=g-import-not-at-top
from mdiqa_jax.data import intensity  # pylint: disable=g-import-not-at-top
from mdiqa_jax.data import phantoms  # pylint: disable=g-import-not-at-top
from mdiqa_jax.data import synthetic  # pylint: disable=g-import-not-at-top

_OUTPUT = flags.DEFINE_string('output', 'docs/images/montage.png',
                              'Where to write the PNG.')
_SIZE = flags.DEFINE_enum('size', 'clinical', ['clinical', 'challenge'],
                          'Which dataset spec to simulate.')
_SEED = flags.DEFINE_integer('seed', None, 'Dataset seed (default: the spec\'s).')
_SPLIT = flags.DEFINE_string('split', 'test', 'Split the patient comes from.')
_PATIENT = flags.DEFINE_integer('patient', 0, 'Patient index in the split.')
_SLICE = flags.DEFINE_integer('slice', 0, 'Slice index of the patient.')
_CROP = flags.DEFINE_integer('crop', 160, 'Side of the 1:1 crops, pixels.')
_KERNEL = flags.DEFINE_string(
    'kernel', None, 'Kernel of the dose x views grid (default: the one the '
    'dataset draws for the slice).')
_THICKNESS = flags.DEFINE_float(
    'slice_thickness_mm', None, 'Slice thickness, mm (default: drawn).')

_SPECS = {'clinical': synthetic.CLINICAL_SPEC,
          'challenge': synthetic.CHALLENGE_SPEC}
_TITLE_PX = 30   # Height of a panel's title strip, pixels.
_GAP_PX = 6      # Space between panels, pixels.
_HEADER_PX = 46  # Figure title.
_DPI = 100


def _crop_box(slice_: phantoms.Slice, crop: int) -> tuple[slice, slice]:
  """(rows, cols) of a crop x crop window centred on the liver (or the
  image centre), kept inside the image."""
  size = slice_.hu.shape[0]
  crop = min(crop, size)
  liver = np.argwhere(slice_.masks['liver'])
  centre = liver.mean(axis=0) if len(liver) else np.array([size / 2.0] * 2)
  top, left = (np.clip(np.round(centre - crop / 2.0), 0, size - crop)
               .astype(int))
  return slice(top, top + crop), slice(left, left + crop)


def _scores_text(example: dict) -> str:
  scores = ' '.join(str(int(s)) for s in example['rater_scores'])
  return f'score {float(example["score"]):.1f}  [{scores}]'


def render(spec: synthetic.SyntheticSpec, split: str, patient_index: int,
           slice_index: int, output: str, *, crop: int = 160,
           kernel: str | None = None,
           slice_thickness_mm: float | None = None) -> list[dict]:
  """Simulates the slice at every grid cell and kernel; writes the PNG.

  Returns:
    The examples: row-major (dose fractions x [full, sparse views
    descending]), then one per kernel at full dose and full views.
  """
  if not 0 <= slice_index < spec.slices_per_patient:
    raise ValueError(f'--slice must be in [0, {spec.slices_per_patient}), '
                     f'got {slice_index}.')
  drawn = synthetic.sample_degradations(spec, split, patient_index, slice_index)[0]
  kernel = drawn.kernel if kernel is None else kernel
  thickness = (drawn.slice_thickness_mm if slice_thickness_mm is None
               else slice_thickness_mm)
  views = [spec.num_views_full] + sorted(spec.sparse_views, reverse=True)
  doses = sorted(spec.dose_fractions, reverse=True)
  grid = [synthetic.Degradation(dose, count, kernel, thickness)
          for dose in doses for count in views]
  by_kernel = [synthetic.Degradation(1.0, spec.num_views_full, name, thickness)
               for name in spec.kernels]
  scans = synthetic.simulate_scans(spec, split, patient_index, slice_index,
                                   tuple(grid + by_kernel))
  patient = synthetic.make_patient(spec, split, patient_index)
  pixel_mm = synthetic.patient_pixel_mm(spec, split, patient_index, patient)
  slice_ = phantoms.render_slice(patient, synthetic.slice_z_mm(spec, slice_index),
                                 image_size=spec.image_size,
                                 pixel_size_mm=synthetic.render_pixel_mm(
                                     spec, split, patient_index, patient),
                                 supersample=spec.supersample)
  rows, cols = _crop_box(slice_, crop)
  crop = rows.stop - rows.start

  def stored(hu):  # The dataset's uint8 window.
    return intensity.unit_to_uint8(intensity.window_to_unit(
        hu, spec.window_width, spec.window_level))

  panels = []  # (grid row, grid column, uint8 image, title)
  whole = stored(slice_.hu)
  panels.append((0, 0, None, 'whole slice (scaled),\ncrop outlined'))
  panels.append((1, 0, whole[rows, cols], 'phantom'))
  panels.append((2, 0, stored(scans[0].reference_hu)[rows, cols],
                 'noise-free FBP,\nfull views (reference)'))
  for index, (degradation, scan) in enumerate(zip(grid, scans)):
    row, column = divmod(index, len(views))
    view_text = ('full views' if degradation.views == spec.num_views_full
                 else f'{degradation.views} views')
    panels.append((row, column + 1, scan.example['image'][rows, cols, 0],
                   f'dose {degradation.dose_fraction:.0%}, {view_text}\n'
                   f'{_scores_text(scan.example)}'))
  for column, (degradation, scan) in enumerate(
      zip(by_kernel, scans[len(grid):])):
    panels.append((len(doses), column + 1, scan.example['image'][rows, cols, 0],
                   f'{degradation.kernel}, full dose\n'
                   f'{_scores_text(scan.example)}'))

  num_rows, num_columns = len(doses) + 1, len(views) + 1
  cell_w, cell_h = crop + _GAP_PX, crop + _TITLE_PX + _GAP_PX
  width, height = num_columns * cell_w + _GAP_PX, num_rows * cell_h + _HEADER_PX
  figure = plt.figure(figsize=(width / _DPI, height / _DPI), dpi=_DPI)

  def axes_at(row, column):
    left = _GAP_PX + column * cell_w
    bottom = height - _HEADER_PX - (row + 1) * cell_h + _GAP_PX
    axis = figure.add_axes([left / width, bottom / height, crop / width,
                            crop / height])
    axis.set_xticks([])
    axis.set_yticks([])
    return axis

  for row, column, image, title in panels:
    axis = axes_at(row, column)
    if image is None:  # The whole slice, scaled into the panel.
      axis.imshow(whole, cmap='gray', vmin=0, vmax=255,
                  extent=(0, spec.image_size, spec.image_size, 0))
      axis.add_patch(plt.Rectangle((cols.start, rows.start), crop, crop,
                                   fill=False, edgecolor='red', linewidth=1))
    else:
      axis.imshow(image, cmap='gray', vmin=0, vmax=255, interpolation='nearest')
    axis.set_title(title, fontsize=7.5, pad=2)
  examples = [scan.example for scan in scans]
  figure.suptitle(
      f'{examples[0]["patient_id"]}, slice {slice_index}: {spec.image_size} px of '
      f'{pixel_mm:.2f} mm, {crop} x {crop} crops at 1:1; kernel {kernel}, '
      f'{thickness:g} mm slices (last row: every kernel); W{spec.window_width:g}/'
      f'L{spec.window_level:g} HU;\nlabel = mean of {spec.num_raters} simulated '
      'raters (0-4)', fontsize=8.5, y=1.0 - 4 / height, va='top')
  files.save_figure_atomically(figure, output, dpi=_DPI)
  plt.close(figure)
  return examples


def main(argv):
  del argv
  spec = _SPECS[_SIZE.value]
  if _SEED.value is not None:
    spec = dataclasses.replace(spec, seed=_SEED.value)
  examples = render(spec, _SPLIT.value, _PATIENT.value, _SLICE.value,
                    _OUTPUT.value, crop=_CROP.value, kernel=_KERNEL.value,
                    slice_thickness_mm=_THICKNESS.value)
  for example in examples:
    print(f'dose {float(example["dose_fraction"]):.2f} views '
          f'{int(example["views"]):5d} kernel {example["kernel"]:12s}: score '
          f'{float(example["score"]):.1f} raters '
          f'{example["rater_scores"].astype(int).tolist()}')
  print(f'Wrote {_OUTPUT.value}')


def run():
  """Console entry point (`mdiqa-montage`)."""
  app.run(main)


if __name__ == '__main__':
  run()
