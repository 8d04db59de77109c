"""gradient_fusion_barrier: the identity, forward and backward, inside jit and grad."""
import jax
import jax.numpy as jnp
import numpy as np

from mdiqa_jax.ops import gradient_fusion_barrier


def test_values_and_gradients_are_those_of_the_identity():
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.normal(size=(2, 5, 3)), jnp.float32)
  weights = jnp.asarray(rng.normal(size=(3, 3)), jnp.float32)

  def stack(x, barrier):
    for _ in range(3):  # A residual chain, the pattern the barrier is for.
      x = x + jnp.tanh(x @ weights)
      x = barrier(x)
    return jnp.sum(x ** 2)

  with_barrier = jax.jit(jax.value_and_grad(lambda x: stack(x, gradient_fusion_barrier)))
  without = jax.value_and_grad(lambda x: stack(x, lambda v: v))
  (value, gradient), (want_value, want_gradient) = with_barrier(x), without(x)
  np.testing.assert_allclose(value, want_value, rtol=1e-6)
  np.testing.assert_allclose(gradient, want_gradient, rtol=1e-6, atol=1e-6)


def test_a_nan_first_cotangent_element_leaves_the_others_unchanged():
  cotangent = jnp.array([jnp.nan, 2.0, -3.0, 0.5])
  _, vjp = jax.vjp(gradient_fusion_barrier, jnp.zeros(4))
  (got,) = jax.jit(vjp)(cotangent)
  assert np.isnan(got[0])
  np.testing.assert_array_equal(got[1:], cotangent[1:])
