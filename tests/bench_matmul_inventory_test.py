"""bench/matmul_inventory.py: the einsum of a dot_general, and the products a function runs."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import bench_modules

inventory = bench_modules.load('matmul_inventory')


@pytest.mark.parametrize('lhs_shape,rhs_shape,dimension_numbers', [
    ((3, 4), (4, 5), (((1,), (0,)), ((), ()))),
    ((4, 3), (5, 4), (((0,), (1,)), ((), ()))),
    ((2, 3, 4, 5), (2, 5, 4, 6), (((3, 2), (1, 2)), ((0,), (0,)))),
    ((6, 2, 3), (3, 2, 7), (((2,), (0,)), ((1,), (1,)))),
])
def test_einsum_spec_computes_dot_general(lhs_shape, rhs_shape, dimension_numbers):
  rng = np.random.default_rng(0)
  lhs = rng.normal(size=lhs_shape).astype(np.float32)
  rhs = rng.normal(size=rhs_shape).astype(np.float32)
  spec = inventory.einsum_spec(len(lhs_shape), len(rhs_shape), dimension_numbers)
  expected = jax.lax.dot_general(lhs, rhs, dimension_numbers)
  np.testing.assert_allclose(np.einsum(spec, lhs, rhs), expected, rtol=1e-5, atol=1e-5)


def test_dot_inventory_counts_products_in_scans_and_one_cond_branch():
  x = jax.ShapeDtypeStruct((8, 16), jnp.float32)
  w = jax.ShapeDtypeStruct((16, 16), jnp.float32)

  def function(x, w):
    y = x @ w  # one 8x16x16 product

    def body(carry, _):
      return jnp.tanh(carry @ w), None  # three more
    y, _ = jax.lax.scan(body, y, None, length=3)
    # A cond runs one branch: only the costlier one (two products) counts.
    return jax.lax.cond(y.sum() > 0, lambda y: (y @ w) @ w, lambda y: y, y)

  rows = inventory.dot_inventory(function, x, w)
  assert len(rows) == 1
  assert rows[0]['lhs_shape'] == [8, 16] and rows[0]['rhs_shape'] == [16, 16]
  assert rows[0]['count'] == 1 + 3 + 2
  assert rows[0]['flops'] == 2 * 8 * 16 * 16


def test_dot_inventory_of_a_gradient_has_the_transposed_products():
  x = jax.ShapeDtypeStruct((8, 32), jnp.float32)
  w = jax.ShapeDtypeStruct((32, 4), jnp.float32)
  rows = inventory.dot_inventory(jax.grad(lambda x, w: jnp.sum((x @ w) ** 2), (0, 1)), x, w)
  # forward x @ w, then d/dx = g @ w.T and d/dw = x.T @ g: three products of 8 x 32 x 4.
  assert sum(row['count'] for row in rows) == 3
  assert all(row['flops'] == 2 * 8 * 32 * 4 for row in rows)
