"""Components chosen by name: a registry is a dict filled by a decorator.

  LOSSES = Registry('loss', 'config.loss.name')

  @LOSSES.register('gaussian_ce')
  def gaussian_ce(*, bin_centers, sigmas, ...): ...

  LOSSES.get(config.loss.name)(**config.loss.kwargs)

A new loss, head, optimiser or backbone is a new function plus a config string;
no dispatch code changes. Registering from outside the package (a test, a
user's module imported before training) works the same way. The registries
live beside what they hold: `models.head.HEADS`, `models.BACKBONES`,
`training.losses.LOSSES`, `training.optim.OPTIMIZERS`.
"""
from typing import Any, Callable, Dict, TypeVar

Item = TypeVar('Item')


class Registry(Dict[str, Any]):
  """name -> component; `get` names the config field and the known names."""

  def __init__(self, kind: str, field: str):
    super().__init__()
    self.kind = kind
    self.field = field

  def register(self, name: str) -> Callable[[Item], Item]:
    """Decorator: `@REGISTRY.register('name')` stores the decorated object."""
    def add(item: Item) -> Item:
      if name in self:
        raise ValueError(f'{self.kind} {name!r} is registered twice.')
      self[name] = item
      return item
    return add

  def get(self, name: str) -> Any:  # pylint: disable=arguments-differ
    """The component called `name`; ValueError naming the field and the choices."""
    if name not in self:
      raise ValueError(f'{self.field}={name!r}: no such {self.kind}; registered: '
                     f'{sorted(self)}.')
    return self[name]
