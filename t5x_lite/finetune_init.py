"""The start of a fine-tuning run: parameters from a pretrained model, a new optimizer state.

gin (bound from macros by runs/finetune.gin):
  finetune.initial_checkpoint_path  a t5x_lite MODEL_DIR (its latest checkpoint) or one step of it
                                    (MODEL_DIR/checkpoints/<step>)
  finetune.hf_init_dir              or a Hugging Face T5 directory, read through the import path
  finetune.model_dir                this run's MODEL_DIR (where its copy of the vocabulary goes)

Only a run with no checkpoint of its own starts here; once it has saved one, the same command
resumes from it and never reads the initial model again.

Steps continue from the initial checkpoint's step, as in T5X: a model pretrained for 300 steps
and fine-tuned with TRAIN_STEPS=1300 trains 1000 steps (301..1300). An HF directory carries no
step and starts at 0. The optimizer state (and its own step count) is new either way.
"""

import functools
import hashlib
import os

import gin
import jax
import jax.numpy as jnp

from t5x_lite import files, hf_files, hf_reader, paths, resume_check
from t5x_lite.data import initial_vocabulary
from t5x_lite.errors import UserError, first_line

SPIECE = "spiece.model"


@gin.configurable("finetune")
def finetune_config(
  initial_checkpoint_path: str | None = None,
  hf_init_dir: str | None = None,
  model_dir: str | None = None,
) -> dict:
  return {
    "initial_checkpoint_path": initial_checkpoint_path,
    "hf_init_dir": hf_init_dir,
    "model_dir": model_dir,
  }


def checkpoint_location(path: str) -> tuple[str, int | None]:
  """(run directory, step or None for its latest) of an INITIAL_CHECKPOINT_PATH."""
  path = paths.resolve(path.rstrip("/"))
  if hf_files.isdir(os.path.join(path, "checkpoints")):
    return path, None
  parent, name = os.path.split(path)
  if name.isdigit() and os.path.basename(parent) == "checkpoints":
    return os.path.dirname(parent), int(name)
  raise UserError(
    f"INITIAL_CHECKPOINT_PATH {path} is neither a run directory (with "
    f"checkpoints/) nor one of its steps (RUN/checkpoints/<step>)"
  )


# -- vocabulary ---------------------------------------------------------------------------------


def _cached_copy(data: bytes) -> str:
  """A SentencePiece model as a file (seqio reads vocabularies from files), by content."""
  root = os.environ.get("T5X_LITE_CACHE") or os.path.join(
    os.path.expanduser("~"), ".cache", "t5x_lite"
  )
  path = os.path.join(root, "vocabularies", hashlib.sha256(data).hexdigest()[:16] + ".model")
  if not os.path.isfile(path):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = f"{path}.{os.getpid()}.tmp"
    with open(tmp, "wb") as f:
      f.write(data)
    os.replace(tmp, path)
  return path


@functools.cache  # read once per process: every task rebuild asks
def _checkpoint_vocabulary(run_dir: str, step: int | None) -> str:
  beside = os.path.join(run_dir, SPIECE)
  if hf_files.isfile(beside):  # an imported or fine-tuned run carries its vocabulary
    return beside
  manager = hf_files.read_only_manager(paths.orbax_path(os.path.join(run_dir, "checkpoints")))
  steps = sorted(manager.all_steps())
  if not steps:
    raise UserError(f"no complete checkpoint in {run_dir}/checkpoints")

  meta = hf_files.read_meta(manager, step if step is not None else steps[-1])
  data, why = hf_files.task_sentencepiece(meta)  # parses that run's config; ours is kept
  if data is None:
    raise UserError(
      f"no vocabulary for the fine-tuning task: {why}; set "
      f"--gin.FINETUNE_VOCABULARY=\"'/path/spiece.model'\""
    )
  return _cached_copy(data)


def vocabulary_path(explicit: str | None = None) -> str | None:
  """The SentencePiece model the fine-tuning task tokenizes with: `explicit`, else this run's
  own copy (MODEL_DIR/spiece.model, written on its first start), else the initial model's.
  None when nothing is configured."""
  if explicit:
    return explicit
  settings = finetune_config()
  model_dir = settings["model_dir"]
  if model_dir and hf_files.isfile(os.path.join(paths.resolve(model_dir), SPIECE)):
    return os.path.join(paths.resolve(model_dir), SPIECE)
  if settings["hf_init_dir"]:
    path = os.path.join(paths.resolve(settings["hf_init_dir"]), SPIECE)
    if not hf_files.isfile(path):
      raise UserError(
        f"HF_INIT_DIR {settings['hf_init_dir']} has no {SPIECE}; set "
        f"--gin.FINETUNE_VOCABULARY=\"'/path/spiece.model'\""
      )
    return path
  if settings["initial_checkpoint_path"]:
    return _checkpoint_vocabulary(*checkpoint_location(settings["initial_checkpoint_path"]))
  return None


def _keep_vocabulary(model_dir: str, vocab_path: str | None) -> None:
  """Copies the task's vocabulary into MODEL_DIR: resumes, infer and export_hf read it there."""
  target = os.path.join(model_dir, SPIECE)
  if jax.process_index() == 0 and vocab_path and not hf_files.isfile(target):
    files.makedirs(model_dir)
    files.copy(vocab_path, target)


# -- parameters ---------------------------------------------------------------------------------


def _check_model(saved: dict, model_meta: dict, where: str) -> None:
  """The model gin must build the initial model: a differing dimension names both values."""
  for field, value in model_meta.items():
    if field in resume_check.EXECUTION_FIELDS or field not in saved:
      continue
    if saved[field] != value:
      raise UserError(
        f"the initial model {where} has model_config.{field}={saved[field]!r}, the "
        f"model gin has {value!r}; use the model gin the initial model was "
        f"trained with"
      )


def _checkpoint_params(trainer, run_dir: str, step: int | None, model_meta: dict):

  directory = os.path.join(run_dir, "checkpoints")
  manager = hf_files.read_only_manager(paths.orbax_path(directory))
  steps = sorted(manager.all_steps())
  if not steps:
    raise UserError(f"no complete checkpoint in {directory} (INITIAL_CHECKPOINT_PATH)")
  if step is not None and step not in steps:
    raise UserError(f"no checkpoint for step {step} in {directory}; available: {steps}")
  step = steps[-1] if step is None else step
  where = os.path.join(directory, str(step))
  try:
    meta = hf_files.read_meta(manager, step)
  except Exception as e:  # noqa: BLE001
    raise UserError(f"checkpoint {where} cannot be read: {first_line(e)}") from None
  _check_model(meta.get("model_config") or {}, model_meta, where)
  try:
    params = hf_files.read_params(
      manager, step, trainer.abstract_params, trainer.state_shardings.params
    )
  except Exception as e:  # noqa: BLE001
    raise UserError(f"checkpoint {where} cannot be restored: {first_line(e)}") from None
  return step, params, where


def _hf_params(trainer, hf_dir: str, model_meta: dict):
  from t5x_lite import hf_mapping

  hf_dir = paths.resolve(hf_dir)
  config_path = os.path.join(hf_dir, "config.json")
  if not hf_files.isfile(config_path):
    raise UserError(f"no config.json in HF_INIT_DIR {hf_dir}")
  import json

  try:
    dims = hf_reader.dims_from_hf_config(json.loads(hf_files.read_text(config_path)), config_path)
  except ValueError as e:
    raise UserError(f"cannot read {config_path}: {first_line(e)}") from None
  _check_model(dims, model_meta, hf_dir)
  state_dict = hf_reader.with_output_embedding(
    hf_reader.load_hf_state_dict(hf_dir, allow_pickle=False), dims, hf_dir
  )
  cfg = trainer.model.cfg
  params = hf_mapping.from_hf_state_dict(state_dict, cfg)
  if jax.tree.structure(params) != jax.tree.structure(trainer.abstract_params):
    raise UserError(
      f"the weights in {hf_dir} do not form the params of the model gin's {cfg.name!r}"
    )
  params = jax.device_put(jax.tree.map(jnp.asarray, params), trainer.state_shardings.params)
  return 0, params, hf_dir


def initial_state(
  trainer, model_meta: dict, seed: int, train_steps: int, model_dir: str, log=print
):
  """(step, TrainState) from the configured initial model, or None when none is configured."""
  from t5x_lite.trainer import TrainState

  settings = finetune_config()
  checkpoint_path, hf_dir = settings["initial_checkpoint_path"], settings["hf_init_dir"]
  if not checkpoint_path and not hf_dir:
    return None
  if checkpoint_path and hf_dir:
    raise UserError("set INITIAL_CHECKPOINT_PATH or HF_INIT_DIR, not both")
  if checkpoint_path:
    step, params, where = _checkpoint_params(
      trainer, *checkpoint_location(checkpoint_path), model_meta
    )
  else:
    step, params, where = _hf_params(trainer, hf_dir, model_meta)
  if step >= train_steps:
    raise UserError(
      f"TRAIN_STEPS={train_steps} is not past the initial checkpoint's step {step}: "
      f"steps continue from it, so set TRAIN_STEPS to {step} + the fine-tuning steps"
    )
  shardings = trainer.state_shardings
  opt_state = jax.jit(trainer.optimizer.init, out_shardings=shardings.opt_state)(params)
  # The dropout key of a fresh run with this seed (Trainer.init_state).
  rng = jax.device_put(jax.random.split(jax.random.PRNGKey(seed))[1], shardings.rng)
  state = TrainState(
    step=jax.device_put(jnp.asarray(step, jnp.int32), shardings.step),
    params=params,
    opt_state=opt_state,
    rng=rng,
  )
  _keep_vocabulary(model_dir, vocabulary_path(gin_vocabulary()))
  log(f"fine-tuning from {where} (step {step}): parameters restored, optimizer state new")
  return step, state


def gin_vocabulary() -> str | None:
  from t5x_lite.data import seq2seq_sources

  return seq2seq_sources.seq2seq_files_config()["vocabulary"]


# The fine-tuning task tokenizes with the initial model's vocabulary (when none is bound).
initial_vocabulary.set_finder(vocabulary_path)
