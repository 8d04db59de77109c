"""MD-IQA in JAX/Flax: no-reference image quality assessment for low-dose CT.

  import mdiqa_jax
  scorer = mdiqa_jax.Scorer.load()          # the bundled model, or .load('runs/x')
  scorer.score(hu, pixel_mm=0.74).scores    # (N,) quality, 0 (bad) .. 4 (excellent)
"""
__version__ = '0.1.0'

# The API is imported on first use, so that `import mdiqa_jax.io` (or any
# other subpackage) does not pull in the model and its dependencies.
_LAZY = {'Scorer': 'mdiqa_jax.inference.scorer',
         'SliceScores': 'mdiqa_jax.inference.scorer',
         'ScorerInputError': 'mdiqa_jax.inference.scorer'}


def __getattr__(name):
  if name in _LAZY:
    import importlib  # pylint: disable=g-import-not-at-top
    return getattr(importlib.import_module(_LAZY[name]), name)
  raise AttributeError(f'module {__name__!r} has no attribute {name!r}')


def __dir__():
  return sorted(list(globals()) + list(_LAZY))
