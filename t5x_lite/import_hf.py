"""`python -m t5x_lite.import_hf --hf_dir=DIR --model_dir=OUT [--run_gin_file=runs/pretrain.gin]
[--gin_file=MODEL.gin] [--allow_pickle]`

Turns a Hugging Face T5 directory (config.json + model.safetensors) into a step-0 checkpoint that
pretraining continues from, with a fresh optimizer state built from the run gin, and writes
OUT/model.gin binding the model. DIR and OUT may be local or gs://. Continue with:
  python -m t5x_lite.train --gin_file=OUT/model.gin --gin_file=runs/pretrain.gin \
    --gin.MODEL_DIR="'OUT'" --gin.C4_TFDS_DATA_DIR="'...'"
or, without C4 at hand, on the offline quickstart corpus with --gin_file=runs/quickstart.gin.
"""

from t5x_lite import quiet_startup  # noqa: F401  (first: hides native start-up noise)

# isort: split

import argparse
import dataclasses
import json
import os
import sys

from t5x_lite import commands, config, gin_utils, hf_files, paths, tokens
from t5x_lite.config import T5Config
from t5x_lite.errors import UserError, run_main
from t5x_lite.hf_reader import dims_from_hf_config, load_hf_state_dict, with_output_embedding

# Dimensions a model gin binds (model_config arguments), in the order model.gin lists them.
GIN_DIMS = (
  "vocab_size",
  "d_model",
  "d_ff",
  "num_heads",
  "d_kv",
  "num_encoder_layers",
  "num_decoder_layers",
  "feed_forward_proj",
  "tie_word_embeddings",
)
DEFAULT_RUN_GIN = "runs/pretrain.gin"
_SUFFIX_OF = {"d_model": "dm", "d_ff": "ff", "num_heads": "nh", "d_kv": "kv"}


# -- config -------------------------------------------------------------------------------------


def model_name_for(dims: dict) -> str:
  """The shortest released-style name (size + suffixes) that spells these dimensions."""
  family = "t5-efficient" if dims["feed_forward_proj"] == "relu" else "t5-v1_1"
  best = None
  for size, (d_model, d_ff, heads, layers, d_kv) in config.FAMILIES[family].items():
    base = dict(d_model=d_model, d_ff=d_ff, num_heads=heads, d_kv=d_kv)
    suffixes = [f"{_SUFFIX_OF[k]}{dims[k]}" for k in _SUFFIX_OF if dims[k] != base[k]]
    enc, dec = dims["num_encoder_layers"], dims["num_decoder_layers"]
    if enc == dec:
      suffixes += [f"nl{enc}"] if enc != layers else []
    else:
      suffixes += ([f"el{enc}"] if enc != layers else []) + ([f"dl{dec}"] if dec != layers else [])
    name = "-".join([family, size, *suffixes])
    if best is None or len(suffixes) < best[0]:
      best = (len(suffixes), name)
  return best[1]


def model_gin_text(name: str, dims: dict, source: str) -> str:
  lines = [
    f"# The model of the Hugging Face T5 checkpoint {source}, imported as step 0.",
    "# Combine with a run gin (e.g. runs/pretrain.gin) to continue pretraining.",
    "from t5x_lite import config",
    "",
    f"model_config.name = {name!r}",
  ]
  lines += [f"model_config.{k} = {dims[k]!r}" for k in GIN_DIMS]
  return "\n".join(lines) + "\n"


def check_against_model_gin(dims: dict, gin_file: str) -> None:
  """An import must agree with a model gin the user means to train with: name what differs."""
  with gin_utils.fresh_config():
    gin_utils.parse_gin([gin_file], [], finalize=False)
    cfg = config.model_config()
  for key in GIN_DIMS:
    if getattr(cfg, key) != dims[key]:
      raise UserError(
        f"{gin_file} has {key}={getattr(cfg, key)!r} but the HF model has {dims[key]!r}"
      )


# -- run gin ------------------------------------------------------------------------------------


def _bound(name: str):
  """A gin binding of the parsed run config with macros resolved, or None."""
  import gin

  try:
    value = gin.query_parameter(name)
  except (ValueError, KeyError):
    return None
  if isinstance(value, gin.config.ConfigurableReference) and value.configurable.name == "macro":
    return _bound(f"{value.scoped_selector}/macro.value")
  return value


# -- import -------------------------------------------------------------------------------------


def import_hf(
  hf_dir: str,
  model_dir: str,
  run_gin_file: str = DEFAULT_RUN_GIN,
  gin_file: str | None = None,
  allow_pickle: bool = False,
  log=print,
) -> T5Config:
  """Writes the step-0 checkpoint and model.gin; returns the model's config."""
  # jax before TensorFlow (which hf_files reads with) keeps TensorFlow's start-up quieter.
  import jax  # noqa: F401

  from t5x_lite import hf_mapping

  hf_dir, model_dir = paths.resolve(hf_dir), paths.resolve(model_dir)
  config_path = os.path.join(hf_dir, "config.json")
  if not hf_files.isfile(config_path):
    raise UserError(f"no config.json in {hf_dir}")
  # Never write into a run that has checkpoints or a model gin: checked before any work.
  hf_files.check_output_dir(model_dir, overwrite=False, flag=None)
  dims = dims_from_hf_config(_read_hf_config(config_path), config_path)
  if gin_file:
    check_against_model_gin(dims, gin_file)
  name = model_name_for(dims)
  state_dict = with_output_embedding(load_hf_state_dict(hf_dir, allow_pickle), dims, hf_dir)
  spm_bytes = _vocabulary(hf_dir, dims)

  # The run gin decides what the checkpoint must match when training restores it: scan layout,
  # optimizer state structure, activation dtype.
  with gin_utils.fresh_config():
    gin_utils.parse_gin([run_gin_file], [], finalize=False)
    cfg = config.model_config(name=name, **dims)
    params = hf_mapping.from_hf_state_dict(state_dict, cfg)
    shared_structure = hf_mapping.tied_variants(state_dict, cfg)
    state = _step_zero_state(params, cfg)
    meta = _step_zero_meta(cfg, hf_dir)
    with hf_files.staged_output_dir(model_dir, overwrite=False, flag=None) as tmp:
      _write_run(tmp, state, meta, model_gin_text(name, dims, os.path.basename(hf_dir)), spm_bytes)

  log(f"imported {hf_dir} as step 0 of {model_dir} (model {name}, scan_layers={cfg.scan_layers})")
  if shared_structure:
    log(
      f"{hf_dir} holds a -{'-'.join(shared_structure)} model written out in HF's layout; imported "
      f"as an ordinary untied model ({name}): its key/value weights train independently from here"
    )
  _log_next_steps(hf_dir, model_dir, run_gin_file, spm_bytes is not None, log)
  return cfg


def _read_hf_config(config_path: str) -> dict:
  try:
    hf_config = json.loads(hf_files.read_text(config_path))
  except (OSError, ValueError) as e:
    raise UserError(f"cannot read {config_path}: {e}") from None
  if not isinstance(hf_config, dict):
    raise UserError(
      f"{config_path} holds a JSON {type(hf_config).__name__}, not an object; "
      f"use the config.json of a Hugging Face T5 model"
    )
  return hf_config


def _vocabulary(hf_dir: str, dims: dict) -> bytes | None:
  """The HF directory's spiece.model, checked against the model's vocabulary size, or None."""
  spm_path = os.path.join(hf_dir, "spiece.model")
  if not hf_files.isfile(spm_path):
    return None
  spm_bytes = hf_files.read_bytes(spm_path)
  pieces = hf_files.check_sentencepiece(spm_bytes, spm_path)
  tokens.check_vocab_fits(
    pieces + tokens.EXTRA_IDS,
    dims["vocab_size"],
    f"{spm_path} ({pieces} pieces + {tokens.EXTRA_IDS} extra ids)",
  )
  return spm_bytes


def _step_zero_state(params: dict, cfg: T5Config):
  """The TrainState a run of the parsed run gin starts from, with these params: a fresh
  optimizer state, laid out on one device as training restores it."""
  import jax
  import jax.numpy as jnp

  from t5x_lite import partitioning
  from t5x_lite.models import EncoderDecoderModel
  from t5x_lite.trainer import Trainer, TrainState

  model = EncoderDecoderModel(cfg)
  mesh = partitioning.make_mesh(1, devices=jax.local_devices()[:1])
  trainer = Trainer(model, mesh, partitioning.logical_axis_rules(), {"inputs": 1, "targets": 1})
  if jax.tree.structure(params) != jax.tree.structure(trainer.abstract_params):
    raise UserError(f"the HF weights do not form the params of {cfg.name!r}")
  shardings = trainer.state_shardings
  params = jax.device_put(jax.tree.map(jnp.asarray, params), shardings.params)
  opt_state = jax.jit(trainer.optimizer.init, out_shardings=shardings.opt_state)(params)
  # The same dropout key as a fresh run with seed 0 (Trainer.init_state).
  rng = jax.device_put(jax.random.split(jax.random.PRNGKey(0))[1], shardings.rng)
  return TrainState(
    step=jax.device_put(jnp.zeros((), jnp.int32), shardings.step),
    params=params,
    opt_state=opt_state,
    rng=rng,
  )


def _step_zero_meta(cfg: T5Config, hf_dir: str) -> dict:
  """The checkpoint meta of step 0, with the parsed run gin's data settings."""
  import gin

  lengths = _bound("train.task_feature_lengths")
  return {
    "step": 0,
    "batches_consumed": 0,
    "model_config": dataclasses.asdict(cfg),
    "gin_config": gin.config_str(),
    "mixture_or_task_name": _bound("train.mixture_or_task_name"),
    "task_feature_lengths": dict(lengths) if isinstance(lengths, dict) else None,
    "imported_from": os.path.basename(hf_dir),
  }


def _write_run(tmp: str, state, meta: dict, model_gin: str, spm_bytes: bytes | None) -> None:
  """The step-0 checkpoint, model.gin and, when the HF directory has one, spiece.model."""
  from t5x_lite import checkpoints

  ckpt = checkpoints.Checkpointer(tmp, async_save=False)
  ckpt.save(0, state, meta, None)
  ckpt.close()
  with open(os.path.join(tmp, "model.gin"), "w", encoding="utf-8") as f:
    f.write(model_gin)
  if spm_bytes is not None:
    with open(os.path.join(tmp, "spiece.model"), "wb") as f:
      f.write(spm_bytes)


def _log_next_steps(hf_dir: str, model_dir: str, run_gin_file: str, has_vocab: bool, log) -> None:
  for label, command in continue_commands(model_dir, run_gin_file, has_vocab):
    log(f"{label}: {command}")
  if has_vocab:
    log(
      f"the commands train with its vocabulary, {model_dir}/spiece.model, so the data uses the "
      "same ids"
    )
  else:
    log(
      f"{hf_dir} has no spiece.model: make sure the run's vocabulary is the one the model "
      "was trained with"
    )


def continue_commands(model_dir: str, run_gin_file: str, has_vocab: bool) -> list[tuple[str, str]]:
  """(label, command) to continue pretraining: with the run gin of the import, and, when that is
  the C4 recipe, the offline quickstart corpus for those without C4 at hand."""
  flags = [f"--gin.MODEL_DIR='{model_dir}'"]
  if has_vocab:
    flags.append(f"--gin.task_vocabulary.path='{os.path.join(model_dir, 'spiece.model')}'")
  model_gin = f"--gin_file={os.path.join(model_dir, 'model.gin')}"
  if os.path.normpath(run_gin_file) != os.path.normpath(DEFAULT_RUN_GIN):
    return [
      (
        "continue pretraining",
        commands.module_command(
          "t5x_lite.train", [model_gin, f"--gin_file={run_gin_file}", *flags]
        ),
      )
    ]
  return [
    (
      "continue pretraining on C4",
      commands.module_command(
        "t5x_lite.train",
        [
          model_gin,
          f"--gin_file={run_gin_file}",
          *flags,
          "--gin.C4_TFDS_DATA_DIR='/path/to/tensorflow_datasets'",
        ],
      ),
    ),
    (
      "or, without C4, on the quickstart corpus (a smoke test)",
      commands.module_command(
        "t5x_lite.train", [model_gin, "--gin_file=runs/quickstart.gin", *flags]
      ),
    ),
  ]


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(
    prog="python -m t5x_lite.import_hf",
    description=__doc__,
    formatter_class=argparse.RawDescriptionHelpFormatter,
  )
  parser.add_argument("--hf_dir", required=True, help="HF T5 directory (config.json + weights)")
  parser.add_argument("--model_dir", required=True, help="new MODEL_DIR (must be empty or absent)")
  parser.add_argument(
    "--run_gin_file",
    default=DEFAULT_RUN_GIN,
    help="the run gin training will use (optimizer, scan_layers, dtype)",
  )
  parser.add_argument(
    "--gin_file", default=None, help="a model gin the HF dimensions must agree with"
  )
  parser.add_argument(
    "--allow_pickle",
    action="store_true",
    help="allow reading pytorch_model.bin (pickle) when no safetensors exist",
  )
  args = parser.parse_args(sys.argv[1:] if argv is None else argv)
  if hf_files.exists(args.hf_dir) and not hf_files.isdir(args.hf_dir):
    raise UserError(
      f"--hf_dir {args.hf_dir} is a file; give the directory that holds the model's config.json"
    )
  with gin_utils.required_bindings_checked():
    import_hf(args.hf_dir, args.model_dir, args.run_gin_file, args.gin_file, args.allow_pickle)
  return 0


if __name__ == "__main__":
  run_main(main)
