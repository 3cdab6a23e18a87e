"""train.memory_fit: the cheapest remat policy / microbatch count that fits an injected device limit."""

import os
import re

import conftest
from conftest import ONE_DATA_SHARD
import jax
import pytest
from test_trainer_sharding import LENGTHS, tiny_config

from t5x_lite import memory_fit, partitioning
from t5x_lite.errors import UserError
from t5x_lite.models import EncoderDecoderModel
import t5x_lite.tasks  # noqa: F401
from t5x_lite.trainer import Trainer

BATCH = 32  # 4 examples per data shard on 8 CPU devices: 1, 2 or 4 microbatches


def test_candidates_are_ordered_by_recomputation_then_microbatches():
  assert memory_fit.candidates("none", 1, 4)[:4] == [
    ("none", 1),
    ("none", 2),
    ("none", 4),
    ("save_dots", 1),
  ]
  assert memory_fit.candidates("minimal", 2, 6) == [
    (p, 2) for p in ("minimal", "save_attention_out", "full")
  ]
  assert memory_fit.candidates("full", 1, 1) == [("full", 1)]


@pytest.fixture(scope="module")
def totals():
  """Real compiled footprints of a tiny model on 8 CPU devices."""
  return measured_totals([("none", 1), ("none", 2), ("full", 1)])


def measured_totals(candidate_list):
  mesh = partitioning.make_mesh(1, devices=jax.devices()[:8])
  trainer = Trainer(EncoderDecoderModel(tiny_config()), mesh, partitioning.DEFAULT_RULES, LENGTHS)
  return {
    c: memory_fit.measure(memory_fit.rebuild(trainer, *c), BATCH).total for c in candidate_list
  }


def test_choose_takes_the_first_candidate_that_fits(totals):
  candidate_list = list(totals)
  assert totals[("none", 2)] < totals[("none", 1)]
  assert totals[("full", 1)] < totals[("none", 1)]
  measured = []

  def measure_one(*candidate, state=1000):
    measured.append(candidate)
    return memory_fit.Footprint(params=state, opt_state=0, batch=0, temp=0, total=totals[candidate])

  limit = totals[("none", 1)] - 1
  (choice, found) = memory_fit.choose(candidate_list, measure_one, limit)
  assert choice == next(c for c in candidate_list if totals[c] <= limit)
  assert found.total == totals[choice] <= limit
  measured.clear()
  assert memory_fit.choose(candidate_list, measure_one, 10_000) is None
  assert measured == candidate_list
  # The compiler's refusal (no total) is no fit either.
  refused = lambda *c: memory_fit.Footprint(params=1, opt_state=0, batch=0, temp=None, total=None)
  assert memory_fit.choose(candidate_list, refused, 10**12) is None


def test_choose_stops_once_state_and_gradients_exceed_the_limit():
  measured = []

  def measure_one(*candidate):
    measured.append(candidate)
    # 2 x 600 (parameters and their gradients) + 100 optimizer state > 1000.
    return memory_fit.Footprint(params=600, opt_state=100, batch=0, temp=None, total=None)

  assert memory_fit.choose(memory_fit.candidates("none", 1, 4), measure_one, 1000) is None
  assert measured == [("none", 1)]


TINY = [
  "model_config.name = 't5-efficient-tiny-dm64-ff256-nh4-kv16-nl2'",
  "model_config.vocab_size = 256",
  "MIXTURE_OR_TASK_NAME = 'text_span_corruption'",
  "TASK_FEATURE_LENGTHS = {'inputs': 32, 'targets': 16}",
  f"BATCH_SIZE = {BATCH}",
  "TRAIN_STEPS = 1",
  "CHECKPOINT_PERIOD = 1",
  "EVAL_PERIOD = 1",
  "train.eval_steps = 1",
  "train.log_period = 1",
  # One logical data shard, not the default 32 (the tiny corpus has 20 validation documents, and
  # the memory a step needs does not depend on how the data is split).
  ONE_DATA_SHARD,
]


@pytest.fixture(scope="module")
def corpus(tiny_corpus):
  return tiny_corpus.bindings()


def train_with(corpus, model_dir, extra):
  return conftest.train_in_process(
    ["runs/quickstart.gin"], [*TINY, *corpus, f"MODEL_DIR = '{model_dir}'", *extra]
  )


def test_auto_switches_to_what_fits_and_records_it(corpus, tmp_path, capsys, totals):
  # The configured step ('none', 1 microbatch) needs more than the injected limit; 'none' with
  # 2 microbatches (no extra FLOPs) fits: auto must pick exactly that.
  limit = totals[("none", 2)]
  assert limit < totals[("none", 1)]
  result = train_with(
    corpus,
    tmp_path,
    [
      "model_config.remat_policy = 'none'",
      f"memory_fit.device_memory_limit.override_bytes = {limit}",
    ],
  )
  assert result["step"] == 1 and result["loss"] > 0
  out = capsys.readouterr().out
  line = next(l for l in out.splitlines() if "memory_fit:" in l)
  assert "remat_policy=none, num_microbatches=2" in line.split("training with")[1]
  config_gin = open(os.path.join(tmp_path, "config.gin")).read()
  assert "memory_fit_choice.num_microbatches = 2" in config_gin
  assert "memory_fit_choice.remat_policy = 'none'" in config_gin


def test_off_fails_with_the_bytes_needed(corpus, tmp_path):
  with pytest.raises(UserError) as e:
    train_with(
      corpus,
      tmp_path,
      ["train.memory_fit = 'off'", "memory_fit.device_memory_limit.override_bytes = 1000"],
    )
  # The CLI prints the first line (gin appends the configurable's name below it).
  assert re.search(
    r"needs \d+\.\d+ GiB per device but the limit is 0\.00 GiB.*plan --sweep",
    str(e.value).splitlines()[0],
  )
  with pytest.raises(UserError, match="memory_fit must be one of"):
    train_with(
      corpus,
      tmp_path,
      ["train.memory_fit = 'sometimes'", "memory_fit.device_memory_limit.override_bytes = 1000"],
    )


def test_lean_remat_keeps_loss_and_gradients():
  """The recipe's remat policy recomputes, it does not approximate (scanned, as the recipe runs)."""
  import numpy as np
  from test_trainer_sharding import random_batches

  batch = random_batches(1, 4)[0]
  results = []
  for policy in ("none", "lean"):
    model = EncoderDecoderModel(tiny_config(remat_policy=policy))
    params = model.init_params(jax.random.key(0), LENGTHS["inputs"], LENGTHS["targets"])
    results.append(
      jax.jit(jax.value_and_grad(lambda p, model=model: model.loss_fn(p, batch)[0]))(params)
    )
  np.testing.assert_allclose(results[1][0], results[0][0], rtol=1e-6)
  jax.tree.map(
    lambda a, b: np.testing.assert_allclose(a, b, atol=1e-5), results[1][1], results[0][1]
  )


def test_measure_answers_a_state_over_the_limit_without_compiling(monkeypatch):
  mesh = partitioning.make_mesh(1, devices=jax.devices()[:8])
  trainer = Trainer(EncoderDecoderModel(tiny_config()), mesh, partitioning.DEFAULT_RULES, LENGTHS)

  def no_compile(*args, **kwargs):
    raise AssertionError("compiled although the state alone exceeds the limit")

  monkeypatch.setattr(memory_fit, "compile_train_step", no_compile)
  found = memory_fit.measure(trainer, BATCH, limit_bytes=1)
  assert found.total is None and found.temp is None and found.state_exceeds(1)
  assert found.params > 0 and found.batch > 0
