r"""Renders one synthetic slice at every degradation level, with its labels.

  mdiqa-montage --output=docs/images/montage.png [--size=small|challenge] \
      [--seed=0] [--split=test] [--patient=0] [--slice=0]

Rows: dose fractions (full dose first); columns: full views, then the sparse
view counts from most to fewest. Each panel's title gives the cell, the
label (mean score) and the raters' integer scores. The first column shows,
for reference, the phantom and the noise-free full-view reconstruction the
raters compare against. Images are the windowed [0, 1] slices exactly as
stored in the dataset.
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
from mdiqa_jax.data import synthetic  # pylint: disable=g-import-not-at-top

_OUTPUT = flags.DEFINE_string('output', 'docs/images/montage.png',
                              'Where to write the PNG.')
_SIZE = flags.DEFINE_enum('size', 'clinical', ['clinical', 'challenge'],
                          'Which dataset spec to simulate.')
_SEED = flags.DEFINE_integer('seed', None, 'Dataset seed (default: the spec\'s).')
_SPLIT = flags.DEFINE_string('split', 'test', 'Split the patient comes from.')
_PATIENT = flags.DEFINE_integer('patient', 0, 'Patient index in the split.')
_SLICE = flags.DEFINE_integer('slice', 0, 'Slice index of the patient.')
_DPI = flags.DEFINE_integer('dpi', 80, 'Resolution of the PNG.')

_SPECS = {'clinical': synthetic.CLINICAL_SPEC, 'challenge': synthetic.CHALLENGE_SPEC}


def render(spec: synthetic.SyntheticSpec, split: str, patient_index: int,
           slice_index: int, output: str, dpi: int = 80) -> list[dict]:
  """Simulates the slice at every grid cell and writes the montage PNG.

  Returns:
    The examples, row-major (dose fractions x [full, sparse views
    descending]).
  """
  if not 0 <= slice_index < spec.slices_per_patient:
    raise ValueError(f'--slice must be in [0, {spec.slices_per_patient}), '
                     f'got {slice_index}.')
  views = [spec.num_views_full] + sorted(spec.sparse_views, reverse=True)
  doses = sorted(spec.dose_fractions, reverse=True)
  panel = synthetic.make_panel(spec)
  columns = len(views) + 1
  figure, axes = plt.subplots(len(doses), columns,
                              figsize=(2.6 * columns, 2.85 * len(doses)))
  axes = np.atleast_2d(axes)
  examples = []
  for row, dose in enumerate(doses):
    for column, num_views in enumerate(views, start=1):
      scan = synthetic.simulate_scan(spec, split, patient_index, slice_index,
                                     dose, num_views, panel)
      example = scan.example
      examples.append(example)
      scores = ' '.join(str(int(s)) for s in example['rater_scores'])
      view_text = 'full views' if num_views == spec.num_views_full else (
          f'{num_views} views')
      axis = axes[row, column]
      axis.imshow(example['image'][..., 0], cmap='gray', vmin=0.0, vmax=1.0,
                  interpolation='nearest')
      axis.set_title(f'dose {dose:.0%}, {view_text}\n'
                     f'score {example["score"]:.1f}  [{scores}]', fontsize=9)
  references = [('phantom', scan.phantom_hu),
                ('noise-free FBP,\nfull views (reference)', scan.reference_hu)]
  for row in range(len(doses)):
    axes[row, 0].axis('off')
  for row, (title, image_hu) in enumerate(references[:len(doses)]):
    axes[row, 0].axis('on')
    axes[row, 0].imshow(
        intensity.window_to_unit(image_hu, spec.window_width, spec.window_level),
        cmap='gray', vmin=0.0, vmax=1.0, interpolation='nearest')
    axes[row, 0].set_title(title, fontsize=9)
  for axis in axes.ravel():
    axis.set_xticks([])
    axis.set_yticks([])
  figure.suptitle(
      f'{examples[0]["patient_id"]}, slice {slice_index}: '
      f'{spec.image_size} px, window W{spec.window_width:g}/L{spec.window_level:g}'
      f' HU; label = mean of {spec.num_raters} simulated raters (0-4)',
      fontsize=10)
  figure.tight_layout()
  files.save_figure_atomically(figure, output, dpi=dpi)
  plt.close(figure)
  return examples


def main(argv):
  del argv
  spec = _SPECS[_SIZE.value]
  if _SEED.value is not None:
    spec = dataclasses.replace(spec, seed=_SEED.value)
  examples = render(spec, _SPLIT.value, _PATIENT.value, _SLICE.value,
                    _OUTPUT.value, _DPI.value)
  for example in examples:
    print(f'dose {float(example["dose_fraction"]):.2f} views '
          f'{int(example["views"]):5d}: score {float(example["score"]):.1f} '
          f'raters {example["rater_scores"].astype(int).tolist()}')
  print(f'Wrote {_OUTPUT.value}')


def run():
  """Console entry point (`mdiqa-montage`)."""
  app.run(main)


if __name__ == '__main__':
  run()
