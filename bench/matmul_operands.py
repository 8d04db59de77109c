"""Operands and output samples of bench/torch_twin.py's matmul cases, numpy only.

Imported by both sides (torch_twin.py under JAX, torch_twin_worker.py under
PyTorch), so that each builds the same float32 operands without shipping them
over the pipe, and both compare the same output elements.
"""
import numpy as np

_SAMPLES = 64


def operand(shape, seed):
  """A deterministic float32 array of `shape` with values in [-1, 1]."""
  size = int(np.prod(shape))
  return np.sin(np.arange(size, dtype=np.float64) * 0.7 + seed).astype(np.float32).reshape(shape)


def output_sample(output):
  """`_SAMPLES` elements of `output`, evenly spaced over its flat view, float64."""
  flat = np.asarray(output, np.float64).reshape(-1)
  return flat[np.linspace(0, flat.size - 1, _SAMPLES).astype(np.int64)]
