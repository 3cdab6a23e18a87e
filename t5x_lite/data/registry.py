"""Task registration that follows gin.

`import t5x_lite.tasks` runs before gin is parsed, but data locations and vocabularies live in gin. So each
of our tasks is registered through a builder (a function returning a `seqio.Task` built from the
gin-configurable settings it calls) and `refresh()` rebuilds them all from the current gin config.
`get_dataset` and `get_vocabulary` call `refresh()`; tasks registered directly with seqio by users
are left untouched.
"""

from collections.abc import Callable

import seqio

from t5x_lite.errors import UserError

# name -> (builder, prepare): `prepare` runs before reading (e.g. build the quickstart corpus,
# check that a TFDS dataset exists) and raises UserError when the data cannot be found.
_BUILDERS: dict[str, tuple[Callable[[], seqio.Task], Callable[[], None] | None]] = {}


def _register(name: str) -> None:
  builder, _ = _BUILDERS[name]
  task = builder()  # may itself refresh the registry (a vocabulary read from another run's config)
  seqio.TaskRegistry.remove(name)
  seqio.TaskRegistry.add_provider(name, task)


def task_builder(name: str, prepare: Callable[[], None] | None = None):
  """Decorator: registers `name` now (with gin defaults) and again at every `refresh()`."""

  def decorate(builder):
    _BUILDERS[name] = (builder, prepare)
    _register(name)
    return builder

  return decorate


def refresh(mixture_or_task_name: str):
  """Rebuilds our tasks from gin, prepares the ones `mixture_or_task_name` uses, returns it."""
  for name in _BUILDERS:
    _register(name)
  try:
    provider = seqio.get_mixture_or_task(mixture_or_task_name)
  except ValueError:
    known = sorted(seqio.TaskRegistry.names()) + sorted(seqio.MixtureRegistry.names())
    raise UserError(
      f"unknown task or mixture {mixture_or_task_name!r}; registered: "
      f"{', '.join(known) or 'none (was `t5x_lite.tasks` imported?)'}"
    ) from None
  for task in leaf_tasks(provider):
    prepare = _BUILDERS.get(task.name, (None, None))[1]
    if prepare:
      prepare()
  return provider


def leaf_tasks(provider) -> list[seqio.Task]:
  """The tasks a task or mixture reads."""
  return provider.tasks if isinstance(provider, seqio.Mixture) else [provider]
