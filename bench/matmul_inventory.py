"""The matrix products a JAX function runs: every dot_general in its jaxpr.

`dot_inventory(function, *arguments)` traces `function` (arguments may be
jax.ShapeDtypeStruct) and lists each distinct dot_general with how often it
runs: inside `scan` bodies counted `length` times, of a `cond` only the branch
with the most work. bench/torch_twin.py times the inventory on both frameworks
to bound how fast a whole model can be when its matmuls alone take so long.
"""
import collections
import string

import jax
from jax.extend import core as jax_core
import numpy as np


def einsum_spec(lhs_ndim, rhs_ndim, dimension_numbers):
  """The einsum string of lax.dot_general: batch, lhs free, rhs free dims out."""
  (lhs_contract, rhs_contract), (lhs_batch, rhs_batch) = dimension_numbers
  letters = iter(string.ascii_letters)
  lhs = [next(letters) for _ in range(lhs_ndim)]
  rhs = [None] * rhs_ndim
  for l, r in zip(tuple(lhs_contract) + tuple(lhs_batch),
                  tuple(rhs_contract) + tuple(rhs_batch)):
    rhs[r] = lhs[l]
  rhs = [letter or next(letters) for letter in rhs]
  out = ([lhs[d] for d in lhs_batch]
         + [lhs[d] for d in range(lhs_ndim) if d not in (*lhs_contract, *lhs_batch)]
         + [rhs[d] for d in range(rhs_ndim) if d not in (*rhs_contract, *rhs_batch)])
  return f'{"".join(lhs)},{"".join(rhs)}->{"".join(out)}'


def _sub_jaxprs(value):
  if isinstance(value, jax_core.ClosedJaxpr):
    return [value.jaxpr]
  if isinstance(value, jax_core.Jaxpr):
    return [value]
  if isinstance(value, (tuple, list)):
    return [j for v in value for j in _sub_jaxprs(v)]
  return []


def _count_dots(jaxpr, counts, times):
  for eqn in jaxpr.eqns:
    if eqn.primitive.name == 'dot_general':
      lhs, rhs = (v.aval for v in eqn.invars)
      key = (tuple(lhs.shape), tuple(rhs.shape), str(lhs.dtype), str(rhs.dtype),
             einsum_spec(lhs.ndim, rhs.ndim, eqn.params['dimension_numbers']))
      counts[key] += times
      continue
    inner_times = times * eqn.params.get('length', 1) if eqn.primitive.name == 'scan' else times
    subs = [j for value in eqn.params.values() for j in _sub_jaxprs(value)]
    if eqn.primitive.name == 'cond':  # alternatives: the branch with the most work
      branches = []
      for sub in subs:
        branch = collections.Counter()
        _count_dots(sub, branch, inner_times)
        branches.append(branch)
      counts.update(max(branches, key=lambda b: sum(_flops(k) * n for k, n in b.items())))
      continue
    for sub in subs:
      _count_dots(sub, counts, inner_times)


def _flops(key):
  lhs_shape, rhs_shape, _, _, spec = key
  sizes = dict(zip(spec.split('->')[0].replace(',', ''), (*lhs_shape, *rhs_shape)))
  return 2 * int(np.prod([sizes[letter] for letter in set(sizes)]))


def dot_inventory(function, *arguments):
  """[{'lhs_shape', 'rhs_shape', 'dtype', 'einsum', 'count', 'flops'}], most work first.

  flops: 2 x multiply-adds of one product; count: how often it runs per call.
  """
  closed = jax.make_jaxpr(function)(*arguments)
  counts = collections.Counter()
  _count_dots(closed.jaxpr, counts, 1)
  rows = []
  for key, count in counts.items():
    lhs_shape, rhs_shape, lhs_dtype, rhs_dtype, spec = key
    if lhs_dtype != rhs_dtype:
      raise ValueError(f'mixed-dtype dot_general {key}')
    rows.append({'lhs_shape': list(lhs_shape), 'rhs_shape': list(rhs_shape),
                 'dtype': lhs_dtype, 'einsum': spec, 'count': count, 'flops': _flops(key)})
  return sorted(rows, key=lambda row: -row['flops'] * row['count'])
