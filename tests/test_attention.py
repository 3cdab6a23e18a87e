"""The attention setting: the fused path's layout, masks and bias equal T5's own core (run here
through jax.nn.dot_product_attention's XLA implementation, the CPU stand-in for cuDNN), 'auto'
resolution, and one-line errors."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from t5x_lite import attention, config, models, network, resume_check
from t5x_lite.errors import UserError, first_line
from t5x_lite.layers import dot_product_attention

CFG = config.T5Config(
  name="test-tiny",
  vocab_size=128,
  d_model=32,
  d_ff=64,
  num_heads=4,
  d_kv=8,
  num_encoder_layers=2,
  num_decoder_layers=2,
  feed_forward_proj="relu",
  tie_word_embeddings=True,
  relative_attention_num_buckets=8,
  relative_attention_max_distance=16,
)


def qkv(batch, q_len, k_len, heads, kv_heads, d_kv=8, seed=0):
  r = np.random.RandomState(seed)
  draw = lambda *shape: jnp.asarray(r.normal(size=shape), jnp.float32)
  return (
    draw(batch, q_len, heads, d_kv),
    draw(batch, k_len, kv_heads, d_kv),
    draw(batch, k_len, kv_heads, d_kv),
    draw(1, heads, q_len, k_len),
  )


def valid(lengths, length):
  return jnp.arange(length)[None, :] < jnp.asarray(lengths)[:, None]


# (query lengths, key lengths, causal, bias): encoder, decoder self-attention, cross-attention.
KINDS = {
  "encoder": ([9, 5], [9, 5], False, True),
  "decoder_self": ([6, 3], [6, 3], True, True),
  "cross": ([6, 3], [9, 5], False, False),
}


@pytest.mark.parametrize("kv_heads", [4, 1], ids=["multi-head", "multi-query"])
@pytest.mark.parametrize("kind", list(KINDS))
def test_fused_path_equals_t5_core_with_padding(kind, kv_heads):
  q_lengths, k_lengths, causal, with_bias = KINDS[kind]
  q_len, k_len = max(q_lengths), max(k_lengths)
  query, key, value, bias = qkv(2, q_len, k_len, 4, kv_heads)
  bias = bias if with_bias else None
  mask = network.attention_mask(valid(q_lengths, q_len), valid(k_lengths, k_len), causal=causal)
  assert mask.query_lengths is not None  # unpacked: the fused path masks by length
  ours = dot_product_attention(query, key, value, bias, mask.dense)
  fused = attention.fused_attention(query, key, value, bias, mask, "xla")
  rows = valid(q_lengths, q_len)  # padded queries feed nothing downstream
  np.testing.assert_allclose(fused[rows], ours[rows], rtol=1e-5, atol=1e-5)


def test_fused_path_with_packed_segments_uses_the_dense_mask():
  query, key, value, bias = qkv(1, 8, 8, 4, 4)
  segments = jnp.asarray([[1, 1, 1, 2, 2, 2, 2, 0]])
  mask = network.attention_mask(segments > 0, segments > 0, segments, segments, causal=True)
  assert mask.query_lengths is None
  ours = dot_product_attention(query, key, value, bias, mask.dense)
  fused = attention.fused_attention(query, key, value, bias, mask, "xla")
  np.testing.assert_allclose(fused[:, :7], ours[:, :7], rtol=1e-5, atol=1e-5)


def make_batch(batch=2, input_length=10, target_length=6, vocab=128):
  r = np.random.RandomState(1)
  inputs = r.randint(2, vocab, (batch, input_length)).astype(np.int32)
  targets = r.randint(2, vocab, (batch, target_length)).astype(np.int32)
  inputs[-1, input_length // 2 :] = 0
  targets[-1, target_length // 2 :] = 0
  return {
    "encoder_input_tokens": inputs,
    "decoder_input_tokens": np.concatenate([np.zeros((batch, 1), np.int32), targets[:, :-1]], 1),
    "decoder_target_tokens": targets,
    "decoder_loss_weights": (targets > 0).astype(np.float32),
  }


def loss_and_grads(cfg, params, batch):
  model = models.EncoderDecoderModel(cfg)
  return jax.jit(jax.value_and_grad(lambda p: model.loss_fn(p, batch)[0]))(params)


@pytest.mark.parametrize("variant", ["multi-head", "sh-skv"])
def test_model_loss_and_relpos_gradient_equal_through_the_fused_path(variant, monkeypatch):
  shared = variant == "sh-skv"  # one key head, which is also the value
  cfg = dataclasses.replace(CFG, shared_heads=shared, tied_key_value=shared, attention_impl="xla")
  model = models.EncoderDecoderModel(cfg)
  params = jax.jit(model.init_params, static_argnums=(1, 2))(jax.random.key(0), 10, 6)
  batch = make_batch()
  loss, grads = loss_and_grads(cfg, params, batch)
  # Every attention takes the fused path, with jax's XLA implementation standing in for cuDNN.
  monkeypatch.setattr(attention, "choose", lambda *args, **kwargs: "cudnn")
  monkeypatch.setattr(attention, "JAX_IMPLEMENTATION", {"cudnn": "xla"})
  fused_loss, fused_grads = loss_and_grads(dataclasses.replace(cfg, name="fused"), params, batch)
  np.testing.assert_allclose(fused_loss, loss, rtol=1e-6)
  for stack in ("encoder", "decoder"):
    table, fused_table = (g[stack]["relpos_bias"]["rel_embedding"] for g in (grads, fused_grads))
    assert np.abs(table).max() > 0
    np.testing.assert_allclose(fused_table, table, rtol=1e-4, atol=1e-7)
  flat = jax.tree_util.tree_leaves_with_path(grads)
  for (path, g), fused_g in zip(flat, jax.tree_util.tree_leaves(fused_grads)):
    np.testing.assert_allclose(fused_g, g, rtol=1e-4, atol=1e-6, err_msg=str(path))


def test_auto_picks_xla_on_cpu_and_cudnn_for_a_gpu_program():
  recipe = dict(dtype="bfloat16", head_dim=64, q_len=512, k_len=512, dropout=False)
  assert jax.default_backend() == "cpu"
  assert attention.choose("auto", **recipe) == "xla"
  with attention.compiling_for("cuda"):
    assert attention.choose("auto", **recipe) == "cudnn"
    assert attention.choose("xla", **recipe) == "xla"
    for change in (
      dict(dtype="float32"),
      dict(head_dim=12),
      dict(head_dim=256),
      dict(q_len=113),
      dict(dropout=True),
      dict(q_len=1),  # one decoding step
    ):
      assert attention.choose("auto", **{**recipe, **change}) == "xla", change
  with attention.compiling_for("tpu"):
    assert attention.choose("auto", **recipe) == "xla"


def test_explicit_cudnn_is_an_error_on_a_gpu_where_it_cannot_run():
  recipe = dict(dtype="bfloat16", head_dim=64, q_len=512, k_len=512, dropout=False)
  # Other platforms compute with xla: a GPU configuration still runs on a CPU.
  assert attention.choose("cudnn", **recipe) == "xla"
  with attention.compiling_for("cuda"):
    assert attention.choose("cudnn", **recipe) == "cudnn"
    with pytest.raises(UserError, match="float32") as e:
      attention.choose("cudnn", **{**recipe, "dtype": "float32"})
    assert "\n" not in str(e.value)
    with pytest.raises(UserError, match="dropout"):
      attention.choose("cudnn", **{**recipe, "dropout": True})


def test_bad_attention_impl_is_a_one_line_error():
  with pytest.raises(UserError) as e:
    config.model_config(name="t5-efficient-tiny", attention_impl="flash")
  # Commands print the first line (gin appends where the call was made).
  assert first_line(e.value).endswith("attention_impl must be one of auto, xla, cudnn, got 'flash'")
  assert config.model_config(name="t5-efficient-tiny").attention_impl == "auto"


def test_attention_impl_is_an_execution_field():
  assert "attention_impl" in resume_check.EXECUTION_FIELDS


def test_lean_and_save_dots_keep_the_fused_kernels_outputs():
  from jax.extend.core import Primitive

  fused_forward = Primitive(next(iter(attention.FUSED_FORWARD_PRIMITIVES)))
  other = Primitive("exp")
  for name in ("lean", "save_dots"):
    policy = network.remat_policy(name)
    assert policy(fused_forward)
    assert not policy(other)
  assert not network.remat_policy("full")(fused_forward)


@pytest.mark.slow
@pytest.mark.ci
def test_gpu_attention_benchmark_runs_on_cpu_at_small_shapes(capsys):
  """benchmarks/gpu_attention.py end to end: xla against the fused path's XLA stand-in (four
  compiles of the recipe step and its gradient: a minute on CPU, so CI's slow set)."""
  import importlib
  import json
  import pathlib
  import sys

  sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent / "benchmarks"))
  try:
    script = importlib.import_module("gpu_attention")
  finally:
    sys.path.pop(0)
  assert script.main(["--small", "--steps=1", "--curve_steps=2"]) == 0
  out = capsys.readouterr().out
  assert "fused side runs the same code" in out
  summary = json.loads(out.strip().splitlines()[-1])
  assert summary["fused_stand_in"] and [r["attention"] for r in summary["rows"]] == [
    "xla",
    "fused (xla stand-in)",
  ]
  agreement = summary["rows"][-1]["agreement"]
  assert agreement["agrees"] and agreement["encoder_table_grad_rel_err"] < 1e-3
  assert all(r["step_s"] > 0 and r["tokens_per_s"] > 0 for r in summary["rows"])
