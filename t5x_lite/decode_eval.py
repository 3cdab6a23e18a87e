"""Evaluation by decoding: greedy predictions over the eval split, exact match, predictions files.

gin: `decode_eval.enabled` (runs/finetune.gin turns it on), `decode_eval.max_examples` (None: the
whole eval split), `decode_eval.batch_size` (examples per decoding batch).

At every evaluation of the training loop the eval split's inputs are decoded greedily with the
key/value cache by the same code as `python -m t5x_lite.infer` (models.greedy_generate), for up to
TASK_FEATURE_LENGTHS['targets'] tokens. `eval_exact_match` is the fraction of examples whose
decoded prediction equals the decoded target; MODEL_DIR/predictions/<step>.jsonl holds
{"input", "target", "prediction"} per example. The teacher-forced token accuracy is the loop's
`eval_accuracy`.
"""

import dataclasses
import json
import os
import time

import gin
import jax

from t5x_lite import files, models, storage_faults
from t5x_lite.data import batches
from t5x_lite.errors import UserError
from t5x_lite.tokens import EOS_ID


@gin.configurable("decode_eval")
def decode_eval_config(
  enabled: bool = False, max_examples: int | None = None, batch_size: int = 64
) -> dict:
  return {"enabled": enabled, "max_examples": max_examples, "batch_size": batch_size}


class DecodeEval:
  """Called with the params at each evaluation; returns the metrics to log ({} when disabled)."""

  def __init__(
    self, model_dir: str, cfg, mixture_or_task_name: str, task_feature_lengths: dict, console=print
  ):
    settings = decode_eval_config()
    self.enabled = settings["enabled"]
    self._console = console
    if not self.enabled:
      return
    self._dir = os.path.join(model_dir, "predictions")
    self._batch_size = settings["batch_size"]
    self._lengths = {k: int(v) for k, v in task_feature_lengths.items()}
    self._cfg = dataclasses.replace(cfg, dropout_rate=0.0)
    self._decode = models.jitted_greedy_decode(self._cfg)
    if not batches.needs_tasks(mixture_or_task_name):
      raise UserError(
        "decode_eval decodes the validation split of a task, which synthetic and ready-made data "
        "do not keep as text; set --gin.decode_eval.enabled=False"
      )
    from t5x_lite.data import pipeline, registry  # seqio: the task's validation examples

    self._vocab = pipeline.get_vocabulary(mixture_or_task_name)
    provider = registry.refresh(mixture_or_task_name)
    ds = provider.get_dataset(
      sequence_length=self._lengths, split="validation", shuffle=False, num_epochs=1
    )
    if settings["max_examples"]:
      ds = ds.take(settings["max_examples"])
    self._examples = [
      (ex["inputs"].tolist(), ex["targets"].tolist()) for ex in ds.as_numpy_iterator()
    ]

  def __call__(self, params, step: int) -> dict:
    if not self.enabled or not self._examples:
      return {}
    started = time.time()
    inputs = [ids for ids, _ in self._examples]
    predictions = []
    for start in range(0, len(inputs), self._batch_size):
      chunk = inputs[start : start + self._batch_size]
      # The last batch is filled up to the same shape, so decoding compiles once.
      filler = [[EOS_ID]] * (self._batch_size - len(chunk))
      predictions += models.greedy_generate(
        self._decode,
        params,
        self._cfg.vocab_size,
        chunk + filler,
        self._lengths["targets"],
        input_length=self._lengths["inputs"],
      )[: len(chunk)]
    rows, matches = [], 0
    for (input_ids, target_ids), prediction_ids in zip(self._examples, predictions):
      target, prediction = self._vocab.decode(target_ids), self._vocab.decode(prediction_ids)
      matches += int(prediction == target)
      rows.append(
        {"input": self._vocab.decode(input_ids), "target": target, "prediction": prediction}
      )
    exact_match = matches / len(rows)
    self._write(step, rows)
    self._console(
      f"step {step:>7d} | eval exact match {exact_match:.4f} ({matches}/{len(rows)}; "
      f"decoded in {time.time() - started:.1f} s, predictions/{step}.jsonl)"
    )
    return {"eval_exact_match": exact_match}

  def _write(self, step: int, rows: list[dict]) -> None:
    if jax.process_index() != 0:
      return
    path = os.path.join(self._dir, f"{step}.jsonl")
    with storage_faults.writing("predictions", path):
      files.makedirs(self._dir)
      files.write_text(
        path + ".tmp", "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)
      )
      files.rename(path + ".tmp", path, overwrite=True)
