"""Numerical ops used by the models: pure functions of arrays."""
from mdiqa_jax.ops.deform import deform_conv2d
from mdiqa_jax.ops.depthwise import depthwise_conv2d
from mdiqa_jax.ops.fusion_barrier import gradient_fusion_barrier
from mdiqa_jax.ops.resized_conv import resized_conv2d

__all__ = ['deform_conv2d', 'depthwise_conv2d', 'gradient_fusion_barrier', 'resized_conv2d']
