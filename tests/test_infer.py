"""Greedy decoding with the kv cache agrees with transformers' generate on the exported model."""

import dataclasses
import json
import os
import pathlib
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from test_export_import import train_sentencepiece  # noqa: E402

from t5x_lite import checkpoints, export_hf, infer  # noqa: E402
from t5x_lite.config import resolve_model_name  # noqa: E402
from t5x_lite.models import EncoderDecoderModel  # noqa: E402
from t5x_lite.trainer import TrainState  # noqa: E402

REPO = pathlib.Path(__file__).resolve().parent.parent
TEXTS = [
  "the quick brown fox <extra_id_0> over the lazy dog",
  "small <extra_id_0> house <extra_id_1>",
  "green river running blue tree talking walking <extra_id_0> red cat large dog house",
]
MAX_DECODE = 10
MODELS = {
  "v1_0-scan": dataclasses.replace(
    resolve_model_name("t5-efficient-tiny-dm64-ff128-nl2"), vocab_size=160
  ),
  "v1_1-el3-dl2": dataclasses.replace(
    resolve_model_name("t5-v1_1-small-dm64-ff128-nh4-el3-dl2"), vocab_size=160, scan_layers=False
  ),
}


@pytest.fixture(scope="module")
def spm_path(tmp_path_factory):
  return train_sentencepiece(tmp_path_factory.mktemp("spm") / "spiece.model")


def random_params(cfg):
  """Random params of the model's shapes (no init compile): embeddings ~N(0, 1), the rest
  ~N(0, 0.3), norms included so that a mix-up cannot hide behind ones."""
  rng = np.random.RandomState(3)
  abstract = EncoderDecoderModel(cfg).abstract_params()
  return jax.tree.map(
    lambda x: jnp.asarray(
      rng.normal(0, 1.0 if cfg.vocab_size in x.shape else 0.3, x.shape).astype(np.float32)
    ),
    abstract,
  )


@pytest.fixture(scope="module")
def runs(tmp_path_factory, spm_path):
  """name -> (model_dir, hf_dir, Decoder): a checkpoint of random params, its HF export and a
  decoder on it, each made once on first use."""
  cache = {}

  def get(name):
    if name not in cache:
      cfg = MODELS[name]
      root = tmp_path_factory.mktemp(name)
      params = random_params(cfg)
      # Decoding needs only the params; the optimizer state of a real run is left out here.
      state = TrainState(
        step=jnp.zeros((), jnp.int32), params=params, opt_state=None, rng=jax.random.PRNGKey(0)
      )
      ckpt = checkpoints.Checkpointer(str(root / "run"))
      ckpt.save(
        0,
        state,
        {
          "step": 0,
          "model_config": dataclasses.asdict(cfg),
          "gin_config": "",
          "mixture_or_task_name": None,
          "task_feature_lengths": {"inputs": 16, "targets": 8},
          "batches_consumed": 0,
        },
        None,
      )
      ckpt.close()
      export_hf.export(
        str(root / "run"), str(root / "hf"), vocab=str(spm_path), log=lambda *_: None
      )
      cache[name] = (root / "run", root / "hf", infer.Decoder(str(root / "run")))
    return cache[name]

  return get


def hf_inputs(hf_dir):
  tok = transformers.AutoTokenizer.from_pretrained(hf_dir)
  ids = [tok(t).input_ids for t in TEXTS]
  return ids, tok


@pytest.mark.parametrize("name", sorted(MODELS))
def test_greedy_and_logits_match_transformers(runs, name):
  model_dir, hf_dir, decoder = runs(name)
  input_ids, _ = hf_inputs(hf_dir)
  ours = decoder.generate(input_ids, MAX_DECODE)

  hf_model = transformers.T5ForConditionalGeneration.from_pretrained(hf_dir).eval()
  length = max(map(len, input_ids))
  batch = np.zeros((len(input_ids), length), np.int64)
  for row, ids in enumerate(input_ids):
    batch[row, : len(ids)] = ids
  with torch.no_grad():
    generated = hf_model.generate(
      input_ids=torch.from_numpy(batch),
      attention_mask=torch.from_numpy(batch > 0).long(),
      num_beams=1,
      do_sample=False,
      max_new_tokens=MAX_DECODE,
      min_new_tokens=0,
    ).numpy()
  theirs = []
  for row in generated[:, 1:].tolist():  # without the start token, through the first EOS
    theirs.append(row[: row.index(1) + 1] if 1 in row else row)
  assert ours == theirs
  assert all(0 < len(o) <= MAX_DECODE for o in ours)

  # Teacher-forced logits on the greedy outputs agree to 1e-4 in float32.
  targets = np.zeros((len(ours), MAX_DECODE), np.int32)
  for row, ids in enumerate(ours):
    targets[row, : len(ids)] = ids
  decoder_inputs = np.concatenate([np.zeros((len(ours), 1), np.int32), targets[:, :-1]], axis=1)
  got = np.asarray(
    decoder.model.logits(
      decoder.params,
      {
        "encoder_input_tokens": batch.astype(np.int32),
        "decoder_input_tokens": decoder_inputs,
        "decoder_target_tokens": targets,
      },
    )
  )
  with torch.no_grad():
    expected = hf_model(
      input_ids=torch.from_numpy(batch),
      attention_mask=torch.from_numpy(batch > 0).long(),
      decoder_input_ids=torch.from_numpy(decoder_inputs).long(),
    ).logits.numpy()
  real = targets > 0
  np.testing.assert_allclose(got[real], expected[real], atol=1e-4, rtol=0)


def test_cli_ids_and_text(runs, spm_path, capsys):
  model_dir, hf_dir, decoder = runs("v1_0-scan")
  input_ids, _ = hf_inputs(hf_dir)
  expected = decoder.generate(input_ids, MAX_DECODE)
  infer.main(
    [
      f"--model_dir={model_dir}",
      f"--vocab={spm_path}",
      f"--max_decode_length={MAX_DECODE}",
      "--max_input_length=0",  # the third text is longer than the run's 16
      *[f"--input={t}" for t in TEXTS],
    ]
  )
  vocab = infer.load_vocabulary(str(model_dir), str(spm_path), {})
  assert capsys.readouterr().out.splitlines() == [vocab.decode(ids) for ids in expected]
  env = dict(os.environ, XLA_FLAGS="", JAX_PLATFORMS="cpu")
  done = subprocess.run(
    [
      sys.executable,
      "-m",
      "t5x_lite.infer",
      f"--model_dir={model_dir}",
      f"--vocab={spm_path}",
      f"--max_decode_length={MAX_DECODE}",
      "--max_input_length=0",
      "--ids",
      *[f"--input={t}" for t in TEXTS],
    ],
    cwd=REPO,
    env=env,
    capture_output=True,
    text=True,
    timeout=120,
  )
  assert done.returncode == 0, done.stderr
  rows = [json.loads(line) for line in done.stdout.splitlines()]
  assert [r["input_ids"] for r in rows] == input_ids  # same ids as the exported HF tokenizer
  assert [r["output_ids"] for r in rows] == expected


def test_an_input_longer_than_the_run_is_truncated_with_one_line(runs, spm_path, capsys):
  """The run's input length is 16: a far longer input is cut to its first 15 tokens and EOS,
  decoded as that, and stderr says so in one line; --max_input_length=0 keeps it whole."""
  model_dir, _, decoder = runs("v1_0-scan")
  long_text = " ".join(["the quick brown fox jumps over the lazy dog"] * 20)
  flags = [f"--model_dir={model_dir}", f"--vocab={spm_path}", "--max_decode_length=4", "--ids"]
  infer.main([*flags, f"--input={long_text}"])
  out, err = capsys.readouterr()
  vocab = infer.load_vocabulary(str(model_dir), str(spm_path), {})
  full = list(vocab.encode(long_text)) + [1]
  assert len(full) > 16
  (row,) = [json.loads(line) for line in out.splitlines()]
  assert row["input_ids"] == full[:15] + [1]
  assert row["output_ids"] == decoder.generate([full[:15] + [1]], 4)[0]
  assert err.splitlines() == [
    f"input 1 is {len(full)} tokens, longer than the run's input length 16: truncated to its "
    "first 15 tokens and EOS (--max_input_length=0 keeps it whole)"
  ]
  infer.main([*flags, "--max_input_length=0", f"--input={long_text}"])
  out, err = capsys.readouterr()
  assert json.loads(out)["input_ids"] == full and err == ""
