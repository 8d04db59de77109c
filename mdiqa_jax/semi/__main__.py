"""`python -m mdiqa_jax.semi`: the mdiqa-semi command."""
from mdiqa_jax.semi.main import run

run()
