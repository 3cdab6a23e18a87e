"""Conversion between our param tree and Hugging Face `T5ForConditionalGeneration` state dicts.

Pure numpy in and out. PyTorch Linear weights are stored (out, in): the transpose of our
(in, out) kernels. Both layouts are handled: scanned (each layer's params stacked on a leading
axis under `layers`) and unscanned (`layers_0`, `layers_1`, ...). Encoder and decoder depths may
differ, and each stack is walked over its own depth.

HF's T5 has one key and one value projection per head. A model with shared heads (`-sh`) exports
its single key/value head repeated for every head, and a model with tied key/value (`-skv`) its
one matrix as both `k` and `v`: the same function, so the export is lossless. Reading such a state
dict back into a shared/tied config checks that the copies agree.
"""

from collections.abc import Iterator
from typing import NamedTuple

import numpy as np

from t5x_lite.config import T5Config
from t5x_lite.errors import UserError

# HF keeps these as aliases of `shared.weight`; an import accepts and ignores them.
_TIED_ALIASES = ("encoder.embed_tokens.weight", "decoder.embed_tokens.weight")


class Entry(NamedTuple):
  hf_key: str
  path: tuple[str, ...]  # path in our tree; for a layer param, below the layer
  layer: int | None  # layer index, or None for a param outside the layer stack
  transpose: bool  # Linear weight <-> kernel
  repeat: int = 1  # HF holds our (out, in) weight this many times along `out` (shared heads)


def _attention(hf_prefix, our_name, stack, i, cfg):
  kv_repeat = cfg.num_heads // cfg.num_kv_heads
  value = "key" if cfg.tied_key_value else "value"
  for hf, ours, repeat in (
    ("q", "query", 1),
    ("k", "key", kv_repeat),
    ("v", value, kv_repeat),
    ("o", "out", 1),
  ):
    yield Entry(f"{hf_prefix}.{hf}.weight", (stack, our_name, ours, "kernel"), i, True, repeat)


def _mlp(hf_prefix, cfg, stack, i):
  names = ("wi_0", "wi_1", "wo") if cfg.feed_forward_proj == "gated-gelu" else ("wi", "wo")
  for name in names:
    yield Entry(f"{hf_prefix}.{name}.weight", (stack, "mlp", name, "kernel"), i, True)


def entries(cfg: T5Config) -> Iterator[Entry]:
  """Every HF key with where it lives in our tree."""
  yield Entry("shared.weight", ("token_embedder", "embedding"), None, False)
  for stack, depth in (("encoder", cfg.num_encoder_layers), ("decoder", cfg.num_decoder_layers)):
    # One relative position table per stack; HF keeps it in block 0's self-attention.
    yield Entry(
      f"{stack}.block.0.layer.0.SelfAttention.relative_attention_bias.weight",
      (stack, "relpos_bias", "rel_embedding"),
      None,
      False,
    )
    for i in range(depth):
      block = f"{stack}.block.{i}.layer"
      if stack == "encoder":
        yield from _attention(f"{block}.0.SelfAttention", "attention", stack, i, cfg)
        yield Entry(
          f"{block}.0.layer_norm.weight", (stack, "pre_attention_layer_norm", "scale"), i, False
        )
        yield from _mlp(f"{block}.1.DenseReluDense", cfg, stack, i)
        yield Entry(
          f"{block}.1.layer_norm.weight", (stack, "pre_mlp_layer_norm", "scale"), i, False
        )
      else:
        yield from _attention(f"{block}.0.SelfAttention", "self_attention", stack, i, cfg)
        yield Entry(
          f"{block}.0.layer_norm.weight",
          (stack, "pre_self_attention_layer_norm", "scale"),
          i,
          False,
        )
        yield from _attention(
          f"{block}.1.EncDecAttention", "encoder_decoder_attention", stack, i, cfg
        )
        yield Entry(
          f"{block}.1.layer_norm.weight",
          (stack, "pre_cross_attention_layer_norm", "scale"),
          i,
          False,
        )
        yield from _mlp(f"{block}.2.DenseReluDense", cfg, stack, i)
        yield Entry(
          f"{block}.2.layer_norm.weight", (stack, "pre_mlp_layer_norm", "scale"), i, False
        )
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
    if entry.repeat > 1:  # One shared key/value head, written once per head.
      value = np.tile(value, (entry.repeat, 1))
    expected = hf_shape(entry, cfg)
    if value.shape != expected:
      raise UserError(
        f"param {'/'.join(path)} for {entry.hf_key} has shape {value.shape}; "
        f"the config needs {expected}"
      )
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
      raise UserError(
        f"key {entry.hf_key!r} is missing from the HF state dict for model {cfg.name!r}"
      )
    value = _numpy(state_dict[entry.hf_key])
    expected = hf_shape(entry, cfg)
    if value.shape != expected:
      raise UserError(
        f"key {entry.hf_key!r} has shape {tuple(value.shape)}; model {cfg.name!r} needs {expected}"
      )
    if entry.repeat > 1:
      value = _single_head(value, entry, cfg)
    value = np.array(value.T if entry.transpose else value, dtype=np.float32)
    path, index = _our_path(entry, cfg.scan_layers)
    earlier = _get_or_none(params, path) if index is None else stacked.get(path, {}).get(index)
    if earlier is not None and not np.array_equal(earlier, value):
      # Tied key/value: `k` and `v` are one matrix of ours and must be equal.
      raise UserError(
        f"key {entry.hf_key!r} differs from the key projection it is tied to in "
        f"model {cfg.name!r} (-skv); import it as an untied model"
      )
    if index is None:
      _set(params, path, value)
    else:
      stacked.setdefault(path, {})[index] = value
  for path, layers in stacked.items():
    _set(params, path, np.stack([layers[i] for i in range(len(layers))]))
  for key in ignored & set(state_dict):  # Aliases must at least agree in shape.
    shape = tuple(np.shape(state_dict[key]))
    if shape != (cfg.vocab_size, cfg.d_model):
      raise UserError(
        f"key {key!r} has shape {shape}; model {cfg.name!r} needs {(cfg.vocab_size, cfg.d_model)}"
      )
  return params


def _single_head(value: np.ndarray, entry: Entry, cfg: T5Config) -> np.ndarray:
  """The one key/value head of a shared-heads model from HF's per-head copies, which must agree."""
  heads = value.reshape(entry.repeat, -1, value.shape[-1])
  if not (heads == heads[:1]).all():
    raise UserError(
      f"key {entry.hf_key!r} has different heads; model {cfg.name!r} (-sh) shares "
      "one key/value head; import it as a model without shared heads"
    )
  return heads[0]


def tied_variants(state_dict, cfg: T5Config) -> list[str]:
  """Which of the `-sh` / `-skv` structures an HF state dict of an ordinary `cfg` carries.

  An export of a shared-heads or tied key/value model writes repeated heads or equal k and v in
  every attention layer; a trained ordinary model has neither. Returns e.g. ['sh', 'skv'] or [].
  """
  pairs = [
    (e.hf_key, e.hf_key[: -len("k.weight")] + "v.weight")
    for e in entries(cfg)
    if e.hf_key.endswith(".k.weight")
  ]
  if not pairs or any(k not in state_dict or v not in state_dict for k, v in pairs):
    return []

  def heads_repeated(matrix):  # [heads * d_kv, d_model]: every head equal to the first
    heads = matrix.reshape(cfg.num_heads, -1, matrix.shape[-1])
    return bool((heads == heads[:1]).all())

  found = []
  if cfg.num_heads > 1 and all(
    heads_repeated(_numpy(state_dict[key])) for pair in pairs for key in pair
  ):
    found.append("sh")
  if all(np.array_equal(_numpy(state_dict[k]), _numpy(state_dict[v])) for k, v in pairs):
    found.append("skv")
  return found


def _get_or_none(tree, path):
  for key in path:
    if not isinstance(tree, dict) or key not in tree:
      return None
    tree = tree[key]
  return tree


def _numpy(value) -> np.ndarray:
  if hasattr(value, "detach"):  # A torch tensor, without importing torch.
    value = value.detach().cpu().float().numpy()
  return np.asarray(value)


def _set(tree, path, value):
  for key in path[:-1]:
    tree = tree.setdefault(key, {})
  tree[path[-1]] = value
