"""HF import and export: lossless round trips, loadable exports, refusals that change nothing."""

import io
import json
import os
import pathlib
import random
import subprocess
import sys

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from safetensors.numpy import load_file, save_file  # noqa: E402

from t5x_lite import config, export_hf, gin_utils, hf_files, import_hf  # noqa: E402
from t5x_lite.errors import UserError  # noqa: E402

REPO = pathlib.Path(__file__).resolve().parent.parent
SPM_PIECES = 48
HF_DIMS = dict(vocab_size=160, d_model=32, d_kv=8, d_ff=64, num_heads=4, dropout_rate=0.0)


def train_sentencepiece(path: pathlib.Path, pieces: int = SPM_PIECES) -> pathlib.Path:
  """A tiny T5-style SentencePiece model (pad 0, eos 1, unk 2, no bos)."""
  import sentencepiece as spm

  rng = random.Random(0)
  words = (
    "the quick brown fox jumps over lazy dog cat house tree river blue green red small "
    "large running walking talking"
  ).split()
  if pieces > SPM_PIECES:  # more pieces need more distinct text
    words += [
      "".join(rng.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(6)) for _ in range(300)
    ]
  lines = [" ".join(rng.choice(words) for _ in range(12)) for _ in range(400)]
  out = io.BytesIO()
  spm.SentencePieceTrainer.train(
    sentence_iterator=iter(lines),
    model_writer=out,
    vocab_size=pieces,
    model_type="unigram",
    pad_id=0,
    eos_id=1,
    unk_id=2,
    bos_id=-1,
    character_coverage=1.0,
    minloglevel=2,
  )
  path.write_bytes(out.getvalue())
  return path


def recipe_run_gin(path: pathlib.Path, scan_layers: bool) -> pathlib.Path:
  """The pretrain recipe's optimizer and model execution settings, without its data side."""
  recipe = (REPO / "gin" / "runs" / "pretrain.gin").read_text().splitlines()
  kept = [l for l in recipe if l.startswith(("optimizers.", "model_config.dtype"))]
  path.write_text(
    "\n".join(
      [
        "from t5x_lite import config",
        "from t5x_lite import optimizers",
        *kept,
        f"model_config.scan_layers = {scan_layers}",
        "",
      ]
    )
  )
  return path


def random_hf_model(version: str, enc: int, dec: int, seed: int = 0):
  torch.manual_seed(seed)
  hf_cfg = transformers.T5Config(
    num_layers=enc,
    num_decoder_layers=dec,
    feed_forward_proj="relu" if version == "v1_0" else "gated-gelu",
    tie_word_embeddings=version == "v1_0",
    **HF_DIMS,
  )
  model = transformers.T5ForConditionalGeneration(hf_cfg).eval()
  if version == "v1_1":  # an lm_head of its own, as in the released v1.1 checkpoints
    model.config.scale_decoder_outputs = False
    model.lm_head.weight = torch.nn.Parameter(
      torch.empty(HF_DIMS["vocab_size"], HF_DIMS["d_model"])
    )
  with torch.no_grad():
    for p in model.parameters():  # norms too, so that a mix-up cannot hide behind ones
      p.copy_(torch.randn_like(p) * (1.0 if p.shape[0] == HF_DIMS["vocab_size"] else 0.3))
  return model


def write_hf_dir(model, version: str, path: pathlib.Path, spm: pathlib.Path | None) -> pathlib.Path:
  """v1.0 through save_pretrained; v1.1 as the released ones are: tie false, lm_head stored."""
  if version == "v1_0":
    model.save_pretrained(path)
  else:
    path.mkdir(parents=True)
    cfg = {k: v for k, v in model.config.to_dict().items() if k != "scale_decoder_outputs"}
    cfg["tie_word_embeddings"] = False
    (path / "config.json").write_text(json.dumps(cfg))
    state = {
      k: v.detach().numpy().copy()
      for k, v in model.state_dict().items()
      if not k.endswith("embed_tokens.weight")
    }
    save_file(state, str(path / "model.safetensors"))
  if spm is not None:
    (path / "spiece.model").write_bytes(spm.read_bytes())
  return path


def hf_logits(model, inputs, decoder_inputs):
  with torch.no_grad():
    return model(
      input_ids=torch.from_numpy(inputs).long(),
      attention_mask=torch.from_numpy(inputs > 0).long(),
      decoder_input_ids=torch.from_numpy(decoder_inputs).long(),
    ).logits.numpy()


@pytest.fixture(scope="module")
def spm_path(tmp_path_factory):
  return train_sentencepiece(tmp_path_factory.mktemp("spm") / "spiece.model")


def quiet(*_):
  pass


CASES = [("v1_0", 2, 3, False), ("v1_1", 3, 2, False), ("v1_0", 2, 2, True), ("v1_1", 3, 1, True)]


@pytest.fixture(scope="module")
def imported(tmp_path_factory, spm_path):
  """case -> (hf_model, hf_dir, model_dir, run_gin), each case imported once, on first use."""
  cache = {}

  def get(case):
    if case not in cache:
      version, enc, dec, scan = case
      root = tmp_path_factory.mktemp(f"{version}_{enc}_{dec}_{scan}")
      model = random_hf_model(version, enc, dec)
      hf_dir = write_hf_dir(model, version, root / "hf", spm_path)
      run_gin = recipe_run_gin(root / "run.gin", scan)
      import_hf.import_hf(str(hf_dir), str(root / "run"), str(run_gin), log=quiet)
      cache[case] = (model, hf_dir, root / "run", run_gin)
    return cache[case]

  return get


CASE_IDS = lambda c: f"{c[0]}-el{c[1]}-dl{c[2]}-scan{c[3]}"  # noqa: E731


@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_import_export_round_trip(case, imported, tmp_path):
  model, hf_dir, model_dir, _ = imported(case)
  version = case[0]
  export_hf.export(str(model_dir), str(tmp_path / "out"), log=quiet)

  # Bit-identical tensors, and the same set of them (HF's tied aliases aside).
  source = load_file(str(hf_dir / "model.safetensors"))
  source = {k: v for k, v in source.items() if not k.endswith("embed_tokens.weight")}
  exported = load_file(str(tmp_path / "out" / "model.safetensors"))
  assert sorted(exported) == sorted(source)
  for key, value in source.items():
    assert exported[key].dtype == np.float32 and np.array_equal(exported[key], value), key
  assert ("lm_head.weight" in exported) == (version == "v1_1")

  loaded, info = transformers.T5ForConditionalGeneration.from_pretrained(
    tmp_path / "out", output_loading_info=True
  )
  assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"]
  rng = np.random.RandomState(0)
  inputs = rng.randint(2, 160, size=(2, 7))
  inputs[1, 4:] = 0
  decoder_inputs = rng.randint(2, 160, size=(2, 5))
  np.testing.assert_array_equal(
    hf_logits(loaded.eval(), inputs, decoder_inputs), hf_logits(model, inputs, decoder_inputs)
  )
  generation = json.loads((tmp_path / "out" / "generation_config.json").read_text())
  assert generation == {"decoder_start_token_id": 0, "eos_token_id": 1, "pad_token_id": 0}
  # The tokenizer imported with the model travels on to the export.
  assert (tmp_path / "out" / "spiece.model").read_bytes() == (hf_dir / "spiece.model").read_bytes()


@pytest.mark.parametrize("case", [CASES[0], CASES[3]], ids=CASE_IDS)
def test_imported_run_restores_with_its_model_gin(case, imported):
  """model.gin + the run gin rebuild exactly the trainer state the import wrote."""
  import gin

  from t5x_lite import checkpoints, partitioning
  from t5x_lite.models import EncoderDecoderModel
  from t5x_lite.trainer import Trainer

  model, _, model_dir, run_gin = imported(case)
  text = (model_dir / "model.gin").read_text()
  assert f"model_config.num_encoder_layers = {case[1]}" in text
  assert f"model_config.num_decoder_layers = {case[2]}" in text
  gin.clear_config()
  try:
    gin_utils.parse_gin([str(model_dir / "model.gin"), str(run_gin)], [], finalize=False)
    cfg = config.model_config()
    trainer = Trainer(
      EncoderDecoderModel(cfg),
      partitioning.make_mesh(2),
      partitioning.logical_axis_rules(),
      {"inputs": 8, "targets": 4},
    )
  finally:
    gin.clear_config()
  ckpt = checkpoints.Checkpointer(str(model_dir))
  step, state, meta = ckpt.restore(trainer.abstract_state())
  ckpt.close()
  assert step == 0 and int(state.step) == 0 and meta["batches_consumed"] == 0
  assert config.T5Config(**meta["model_config"]) == cfg
  embedding = np.asarray(state.params["token_embedder"]["embedding"])
  np.testing.assert_array_equal(embedding, model.shared.weight.detach().numpy())
  assert (
    state.params["token_embedder"]["embedding"].sharding
    == trainer.state_shardings.params["token_embedder"]["embedding"]
  )


def test_tokenizer_export(imported, tmp_path, spm_path):
  _, _, model_dir, _ = imported(CASES[0])
  out = tmp_path / "out"
  export_hf.export(str(model_dir), str(out), dtype="bfloat16", vocab=str(spm_path), log=quiet)
  tok = transformers.AutoTokenizer.from_pretrained(out)
  assert tok.convert_tokens_to_ids("<extra_id_0>") == SPM_PIECES + 99
  assert tok.convert_tokens_to_ids("<extra_id_99>") == SPM_PIECES
  fast = transformers.T5TokenizerFast.from_pretrained(out)
  import sentencepiece as spm

  sp = spm.SentencePieceProcessor(model_file=str(spm_path))
  text = "the quick brown fox <extra_id_0> over the lazy dog"
  expected = (
    sp.encode("the quick brown fox") + [SPM_PIECES + 99] + sp.encode("over the lazy dog") + [1]
  )
  assert tok(text).input_ids == expected == fast(text).input_ids
  loaded = transformers.T5ForConditionalGeneration.from_pretrained(out)
  assert loaded.dtype == torch.bfloat16
  hf_config = json.loads((out / "config.json").read_text())
  assert hf_config["feed_forward_proj"] == "relu" and hf_config["num_decoder_layers"] == 3


def test_export_refusals_change_nothing(imported, tmp_path, spm_path):
  _, _, model_dir, _ = imported(CASES[0])
  with pytest.raises(UserError, match="no checkpoints"):
    export_hf.main([f"--model_dir={tmp_path / 'empty'}", f"--output_dir={tmp_path / 'o'}"])
  out = tmp_path / "busy"
  out.mkdir()
  (out / "keep.txt").write_text("mine")
  with pytest.raises(UserError, match="not empty.*--overwrite"):
    export_hf.main([f"--model_dir={model_dir}", f"--output_dir={out}"])
  assert os.listdir(out) == ["keep.txt"]
  with pytest.raises(UserError, match="--license must be a license identifier"):
    export_hf.main(
      [f"--model_dir={model_dir}", f"--output_dir={tmp_path / 'o'}", "--license=Apache License 2.0"]
    )
  with pytest.raises(UserError, match="no checkpoint for step 7"):
    export_hf.main([f"--model_dir={model_dir}", f"--output_dir={tmp_path / 'o'}", "--step=7"])
  big = train_sentencepiece(tmp_path / "big.model", pieces=100)  # 100 + 100 ids > 160
  with pytest.raises(UserError, match="more than the model's vocab_size 160"):
    export_hf.main([f"--model_dir={model_dir}", f"--output_dir={tmp_path / 'o'}", f"--vocab={big}"])
  assert not (tmp_path / "o").exists()
  # A half-written export never appears: a failure mid-write leaves no output and no temp dir.
  import safetensors.numpy

  def broken(*args, **kwargs):
    raise OSError("disk full")

  real = safetensors.numpy.save_file
  safetensors.numpy.save_file = broken
  try:
    with pytest.raises(OSError):
      export_hf.export(str(model_dir), str(tmp_path / "half"), log=quiet)
  finally:
    safetensors.numpy.save_file = real
  assert not [p for p in os.listdir(tmp_path) if "half" in p]
  # --overwrite replaces the directory as a whole.
  export_hf.main([f"--model_dir={model_dir}", f"--output_dir={out}", "--overwrite"])
  assert sorted(os.listdir(out)) == sorted(
    [
      "README.md",
      "config.json",
      "generation_config.json",
      "model.safetensors",
      "spiece.model",
      "special_tokens_map.json",
      "tokenizer.json",
      "tokenizer_config.json",
    ]
  )
  # World-readable, as the Hub and shared file systems expect.
  assert {oct(os.stat(out / f).st_mode & 0o777) for f in os.listdir(out)} == {oct(0o644)}
  assert oct(os.stat(out).st_mode & 0o777) == oct(0o755)


def test_config_checks():
  cfg = config.resolve_model_name("t5-efficient-tiny")
  assert hf_files.hf_incompatibility(cfg) is None
  assert hf_files.hf_incompatibility(config.resolve_model_name("t5-v1_1-small-el3")) is None
  import dataclasses

  saved = dict(dataclasses.asdict(cfg), position_embedding="rotary")
  with pytest.raises(UserError, match="position_embedding"):
    hf_files.config_from_meta({"model_config": saved}, "ckpt/5")
  hf = dict(model_type="t5", **HF_DIMS)
  for bad, match in (
    ({"feed_forward_proj": "gated-silu"}, "feed_forward_proj"),
    ({"relative_attention_num_buckets": 8}, "relative_attention_num_buckets"),
    ({"model_type": "bart"}, "not a T5"),
    ({"decoder_start_token_id": 2}, "decoder_start_token_id"),
  ):
    with pytest.raises(UserError, match=match):
      import_hf.dims_from_hf_config({**hf, **bad}, "config.json")
  dims = import_hf.dims_from_hf_config({**hf, "num_layers": 3, "num_decoder_layers": 5}, "c")
  name = import_hf.model_name_for(dims)
  resolved = config.resolve_model_name(name)
  assert name == "t5-efficient-tiny-dm32-ff64-kv8-el3-dl5"
  assert all(getattr(resolved, k) == dims[k] for k in import_hf.GIN_DIMS if k != "vocab_size")
  assert import_hf.model_name_for(dict(dims, num_decoder_layers=3)).endswith("-nl3")


def test_import_refusals(imported, tmp_path, spm_path):
  model, hf_dir, model_dir, run_gin = imported(CASES[0])
  before = sorted(os.listdir(model_dir))
  with pytest.raises(UserError, match="not empty"):
    import_hf.main([f"--hf_dir={hf_dir}", f"--model_dir={model_dir}", f"--run_gin_file={run_gin}"])
  assert sorted(os.listdir(model_dir)) == before
  wrong = tmp_path / "tiny.gin"
  wrong.write_text("model_config.name = 't5-efficient-tiny'\nmodel_config.vocab_size = 160\n")
  with pytest.raises(UserError, match="d_model=256 but the HF model has 32"):
    import_hf.main(
      [
        f"--hf_dir={hf_dir}",
        f"--model_dir={tmp_path / 'new'}",
        f"--run_gin_file={run_gin}",
        f"--gin_file={wrong}",
      ]
    )
  assert not (tmp_path / "new").exists()
  # pytorch_model.bin is a pickle: only with --allow_pickle.
  pickled = tmp_path / "pickled"
  pickled.mkdir()
  (pickled / "config.json").write_text((hf_dir / "config.json").read_text())
  torch.save(model.state_dict(), pickled / "pytorch_model.bin")
  with pytest.raises(UserError, match="--allow_pickle"):
    import_hf.main(
      [f"--hf_dir={pickled}", f"--model_dir={tmp_path / 'p'}", f"--run_gin_file={run_gin}"]
    )
  import_hf.import_hf(str(pickled), str(tmp_path / "p"), str(run_gin), allow_pickle=True, log=quiet)
  a = hf_files.restore_params(str(tmp_path / "p")).params
  b = hf_files.restore_params(str(model_dir)).params
  import jax

  assert jax.tree.all(jax.tree.map(lambda x, y: bool(np.array_equal(x, y)), a, b))


def _cli(module: str, *args: str) -> subprocess.CompletedProcess:
  env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS="")
  return subprocess.run(
    [sys.executable, "-m", module, *args],
    capture_output=True,
    text=True,
    cwd=REPO,
    env=env,
    timeout=120,
  )


def test_cli(imported, tmp_path):
  _, hf_dir, model_dir, run_gin = imported(CASES[1])
  done = _cli("t5x_lite.export_hf", f"--model_dir={model_dir}", f"--output_dir={tmp_path / 'o'}")
  assert done.returncode == 0, done.stderr
  assert "exported step 0" in done.stdout
  assert os.path.isfile(tmp_path / "o" / "model.safetensors")
  failed = _cli(
    "t5x_lite.import_hf",
    f"--hf_dir={tmp_path / 'nothing'}",
    f"--model_dir={tmp_path / 'x'}",
    f"--run_gin_file={run_gin}",
  )
  assert failed.returncode == 2
  errors = [l for l in failed.stderr.splitlines() if l.startswith("error:")]
  assert errors == [f"error: no config.json in {tmp_path / 'nothing'}"]
  assert "Traceback" not in failed.stderr


def test_urls_go_through_gfile(imported, tmp_path, spm_path):
  """export, import and infer take gs:// paths through tf.io.gfile; file:// URLs run that same
  code path without a bucket."""
  from t5x_lite import infer

  _, _, model_dir, run_gin = imported(CASES[0])
  url = lambda p: f"file://{p}"  # noqa: E731
  done = export_hf.export(
    url(model_dir), url(tmp_path / "exported"), vocab=url(spm_path), log=quiet
  )
  assert done["output_dir"] == url(tmp_path / "exported") and done["tokenizer"]
  assert {"README.md", "tokenizer.json", "model.safetensors"} <= set(
    os.listdir(tmp_path / "exported")
  )
  assert {os.stat(p).st_mode & 0o777 for p in (tmp_path / "exported").iterdir()} == {0o644}
  with pytest.raises(UserError, match="not empty"):
    export_hf.export(url(model_dir), url(tmp_path / "exported"), log=quiet)

  import_hf.import_hf(url(tmp_path / "exported"), url(tmp_path / "again"), str(run_gin), log=quiet)
  a = hf_files.restore_params(url(model_dir)).params
  b = hf_files.restore_params(url(tmp_path / "again")).params
  assert all(np.array_equal(x, y) for x, y in zip(jax_leaves(a), jax_leaves(b)))

  decoder = infer.Decoder(url(tmp_path / "again"))
  vocab = infer.load_vocabulary(url(tmp_path / "again"), None, decoder.meta)
  assert vocab.vocab_size == SPM_PIECES + 100
  inputs = [list(vocab.encode("the quick <extra_id_0> fox")) + [1]]
  assert len(decoder.generate(inputs, 4)[0]) <= 4


def jax_leaves(tree):
  import jax

  return [np.asarray(x) for x in jax.tree_util.tree_leaves(tree)]


def test_model_card_reports_the_run():
  from t5x_lite import model_card

  cfg = config.resolve_model_name("t5-efficient-tiny-nl2")
  metrics = "\n".join(
    json.dumps(r)
    for r in [
      {"step": 0, "eval_loss": 9.0, "eval_accuracy": 0.0},
      {"step": 10, "loss": 5.0},
      {"step": 20, "eval_loss": 4.25, "eval_accuracy": 0.31},
      {"step": 30, "eval_loss": 4.0, "eval_accuracy": 0.33},
    ]
  )
  meta = {
    "mixture_or_task_name": "c4_span_corruption",
    "gin_config": "BATCH_SIZE = 128\n",
    "task_feature_lengths": {"inputs": 512, "targets": 114},
  }
  card = model_card.model_card(cfg, 1234567, 20, meta, metrics, "float32", "mit", True)
  assert card.startswith("---\nlicense: mit\n")
  assert (
    "# t5-efficient-tiny-nl2" in card
    and "| 256 | 1024 | 4 | 64 | 2 / 2 | 32128 | 1,234,567 |" in card
  )
  assert "steps: 20" in card and f"{20 * 128 * 626:,} token positions" in card
  assert "C4 (English)" in card
  assert "step 20): cross-entropy 4.2500, token accuracy 0.3100" in card  # not step 30's
  assert 'AutoTokenizer.from_pretrained("PATH_OR_REPO_ID")' in card
  unknown = model_card.model_card(cfg, 1, 5, {}, None, "float32", "apache-2.0", False)
  assert "evaluation: none recorded" in unknown and "No tokenizer" in unknown
