"""Our Flax T5 against Hugging Face's PyTorch T5: same weights, same logits; lossless mapping."""

import dataclasses

import jax
import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from t5x_lite import hf_mapping, models  # noqa: E402
from t5x_lite.config import T5Config  # noqa: E402
from t5x_lite.errors import UserError  # noqa: E402

# Few buckets and a short max distance so that short sequences reach the logarithmic buckets.
BASE = dict(
  vocab_size=160,
  d_model=32,
  d_ff=64,
  num_heads=4,
  d_kv=8,
  relative_attention_num_buckets=8,
  relative_attention_max_distance=12,
)
CONFIGS = {
  "v1_0": T5Config(
    name="tiny-v1_0",
    num_encoder_layers=2,
    num_decoder_layers=2,
    feed_forward_proj="relu",
    tie_word_embeddings=True,
    **BASE,
  ),
  "v1_0_el3_dl5": T5Config(
    name="v1_0-el3-dl5",
    num_encoder_layers=3,
    num_decoder_layers=5,
    feed_forward_proj="relu",
    tie_word_embeddings=True,
    **BASE,
  ),
  "v1_1": T5Config(
    name="tiny-v1_1",
    num_encoder_layers=2,
    num_decoder_layers=3,
    feed_forward_proj="gated-gelu",
    tie_word_embeddings=False,
    **BASE,
  ),
}


def random_hf_model(cfg: T5Config, seed: int = 0):
  torch.manual_seed(seed)
  hf_cfg = transformers.T5Config(
    vocab_size=cfg.vocab_size,
    d_model=cfg.d_model,
    d_kv=cfg.d_kv,
    d_ff=cfg.d_ff,
    num_layers=cfg.num_encoder_layers,
    num_decoder_layers=cfg.num_decoder_layers,
    num_heads=cfg.num_heads,
    relative_attention_num_buckets=cfg.relative_attention_num_buckets,
    relative_attention_max_distance=cfg.relative_attention_max_distance,
    dropout_rate=0.0,
    feed_forward_proj=cfg.feed_forward_proj,
    tie_word_embeddings=cfg.tie_word_embeddings,
  )
  model = transformers.T5ForConditionalGeneration(hf_cfg).eval()
  if not cfg.tie_word_embeddings:
    # Recent transformers tie lm_head to shared unless a checkpoint holds both: untie by hand.
    model.lm_head.weight = torch.nn.Parameter(torch.empty(cfg.vocab_size, cfg.d_model))
  with torch.no_grad():
    for p in model.parameters():  # Norm scales too, so that a mix-up cannot hide behind ones.
      p.copy_(torch.randn_like(p) * (1.0 if p.ndim == 2 and p.shape[0] == cfg.vocab_size else 0.3))
  return model


def hf_state(model):
  return {k: v.detach().numpy().copy() for k, v in model.state_dict().items()}


def padded_batch(cfg):
  rng = np.random.RandomState(1)
  inputs = rng.randint(2, cfg.vocab_size, size=(3, 20)).astype(np.int32)
  targets = rng.randint(2, cfg.vocab_size, size=(3, 9)).astype(np.int32)
  for row, (n_in, n_out) in enumerate([(20, 9), (13, 5), (4, 2)]):
    inputs[row, n_in - 1], inputs[row, n_in:] = 1, 0
    targets[row, n_out - 1], targets[row, n_out:] = 1, 0
  decoder_inputs = np.concatenate([np.zeros((3, 1), np.int32), targets[:, :-1]], axis=1)
  return inputs, decoder_inputs, targets


@pytest.mark.parametrize("scan_layers", [True, False])
@pytest.mark.parametrize("kind", sorted(CONFIGS))
def test_logits_match_hf(kind, scan_layers):
  cfg = dataclasses.replace(CONFIGS[kind], scan_layers=scan_layers)
  hf_model = random_hf_model(cfg)
  params = hf_mapping.from_hf_state_dict(hf_state(hf_model), cfg)
  inputs, decoder_inputs, targets = padded_batch(cfg)

  with torch.no_grad():
    expected = hf_model(
      input_ids=torch.from_numpy(inputs).long(),
      attention_mask=torch.from_numpy(inputs > 0).long(),
      decoder_input_ids=torch.from_numpy(decoder_inputs).long(),
    ).logits.numpy()
  model = models.EncoderDecoderModel(cfg)
  got = np.asarray(
    jax.jit(model.logits)(
      params,
      {
        "encoder_input_tokens": inputs,
        "decoder_input_tokens": decoder_inputs,
        "decoder_target_tokens": targets,
      },
    )
  )
  assert got.dtype == np.float32 and got.shape == expected.shape
  real = targets > 0  # Padded target positions are masked differently and never scored.
  np.testing.assert_allclose(got[real], expected[real], atol=1e-4, rtol=0)


@pytest.mark.parametrize("scan_layers", [True, False])
@pytest.mark.parametrize("kind", sorted(CONFIGS))
def test_round_trip_is_bit_identical(kind, scan_layers):
  cfg = dataclasses.replace(CONFIGS[kind], scan_layers=scan_layers)
  state = hf_state(random_hf_model(cfg))
  back = hf_mapping.to_hf_state_dict(hf_mapping.from_hf_state_dict(state, cfg), cfg)
  tied_aliases = {"encoder.embed_tokens.weight", "decoder.embed_tokens.weight"}
  if cfg.tie_word_embeddings:
    tied_aliases.add("lm_head.weight")
  assert set(back) == set(state) - tied_aliases
  for key, value in back.items():
    assert value.dtype == np.float32 and value.flags.c_contiguous
    np.testing.assert_array_equal(value, state[key], err_msg=key)


def test_mapping_matches_flax_init_layout():
  for kind, base in CONFIGS.items():
    for scan in (True, False):
      cfg = dataclasses.replace(base, scan_layers=scan)
      abstract = models.EncoderDecoderModel(cfg).abstract_params()
      ours = hf_mapping.from_hf_state_dict(hf_state(random_hf_model(cfg)), cfg)
      shapes = lambda tree: jax.tree_util.tree_map(lambda x: tuple(x.shape), tree)
      assert shapes(ours) == shapes(abstract), (kind, scan)


def test_unscanned_and_scanned_layouts_give_the_same_hf_weights():
  cfg = CONFIGS["v1_0_el3_dl5"]
  state = hf_state(random_hf_model(cfg))
  scanned = hf_mapping.from_hf_state_dict(state, dataclasses.replace(cfg, scan_layers=True))
  flat = hf_mapping.from_hf_state_dict(state, dataclasses.replace(cfg, scan_layers=False))
  np.testing.assert_array_equal(
    scanned["decoder"]["layers"]["mlp"]["wo"]["kernel"][4],
    flat["decoder"]["layers_4"]["mlp"]["wo"]["kernel"],
  )
  assert "layers_3" not in flat["encoder"] and "layers_4" in flat["decoder"]


def test_bad_state_dicts_name_the_key():
  cfg = CONFIGS["v1_0_el3_dl5"]
  state = hf_state(random_hf_model(cfg))
  missing = dict(state)
  del missing["decoder.block.4.layer.2.DenseReluDense.wi.weight"]
  with pytest.raises(UserError, match="decoder.block.4.layer.2.DenseReluDense.wi.weight"):
    hf_mapping.from_hf_state_dict(missing, cfg)
  with pytest.raises(UserError, match="unexpected key 'encoder.block.3"):
    hf_mapping.from_hf_state_dict(
      {**state, "encoder.block.3.layer.0.layer_norm.weight": np.ones(32, np.float32)}, cfg
    )
  bad = {**state, "encoder.block.1.layer.0.SelfAttention.q.weight": np.zeros((32, 16), np.float32)}
  with pytest.raises(UserError, match=r"SelfAttention.q.weight.*\(32, 16\).*\(32, 32\)"):
    hf_mapping.from_hf_state_dict(bad, cfg)
