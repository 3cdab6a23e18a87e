"""What a resumed run may change, checked against the checkpoint's meta before anything is restored.

- Model definition (dimensions, layer counts, vocab size, activation, layer layout): the saved
  parameters do not fit or mean something else. One-line error naming the field and both values;
  a different model is a new run in another MODEL_DIR.
- Data settings (task, corpus files, vocabulary file contents, span-corruption settings, feature
  lengths, batch size, packing, seed, logical shard count): the saved data position belongs to the
  old stream. The process count is not one: the data position is saved per logical shard, and any
  process count that divides the shard count continues it (data/logical_shards.py). A data
  position saved per process (older versions) is treated as a data change. An error unless `train.allow_data_change=True`; then the parameters and optimizer state
  are restored, the data stream starts afresh with the new settings, and one console line says so.
- Everything else (train steps, periods, eval steps, partitions, microbatches, dtype, remat,
  dropout, attention kernel): applies from the resumed step on, silently.
Checkpoints written before a setting was stored are checked on the settings they have.
"""

import hashlib
import inspect
from typing import Any

import gin
import jax

from t5x_lite import files
from t5x_lite.data import batches, logical_shards
from t5x_lite.data.span_lengths import span_corruption_config
from t5x_lite.errors import UserError

# T5Config fields that only change how the same function is computed.
EXECUTION_FIELDS = frozenset(
  {"name", "dtype", "scan_unroll", "remat_policy", "dropout_rate", "attention_impl"}
)
# gin configurables that locate a task's training data; validation-only settings may change.
DATA_LOCATIONS = (
  "c4_tfds",
  "c4_json",
  "text_corpus",
  "jsonl_corpus",
  "quickstart_corpus",
  "tokenized_cache",
  "seq2seq_files",
)


def _vocabulary_identity(mixture_or_task_name: str) -> str:
  """sha256 of the SentencePiece model (or the vocabulary's repr) plus the extra ids."""
  from t5x_lite.data import registry  # seqio: only for the tasks' own pipelines

  parts = []
  for task in registry.leaf_tasks(registry.refresh(mixture_or_task_name)):
    vocab = task.output_features["targets"].vocabulary
    sp_model = getattr(vocab, "sp_model", None)
    content = sp_model if isinstance(sp_model, bytes) else repr(vocab).encode()
    parts.append(f"{hashlib.sha256(content).hexdigest()[:16]}+{vocab.extra_ids}")
  return ",".join(sorted(set(parts)))


def _data_locations() -> dict:
  locations = {}
  for name in DATA_LOCATIONS:
    try:
      bound = gin.get_bindings(name)
    except (ValueError, KeyError):  # not registered in this process
      continue
    for key, value in sorted(bound.items()):
      if "validation" not in key:
        locations[f"{name}.{key}"] = (
          value if isinstance(value, (str, int, float, bool)) or value is None else repr(value)
        )
  return locations


def _without_defaults(locations: dict) -> dict:
  """Locations less the bindings that equal their parameter's default: bound or not, the same
  data is read (a run's config.gin binds every default, and may be given back to resume)."""
  kept = {}
  for key, value in locations.items():
    name, _, param = key.rpartition(".")
    try:
      default = inspect.signature(gin.get_configurable(name)).parameters[param].default
    except (ValueError, KeyError, TypeError):  # not registered here, or no such parameter
      default = inspect.Parameter.empty
    if value != default:
      kept[key] = value
  return kept


def data_settings(
  mixture_or_task_name: str,
  task_feature_lengths: dict,
  batch_size: int,
  use_packing: bool,
  seed: int,
  model_vocab_size: int | None = None,
) -> dict:
  """Everything that defines the training data stream and its saved position."""
  if not batches.needs_tasks(mixture_or_task_name):  # synthetic or ready-made: no TF needed
    return batches.data_settings(
      mixture_or_task_name, task_feature_lengths, batch_size, seed, model_vocab_size
    )
  noise_density, mean_noise_span_length = span_corruption_config()
  return {
    "mixture_or_task_name": mixture_or_task_name,
    "task_feature_lengths": {k: int(v) for k, v in sorted(task_feature_lengths.items())},
    "batch_size": batch_size,
    "use_packing": bool(use_packing),
    "seed": seed,
    # make_plan refuses, before anything compiles, a process count the shards cannot serve.
    "logical_shards": logical_shards.make_plan(
      batch_size, jax.process_index(), jax.process_count()
    ).count,
    "vocabulary": _vocabulary_identity(mixture_or_task_name),
    "noise_density": noise_density,
    "mean_noise_span_length": mean_noise_span_length,
    "locations": _data_locations(),
  }


def check_model(saved_config: dict | None, model_config: dict, where: str) -> None:
  if not saved_config:
    return
  for field, value in model_config.items():
    if field in EXECUTION_FIELDS or field not in saved_config:
      continue
    if saved_config[field] != value:
      raise UserError(
        f"checkpoint {where} was trained with model_config.{field}={saved_config[field]!r}, this "
        f"run has {value!r}; a different model needs a new run: use another MODEL_DIR "
        f"(the checkpoints are unchanged)"
      )


def _changes(saved: dict, new: dict, prefix: str = "") -> list[str]:
  out = []
  for key in sorted(set(saved) | set(new)):
    old_value, new_value = saved.get(key), new.get(key)
    if isinstance(old_value, dict) and isinstance(new_value, dict):
      out += _changes(old_value, new_value, f"{prefix}{key}.")
    elif old_value != new_value:
      out.append(f"{prefix}{key} {old_value!r} -> {new_value!r}")
  return out


PER_PROCESS_POSITION = "data position saved per process by an older version"


def data_changes(meta: dict, new: dict, saved_process_count: int | None) -> list[str]:
  """Differences between the checkpoint's data settings and this run's, as 'name old -> new'.

  `saved_process_count`: how many per-process data positions (the older layout) the checkpoint
  has on disk, if any; such a position cannot be continued by the logical-shard streams.
  """
  saved = meta.get("data")
  if saved is None:  # older checkpoints: what they recorded
    saved = {
      "mixture_or_task_name": meta.get("mixture_or_task_name"),
      "task_feature_lengths": meta.get("task_feature_lengths"),
    }
    new = {k: new[k] for k in saved}
  saved = {k: v for k, v in saved.items() if k != "process_count"}
  old_layout = bool(saved_process_count) or ("logical_shards" not in saved and meta.get("data"))
  if old_layout:
    saved.pop("logical_shards", None)
    new = {k: v for k, v in new.items() if k != "logical_shards"}
  if "locations" in saved and "locations" in new:
    saved = {**saved, "locations": _without_defaults(saved["locations"])}
    new = {**new, "locations": _without_defaults(new["locations"])}
  return ([PER_PROCESS_POSITION] if old_layout else []) + _changes(saved, new)


def state_mismatch(saved_shapes: dict[str, tuple], new_shapes: dict[str, tuple]) -> str | None:
  """The first difference between two {leaf name: shape} maps, or None."""
  for name in sorted(set(saved_shapes) | set(new_shapes)):
    old, new = saved_shapes.get(name), new_shapes.get(name)
    if old != new:
      return (
        f"{name}: checkpoint {old if old is not None else 'absent'}, this run "
        f"{new if new is not None else 'absent'}"
      )
  return None


def leaf_shapes(tree: Any) -> dict[str, tuple]:
  """{dotted path: shape} for a state or its orbax metadata (both flatten to the same names)."""

  def token(key):
    for attr in ("key", "idx", "name"):
      if hasattr(key, attr):
        return str(getattr(key, attr))
    return str(key)

  return {
    ".".join(token(k) for k in path): tuple(leaf.shape)
    for path, leaf in jax.tree_util.tree_leaves_with_path(tree)
  }


def describe(changes: list[str], limit: int = 3) -> str:
  more = f" (+{len(changes) - limit} more)" if len(changes) > limit else ""
  return "; ".join(changes[:limit]) + more


def saved_process_count(data_directory: str, step: int) -> int | None:
  """The number of per-process data positions (older layout) saved for `step`, or None."""
  path = f"{data_directory.rstrip('/')}/{step}"
  if not files.isdir(path):
    return None
  return len([n for n in files.listdir(path) if n.startswith("process_")]) or None
