"""Conversion between our param tree and Hugging Face `T5ForConditionalGeneration` state dicts.

Pure numpy in and out. PyTorch Linear weights are stored (out, in): the transpose of our
(in, out) kernels. Both layouts are handled: scanned (each layer's params stacked on a leading
axis under `layers`) and unscanned (`layers_0`, `layers_1`, ...). Encoder and decoder depths may
differ, and each stack is walked over its own depth.
"""

from typing import Iterator, NamedTuple

import numpy as np

from t5x_lite.config import T5Config
from t5x_lite.errors import UserError

# HF keeps these as aliases of `shared.weight`; an import accepts and ignores them.
_TIED_ALIASES = ("encoder.embed_tokens.weight", "decoder.embed_tokens.weight")


class Entry(NamedTuple):
  hf_key: str
  path: tuple[str, ...]   # path in our tree; for a layer param, below the layer
  layer: int | None       # layer index, or None for a param outside the layer stack
  transpose: bool         # Linear weight <-> kernel


def _attention(hf_prefix, our_name, stack, i):
  for hf, ours in (("q", "query"), ("k", "key"), ("v", "value"), ("o", "out")):
    yield Entry(f"{hf_prefix}.{hf}.weight", (stack, our_name, ours, "kernel"), i, True)


def _mlp(hf_prefix, cfg, stack, i):
  names = ("wi_0", "wi_1", "wo") if cfg.feed_forward_proj == "gated-gelu" else ("wi", "wo")
  for name in names:
    yield Entry(f"{hf_prefix}.{name}.weight", (stack, "mlp", name, "kernel"), i, True)


def entries(cfg: T5Config) -> Iterator[Entry]:
  """Every HF key with where it lives in our tree."""
  yield Entry("shared.weight", ("token_embedder", "embedding"), None, False)
  for stack, depth in (("encoder", cfg.num_encoder_layers), ("decoder", cfg.num_decoder_layers)):
    # One relative position table per stack; HF keeps it in block 0's self-attention.
    yield Entry(f"{stack}.block.0.layer.0.SelfAttention.relative_attention_bias.weight",
                (stack, "relpos_bias", "rel_embedding"), None, False)
    for i in range(depth):
      block = f"{stack}.block.{i}.layer"
      if stack == "encoder":
        yield from _attention(f"{block}.0.SelfAttention", "attention", stack, i)
        yield Entry(f"{block}.0.layer_norm.weight", (stack, "pre_attention_layer_norm", "scale"), i, False)
        yield from _mlp(f"{block}.1.DenseReluDense", cfg, stack, i)
        yield Entry(f"{block}.1.layer_norm.weight", (stack, "pre_mlp_layer_norm", "scale"), i, False)
      else:
        yield from _attention(f"{block}.0.SelfAttention", "self_attention", stack, i)
        yield Entry(f"{block}.0.layer_norm.weight",
                    (stack, "pre_self_attention_layer_norm", "scale"), i, False)
        yield from _attention(f"{block}.1.EncDecAttention", "encoder_decoder_attention", stack, i)
        yield Entry(f"{block}.1.layer_norm.weight",
                    (stack, "pre_cross_attention_layer_norm", "scale"), i, False)
        yield from _mlp(f"{block}.2.DenseReluDense", cfg, stack, i)
        yield Entry(f"{block}.2.layer_norm.weight", (stack, "pre_mlp_layer_norm", "scale"), i, False)
    norm = "encoder_norm" if stack == "encoder" else "decoder_norm"
    yield Entry(f"{stack}.final_layer_norm.weight", (stack, norm, "scale"), None, False)
  if not cfg.tie_word_embeddings:
    yield Entry("lm_head.weight", ("decoder", "logits_dense", "kernel"), None, True)


def hf_shape(entry: Entry, cfg: T5Config) -> tuple[int, ...]:
  """The shape HF stores for an entry."""
  d, a, f = cfg.d_model, cfg.inner_dim, cfg.d_ff
  leaf, parent = entry.path[-2], entry.path[-3] if len(entry.path) > 2 else ""
  if entry.hf_key in ("shared.weight", "lm_head.weight"):
    return (cfg.vocab_size, d)
  if leaf == "relpos_bias":
    return (cfg.relative_attention_num_buckets, cfg.num_heads)
  if entry.path[-1] == "scale":
    return (d,)
  if leaf in ("query", "key", "value"):
    return (a, d)
  if leaf == "out":
    return (d, a)
  if leaf == "wo":
    return (d, f)
  assert parent == "mlp", entry
  return (f, d)


def _our_path(entry: Entry, scan_layers: bool) -> tuple[tuple[str, ...], int | None]:
  """(path in our tree, index on the stacked axis or None)."""
  if entry.layer is None:
    return entry.path, None
  stack, rest = entry.path[0], entry.path[1:]
  if scan_layers:
    return (stack, "layers", *rest), entry.layer
  return (stack, f"layers_{entry.layer}", *rest), None


def _get(tree, path):
  for key in path:
    if not hasattr(tree, "__getitem__") or key not in tree:
      raise UserError(f"param {'/'.join(path)} is missing from the model params")
    tree = tree[key]
  return tree


def to_hf_state_dict(params, cfg: T5Config) -> dict[str, np.ndarray]:
  """Our params (scanned or not, per cfg.scan_layers) -> HF state dict of float32 numpy arrays."""
  state = {}
  for entry in entries(cfg):
    path, index = _our_path(entry, cfg.scan_layers)
    value = np.asarray(_get(params, path))
    if index is not None:
      value = value[index]
    value = value.T if entry.transpose else value
    expected = hf_shape(entry, cfg)
    if value.shape != expected:
      raise UserError(f"param {'/'.join(path)} for {entry.hf_key} has shape {value.shape}; "
                      f"the config needs {expected}")
    state[entry.hf_key] = np.ascontiguousarray(value)
  return state


def from_hf_state_dict(state_dict, cfg: T5Config) -> dict:
  """HF state dict (numpy-convertible values) -> our params in cfg.scan_layers layout.

  Missing, unexpected or mis-shaped keys raise a UserError naming the key.
  """
  table = list(entries(cfg))
  expected_keys = {e.hf_key for e in table}
  ignored = set(_TIED_ALIASES) | ({"lm_head.weight"} if cfg.tie_word_embeddings else set())
  for key in state_dict:
    if key not in expected_keys and key not in ignored:
      raise UserError(f"unexpected key {key!r} in the HF state dict for model {cfg.name!r}")
  params, stacked = {}, {}
  for entry in table:
    if entry.hf_key not in state_dict:
      raise UserError(f"key {entry.hf_key!r} is missing from the HF state dict for model {cfg.name!r}")
    value = _numpy(state_dict[entry.hf_key])
    expected = hf_shape(entry, cfg)
    if value.shape != expected:
      raise UserError(f"key {entry.hf_key!r} has shape {tuple(value.shape)}; "
                      f"model {cfg.name!r} needs {expected}")
    value = np.array(value.T if entry.transpose else value, dtype=np.float32)
    path, index = _our_path(entry, cfg.scan_layers)
    if index is None:
      _set(params, path, value)
    else:
      stacked.setdefault(path, {})[index] = value
  for path, layers in stacked.items():
    _set(params, path, np.stack([layers[i] for i in range(len(layers))]))
  for key in ignored & set(state_dict):  # Aliases must at least agree in shape.
    shape = tuple(np.shape(state_dict[key]))
    if shape != (cfg.vocab_size, cfg.d_model):
      raise UserError(f"key {key!r} has shape {shape}; model {cfg.name!r} needs "
                      f"{(cfg.vocab_size, cfg.d_model)}")
  return params


def _numpy(value) -> np.ndarray:
  if hasattr(value, "detach"):  # A torch tensor, without importing torch.
    value = value.detach().cpu().float().numpy()
  return np.asarray(value)


def _set(tree, path, value):
  for key in path[:-1]:
    tree = tree.setdefault(key, {})
  tree[path[-1]] = value
