"""MD-IQA in JAX/Flax: no-reference image quality assessment for low-dose CT."""
__version__ = '0.1.0'
