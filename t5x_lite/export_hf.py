"""`python -m t5x_lite.export_hf --model_dir=DIR --output_dir=OUT [--step=N] [--dtype=float32|bfloat16]`

Writes a Hugging Face T5 directory from a checkpoint: config.json, generation_config.json,
model.safetensors, a model card (README.md) and, when the run's SentencePiece vocabulary can be
found, the tokenizer files (tokenizer.json, spiece.model and their configs).
`T5ForConditionalGeneration.from_pretrained(OUT)` and `AutoTokenizer.from_pretrained(OUT)` load it.
MODEL_DIR and OUT may be local or gs://.
"""

from t5x_lite import quiet_startup  # noqa: F401  (first: hides native start-up noise)

# isort: split

import argparse
import os
import re
import sys

import numpy as np

from t5x_lite import hf_files, model_card, paths, tokens
from t5x_lite.config import hf_config_dict
from t5x_lite.errors import UserError, run_main

GENERATION_CONFIG = {
  "decoder_start_token_id": tokens.PAD_ID,
  "eos_token_id": tokens.EOS_ID,
  "pad_token_id": tokens.PAD_ID,
}


def _metrics_text(model_dir: str) -> str | None:
  path = os.path.join(model_dir, "metrics.jsonl")
  return hf_files.read_text(path) if hf_files.isfile(path) else None


def export(
  model_dir: str,
  output_dir: str,
  step: int | None = None,
  dtype: str = "float32",
  overwrite: bool = False,
  vocab: str | None = None,
  license_id: str = "apache-2.0",
  log=print,
) -> dict:
  """Exports one checkpoint; returns a summary (step, paths, whether a tokenizer was written)."""
  # jax before TensorFlow (which hf_files reads with) keeps TensorFlow's start-up quieter.
  import jax  # noqa: F401

  _check_options(dtype, license_id)
  model_dir, output_dir = paths.resolve(model_dir), paths.resolve(output_dir)
  hf_files.check_output_dir(output_dir, overwrite)
  restored = _restore(model_dir, step)
  weights = _hf_weights(restored, dtype)
  spm_bytes, why_not = _vocabulary(model_dir, vocab, restored)
  with hf_files.staged_output_dir(output_dir, overwrite) as tmp:
    _write_model(tmp, restored.cfg, weights, dtype)
    if spm_bytes is not None:
      lengths = restored.meta.get("task_feature_lengths") or {}
      hf_files.write_tokenizer_files(tmp, spm_bytes, int(lengths.get("inputs", 512)))
    _write_card(tmp, model_dir, restored, dtype, license_id, spm_bytes is not None)

  log(
    f"exported step {restored.step} of {model_dir} ({restored.cfg.name}, {dtype}) to {output_dir}"
  )
  if spm_bytes is None:
    log(f"no tokenizer exported: {why_not}; pass --vocab=PATH/spiece.model to include one")
  return {"step": restored.step, "output_dir": output_dir, "tokenizer": spm_bytes is not None}


def _check_options(dtype: str, license_id: str) -> None:
  if dtype not in ("float32", "bfloat16"):
    raise UserError(f"--dtype must be float32 or bfloat16, got {dtype!r}")
  if not re.fullmatch(r"[a-z0-9][a-z0-9.+-]*", license_id):
    raise UserError(
      f"--license must be a license identifier such as apache-2.0, mit or other, got {license_id!r}"
    )


def _restore(model_dir: str, step: int | None) -> hf_files.Restored:
  """The checkpoint's params, config and meta, if Hugging Face's T5 can hold the model."""
  restored = hf_files.restore_params(model_dir, step)
  why = hf_files.hf_incompatibility(restored.cfg)
  if why:
    raise UserError(f"cannot export {restored.cfg.name!r} to HF: {why}")
  return restored


def _hf_weights(restored: hf_files.Restored, dtype: str) -> dict[str, np.ndarray]:
  """The checkpoint's params as HF's state dict in `dtype`, refused when any value is not finite."""
  import ml_dtypes

  from t5x_lite import hf_mapping

  state = hf_mapping.to_hf_state_dict(restored.params, restored.cfg)
  for key, value in state.items():
    if not np.isfinite(value).all():
      raise UserError(
        f"checkpoint step {restored.step} has non-finite values in {key}; "
        "export an earlier step with --step"
      )
  np_dtype = ml_dtypes.bfloat16 if dtype == "bfloat16" else np.float32
  return {k: np.ascontiguousarray(v.astype(np_dtype)) for k, v in state.items()}


def _vocabulary(
  model_dir: str, vocab: str | None, restored: hf_files.Restored
) -> tuple[bytes | None, str | None]:
  """(the SentencePiece model to ship, checked against the model's vocabulary size, or None;
  why there is none)."""
  spm_bytes, source, why_not = hf_files.run_sentencepiece(model_dir, vocab, restored.meta)
  if spm_bytes is not None:
    pieces = hf_files.check_sentencepiece(spm_bytes, source)
    tokens.check_vocab_fits(
      pieces + tokens.EXTRA_IDS,
      restored.cfg.vocab_size,
      f"vocabulary {source} ({pieces} pieces + {tokens.EXTRA_IDS} extra ids)",
    )
  return spm_bytes, why_not


def _write_model(tmp: str, cfg, weights: dict[str, np.ndarray], dtype: str) -> None:
  """model.safetensors, config.json and generation_config.json."""
  from safetensors.numpy import save_file

  hf_config = hf_config_dict(cfg)
  hf_config.update(torch_dtype=dtype, dtype=dtype)
  save_file(weights, os.path.join(tmp, "model.safetensors"), metadata={"format": "pt"})
  hf_files.write_json(os.path.join(tmp, "config.json"), hf_config)
  hf_files.write_json(os.path.join(tmp, "generation_config.json"), GENERATION_CONFIG)


def _write_card(
  tmp: str,
  model_dir: str,
  restored: hf_files.Restored,
  dtype: str,
  license_id: str,
  has_tokenizer: bool,
) -> None:
  from t5x_lite import models

  card = model_card.model_card(
    restored.cfg,
    models.num_params(restored.cfg),
    restored.step,
    restored.meta,
    _metrics_text(model_dir),
    dtype,
    license_id,
    has_tokenizer,
  )
  with open(os.path.join(tmp, "README.md"), "w", encoding="utf-8") as f:
    f.write(card)


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(
    prog="python -m t5x_lite.export_hf",
    description=__doc__,
    formatter_class=argparse.RawDescriptionHelpFormatter,
  )
  parser.add_argument("--model_dir", required=True, help="the run's MODEL_DIR")
  parser.add_argument("--output_dir", required=True, help="the HF directory to write")
  parser.add_argument("--step", type=int, default=None, help="default: the latest checkpoint")
  parser.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"))
  parser.add_argument(
    "--vocab",
    default=None,
    help="SentencePiece model to ship (default: MODEL_DIR/spiece.model, else "
    "the run's task vocabulary)",
  )
  parser.add_argument("--overwrite", action="store_true", help="replace a non-empty --output_dir")
  parser.add_argument(
    "--license",
    default="apache-2.0",
    help="license id for the model card (Hub identifiers, e.g. apache-2.0, mit)",
  )
  args = parser.parse_args(sys.argv[1:] if argv is None else argv)
  export(
    args.model_dir, args.output_dir, args.step, args.dtype, args.overwrite, args.vocab, args.license
  )
  return 0


if __name__ == "__main__":
  run_main(main)
