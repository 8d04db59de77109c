"""Argument checks the ops share."""
from collections.abc import Sequence

IntPair = int | Sequence[int]


def as_pair(op_name: str, name: str, value: IntPair, minimum: int) -> tuple[int, int]:
  """Returns `value` as (height, width) ints, each checked to be >= minimum.

  Raises:
    ValueError: naming `op_name` and the argument `name`, if `value` is not an
      int or a pair of ints >= minimum.
  """
  pair = (value, value) if isinstance(value, int) else tuple(value)
  if (len(pair) != 2 or not all(isinstance(v, int) for v in pair)
      or min(pair) < minimum):
    raise ValueError(
        f'{op_name}: {name} must be an int or a pair of ints >= {minimum}, '
        f'got {value!r}.')
  return pair
