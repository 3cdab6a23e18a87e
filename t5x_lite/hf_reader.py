"""Reading a Hugging Face T5 directory: its config.json as our model dimensions, its weights as a
state dict. Used by `import_hf` (a new run from an HF model) and by fine-tuning (`HF_INIT_DIR`)."""

import io
import json
import os

import numpy as np

from t5x_lite import config, hf_files
from t5x_lite.errors import UserError, first_line

# Fixed in our model and not bindable in a model gin: an HF config must agree with these.
FIXED = {
  "relative_attention_num_buckets": 32,
  "relative_attention_max_distance": 128,
  "layer_norm_epsilon": 1e-6,
  "pad_token_id": 0,
  "eos_token_id": 1,
  "decoder_start_token_id": 0,
}
# HF T5Config defaults for keys a config.json may leave out (the fixed ones are HF's defaults too).
HF_DEFAULTS = {
  "vocab_size": 32128,
  "d_model": 512,
  "d_kv": 64,
  "d_ff": 2048,
  "num_layers": 6,
  "num_heads": 8,
  "feed_forward_proj": "relu",
  "tie_word_embeddings": True,
  **FIXED,
}


def dims_from_hf_config(hf: dict, source: str) -> dict:
  """model_config arguments for an HF T5 config.json; refuses what our T5 cannot hold."""
  if hf.get("model_type") != "t5" or hf.get("is_encoder_decoder") is False:
    raise UserError(
      f"{source} is not a T5 encoder-decoder config (model_type {hf.get('model_type')!r})"
    )
  get = lambda key: hf[key] if hf.get(key) is not None else HF_DEFAULTS[key]
  for key, ours in FIXED.items():
    value = get(key)
    if value != ours and not (isinstance(ours, float) and abs(value - ours) <= 1e-12):
      raise UserError(f"{source} has {key}={value!r}; this project's T5 fixes it at {ours!r}")
  proj = get("feed_forward_proj")
  if proj not in config.FEED_FORWARD_PROJS:
    raise UserError(
      f"{source} has feed_forward_proj={proj!r}; supported: {', '.join(config.FEED_FORWARD_PROJS)}"
    )
  num_layers = get("num_layers")
  # transformers 5 always writes tie_word_embeddings=true and says with scale_decoder_outputs
  # whether logits are rescaled (v1.0); older configs say it with tie_word_embeddings alone.
  # Our model rescales exactly when it ties.
  scaled = hf.get("scale_decoder_outputs", get("tie_word_embeddings"))
  return dict(
    vocab_size=get("vocab_size"),
    d_model=get("d_model"),
    d_ff=get("d_ff"),
    num_heads=get("num_heads"),
    d_kv=get("d_kv"),
    num_encoder_layers=num_layers,
    num_decoder_layers=hf.get("num_decoder_layers") or num_layers,
    feed_forward_proj=proj,
    tie_word_embeddings=bool(scaled),
  )


def _load_safetensors(path: str) -> dict:
  from safetensors import SafetensorError
  from safetensors.numpy import load

  if not hf_files.isfile(path):
    raise UserError(f"{path} is missing (the index of {os.path.dirname(path)} lists it)")
  try:
    return load(hf_files.read_bytes(path))
  except SafetensorError as e:
    raise UserError(
      f"{path} is not a complete safetensors file ({first_line(e)}): truncated or not "
      f"safetensors; download or copy it again"
    ) from None


def _shards_of(index: str) -> list[str]:
  try:
    weight_map = json.loads(hf_files.read_text(index))["weight_map"]
    return sorted(set(weight_map.values()))
  except (ValueError, KeyError, TypeError, AttributeError) as e:
    raise UserError(f"{index} is not a safetensors index ({first_line(e)})") from None


def load_hf_state_dict(hf_dir: str, allow_pickle: bool) -> dict:
  single = os.path.join(hf_dir, "model.safetensors")
  index = os.path.join(hf_dir, "model.safetensors.index.json")
  if hf_files.isfile(single):
    return _load_safetensors(single)
  if hf_files.isfile(index):
    state = {}
    for shard in _shards_of(index):
      state.update(_load_safetensors(os.path.join(hf_dir, shard)))
    return state
  pickle_path = os.path.join(hf_dir, "pytorch_model.bin")
  if hf_files.isfile(pickle_path):
    if not allow_pickle:
      raise UserError(
        f"{hf_dir} has only pytorch_model.bin (a pickle, which can run code when "
        "loaded); pass --allow_pickle if you trust it"
      )
    try:
      import torch
    except ImportError:
      raise UserError("reading pytorch_model.bin needs torch (pip install torch)") from None
    try:
      return dict(
        torch.load(
          io.BytesIO(hf_files.read_bytes(pickle_path)), map_location="cpu", weights_only=True
        )
      )
    except Exception as e:  # noqa: BLE001  (pickle and torch raise many kinds)
      raise UserError(f"{pickle_path} cannot be read ({first_line(e)})") from None
  raise UserError(f"no model.safetensors (or model.safetensors.index.json) in {hf_dir}")


def with_output_embedding(state: dict, dims: dict, source: str) -> dict:
  """Reconciles lm_head.weight with how the logits are computed.

  Rescaled logits need the tied embedding; unscaled logits with no lm_head.weight (a tied,
  unscaled transformers 5 model) get a copy of shared.weight as their own output embedding.
  """
  shared, head = state.get("shared.weight"), state.get("lm_head.weight")
  if shared is None or head is None:
    if not dims["tie_word_embeddings"] and shared is not None:
      state = {**state, "lm_head.weight": np.array(shared)}
    return state
  if dims["tie_word_embeddings"] and not np.array_equal(np.asarray(shared), np.asarray(head)):
    raise UserError(
      f"{source} rescales the logits (v1.0) but has an lm_head.weight unlike "
      "shared.weight; this project's T5 ties the two in that case"
    )
  return state
