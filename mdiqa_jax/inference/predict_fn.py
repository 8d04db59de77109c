"""The one jitted apply of a trained model: `make_predict_fn(model, keys)`."""
import functools
from typing import Any, Callable, Dict, Sequence

import jax

PredictFn = Callable[[Any, jax.Array], Dict[str, jax.Array]]


@functools.lru_cache(maxsize=8)
def make_predict_fn(model: Any, keys: Sequence[str]) -> PredictFn:
  """jit(params, tiles (n, S, S, 1) float32 in [0, 1]) -> {key: output} for the
  model outputs named in `keys` (a tuple; those the head does not return are
  left out, e.g. 'patch_log_probs' of a point head).

  Cached per (model, keys) (flax modules are hashable), so repeated calls in
  one process reuse the compiled function.
  """
  keys = tuple(keys)

  def predict(params, tiles):
    outputs = model.apply({'params': params}, tiles, train=False)
    return {key: outputs[key] for key in keys if key in outputs}
  return jax.jit(predict)
