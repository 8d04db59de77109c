"""Merging converted checkpoint arrays onto freshly initialised params, with a report.

`merge` is the one place that decides what is loaded: every initialised
parameter must be matched by the checkpoint (or excluded by `dont_load`),
every checkpoint array must land on a parameter, and shapes must agree after
the family's adapters (position-embedding resampling, input-channel
reduction). Anything else is an error listing the offending keys: there is no
silent partial load.
"""
import dataclasses
import re
from typing import Any, Callable, Sequence

from flax import traverse_util
import numpy as np

from mdiqa_jax import command_errors

from mdiqa_jax.convert import big_vision_vit
from mdiqa_jax.convert import timm_convnext
from mdiqa_jax.convert import timm_vit

CHANNEL_REDUCTIONS = ('sum', 'mean')
# Error messages list at most this many keys, then a count of the rest.
_MAX_LISTED_KEYS = 40

# An adapter turns a checkpoint array into the shape of the initialised
# parameter, or returns None when it cannot; it returns (array, note).
Adapter = Callable[[np.ndarray, tuple[int, ...]], tuple[np.ndarray, str] | None]


@dataclasses.dataclass
class LoadReport:
  """What a load did, by parameter name ('/'-joined, relative to the params given).

  loaded: copied unchanged; resized: position embeddings resampled to the
  model's grid; adapted: input-channel kernels reduced (sum / mean over RGB);
  left_initialised: kept from the init because of `dont_load`; ignored:
  checkpoint arrays the backbone has no use for (classifier heads).
  """
  source: str
  loaded: list[str] = dataclasses.field(default_factory=list)
  resized: list[str] = dataclasses.field(default_factory=list)
  adapted: list[str] = dataclasses.field(default_factory=list)
  left_initialised: list[str] = dataclasses.field(default_factory=list)
  ignored: list[str] = dataclasses.field(default_factory=list)

  def summary(self) -> str:
    """A few human-readable lines for logs."""
    lines = [f'Loaded {self.source}: {len(self.loaded)} loaded, {len(self.resized)} '
             f'resized, {len(self.adapted)} adapted, {len(self.left_initialised)} left '
             f'initialised, {len(self.ignored)} checkpoint arrays ignored.']
    for title, items in (('resized', self.resized), ('adapted', self.adapted),
                         ('left initialised', self.left_initialised),
                         ('ignored', self.ignored)):
      if items:
        lines.append(f'  {title}: {command_errors.listing(items, _MAX_LISTED_KEYS)}')
    return '\n'.join(lines)

  def to_dict(self) -> dict[str, Any]:
    return dataclasses.asdict(self)


def merge(init_params, checkpoint: dict[str, np.ndarray], *, source: str,
          dont_load: Sequence[str] = (), resizers: dict[str, Adapter] | None = None,
          channel_adapters: dict[str, Adapter] | None = None, ignored: Sequence[str] = ()):
  """Maps converted checkpoint arrays onto initialised params.

  Args:
    init_params: nested dict of the model's freshly initialised params (arrays
      or jax.ShapeDtypeStruct; only shape and dtype are read, except for the
      entries kept because of `dont_load`).
    checkpoint: {'/'-joined param name: array} already in the model's naming.
    source: file name, for messages.
    dont_load: regular expressions; params whose '/'-joined name fully
      matches one keep their initial value.
    resizers: {param name: Adapter} for position embeddings made for another
      grid; reported as 'resized'.
    channel_adapters: {param name: Adapter} for input kernels made for another
      channel count; reported as 'adapted'.
    ignored: checkpoint names deliberately unused, recorded in the report.

  Returns:
    (params, LoadReport): params with the structure of init_params.

  Raises:
    ValueError listing missing keys, unexpected keys, or shape mismatches.
  """
  adapters = {**{k: (v, 'resized') for k, v in (resizers or {}).items()},
              **{k: (v, 'adapted') for k, v in (channel_adapters or {}).items()}}
  init_flat = traverse_util.flatten_dict(init_params, sep='/')
  patterns = [re.compile(p) for p in dont_load]
  keep = {k for k in init_flat if any(p.fullmatch(k) for p in patterns)}
  missing = sorted(k for k in init_flat if k not in checkpoint and k not in keep)
  unexpected = sorted(k for k in checkpoint if k not in init_flat)
  problems = []
  if missing:
    problems.append(f'missing from the checkpoint ({len(missing)}): '
                    f'{command_errors.listing(missing, _MAX_LISTED_KEYS)}')
  if unexpected:
    problems.append(f'in the checkpoint but not in the model ({len(unexpected)}): '
                    f'{command_errors.listing(unexpected, _MAX_LISTED_KEYS)}')
  report = LoadReport(source=source, ignored=sorted(ignored),
                      left_initialised=sorted(keep))
  merged = {}
  mismatched = []
  for key, init_value in init_flat.items():
    if key in keep:
      merged[key] = init_value
      continue
    if key not in checkpoint:
      continue
    array = np.asarray(checkpoint[key])
    target_shape = tuple(init_value.shape)
    if array.shape == target_shape:
      report.loaded.append(key)
    else:
      adapter, category = adapters.get(key, (None, None))
      adapted = adapter(array, target_shape) if adapter else None
      if adapted is None:
        mismatched.append(f'{key}: checkpoint {array.shape} vs model {target_shape}')
        continue
      array, note = adapted
      getattr(report, category).append(f'{key}: {note}')
    merged[key] = np.asarray(array, dtype=init_value.dtype)
  if mismatched:
    problems.append(f'shape mismatches ({len(mismatched)}): '
                    f'{command_errors.listing(mismatched, _MAX_LISTED_KEYS)}')
  if problems:
    raise ValueError(f'Cannot load {source} onto the model: ' + '; '.join(problems) +
                     '. (Wrong model family or preset? Use dont_load to keep chosen '
                     'params from the init.)')
  return traverse_util.unflatten_dict(merged, sep='/'), report


def reduce_input_channels(reduction: str) -> Adapter:
  """Adapter for an input kernel (kh, kw, C_file, out) onto (kh, kw, 1, out).

  'sum' (default): the single-channel model applied to a grey image g gives
  exactly what the checkpoint's RGB model gives on (g, g, g), since
  sum_c W_c * g = (sum_c W_c) * g; the input normalisation must then be the
  same for all channels. 'mean' divides that by C_file, keeping the kernel's
  scale (the response to a grey image is 1/C_file of the RGB model's).
  """
  if reduction not in CHANNEL_REDUCTIONS:
    raise ValueError(f'channel_reduction={reduction!r}; expected one of {CHANNEL_REDUCTIONS}.')

  def adapt(array, target_shape):
    if (array.ndim != 4 or len(target_shape) != 4 or target_shape[2] != 1
        or array.shape[:2] != target_shape[:2] or array.shape[3] != target_shape[3]):
      return None
    reduce = np.sum if reduction == 'sum' else np.mean
    return (reduce(array, axis=2, keepdims=True),
            f'{reduction} over {array.shape[2]} input channels -> 1')

  return adapt


def describe(arrays) -> str:
  """What kind of checkpoint the arrays look like, for error messages."""
  if timm_vit.looks_like(arrays):
    return 'a timm ViT state dict'
  if big_vision_vit.looks_like(arrays):
    return 'a big_vision / AugReg ViT checkpoint'
  if timm_convnext.looks_like(arrays):
    return 'a timm ConvNeXt state dict'
  return f'an unrecognised checkpoint (first names: {sorted(arrays)[:8]})'
