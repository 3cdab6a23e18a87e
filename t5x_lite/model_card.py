"""The model card (`README.md`) of a Hugging Face export: what the model is, how it was trained,
how well it did, and how to load it. Everything comes from the checkpoint's meta and the run's
metrics.jsonl; what a run did not record is said to be unknown rather than guessed.
"""

import json
import re

from t5x_lite.config import T5Config

# What the data of each built-in task is, for readers who do not know the task names.
_TASK_DATA = {
  "c4_span_corruption": "C4 (English), from TFDS `c4/en`",
  "c4_json_span_corruption": "C4 (English), from the raw JSON shards",
  "quickstart_span_corruption": "the offline quickstart corpus (Python documentation): a smoke "
  "test, not a pretraining corpus",
  "text_span_corruption": "local text files",
  "jsonl_span_corruption": "local JSON-lines files",
}


def batch_size_of(gin_config: str) -> int | None:
  """The global batch size in an operative gin config (the BATCH_SIZE macro or the binding)."""
  for pattern in (r"^BATCH_SIZE = (\d+)\s*$", r"^train\.batch_size = (\d+)\s*$"):
    m = re.search(pattern, gin_config or "", re.MULTILINE)
    if m:
      return int(m.group(1))
  return None


def last_eval(metrics_jsonl: str | None, step: int) -> dict | None:
  """The last evaluation at or before `step` in a run's metrics.jsonl text."""
  found = None
  for line in (metrics_jsonl or "").splitlines():
    try:
      record = json.loads(line)
    except ValueError:
      continue
    if "eval_loss" in record and record.get("step", 0) <= step:
      if found is None or record["step"] >= found["step"]:
        found = record
  return found


def model_card(
  cfg: T5Config,
  num_params: int,
  step: int,
  meta: dict,
  metrics_jsonl: str | None,
  dtype: str,
  license_id: str,
  has_tokenizer: bool,
) -> str:
  lines = [
    *_front_matter(license_id),
    *_model_section(cfg, num_params, step, dtype),
    *_training_section(step, meta, metrics_jsonl),
    *_loading_section(has_tokenizer),
  ]
  return "\n".join(lines)


def _front_matter(license_id: str) -> list[str]:
  """The Hub's metadata block."""
  return [
    "---",
    f"license: {license_id}",
    "library_name: transformers",
    "pipeline_tag: text2text-generation",
    "tags:",
    "- t5",
    "- t5x_lite",
    "- span-corruption",
    "---",
    "",
  ]


def _model_section(cfg: T5Config, num_params: int, step: int, dtype: str) -> list[str]:
  """The title, what the model is and its dimensions."""
  version = (
    "T5 v1.1 (gated-gelu, untied lm_head)"
    if cfg.feed_forward_proj == "gated-gelu"
    else "T5 v1.0 / T5-Efficient (relu, tied and rescaled output embedding)"
  )
  return [
    f"# {cfg.name}",
    "",
    f"A {version} encoder-decoder, pretrained with span corruption by t5x_lite (JAX/Flax) and "
    f"exported from step {step} in {dtype}.",
    "",
    "| d_model | d_ff | heads | d_kv | encoder / decoder layers | vocabulary | parameters |",
    "|---|---|---|---|---|---|---|",
    f"| {cfg.d_model} | {cfg.d_ff} | {cfg.num_heads} | {cfg.d_kv} | "
    f"{cfg.num_encoder_layers} / {cfg.num_decoder_layers} | {cfg.vocab_size} | {num_params:,} |",
    "",
  ]


def _training_section(step: int, meta: dict, metrics_jsonl: str | None) -> list[str]:
  task = meta.get("mixture_or_task_name")
  lengths = meta.get("task_feature_lengths") or {}
  batch = batch_size_of(meta.get("gin_config", ""))
  lines = ["## Training", ""]
  if meta.get("imported_from"):
    lines.append(f"- imported from `{meta['imported_from']}` (Hugging Face); no training since")
  lines.append(f"- steps: {step:,}")
  if batch and lengths.get("inputs") and lengths.get("targets"):
    per_step = batch * (int(lengths["inputs"]) + int(lengths["targets"]))
    lines.append(
      f"- batch size {batch}, inputs {lengths['inputs']} / targets {lengths['targets']} "
      f"tokens: {step * batch:,} examples, {step * per_step:,} token positions seen "
      "(inputs + targets, padding included)"
    )
  if task:
    lines.append(f"- data: {_TASK_DATA.get(task, f'task `{task}`')} (seqio task `{task}`)")
  found = last_eval(metrics_jsonl, step)
  if found:
    lines.append(
      f"- final evaluation (step {found['step']:,}): cross-entropy "
      f"{found['eval_loss']:.4f}, token accuracy {found['eval_accuracy']:.4f} on the "
      "validation split"
    )
  else:
    lines.append("- evaluation: none recorded for this checkpoint")
  return lines + [""]


def _loading_section(has_tokenizer: bool) -> list[str]:
  """A transformers snippet, with the tokenizer when one was exported."""
  lines = [
    "## How to load",
    "",
    "```python",
    "from transformers import AutoTokenizer, T5ForConditionalGeneration",
    'model = T5ForConditionalGeneration.from_pretrained("PATH_OR_REPO_ID")',
  ]
  if not has_tokenizer:
    return lines + [
      "```",
      "",
      "No tokenizer was exported with this model; use the vocabulary it was trained with.",
      "",
    ]
  return lines + [
    'tokenizer = AutoTokenizer.from_pretrained("PATH_OR_REPO_ID")',
    'inputs = tokenizer("The <extra_id_0> walks in <extra_id_1> park", return_tensors="pt")',
    "print(tokenizer.decode(model.generate(**inputs, max_new_tokens=20)[0]))",
    "```",
    "",
    "`tokenizer.json` is the SentencePiece vocabulary with 100 sentinels `<extra_id_0>` "
    "... `<extra_id_99>` (ids from the top down), so `pip install transformers torch` "
    "is enough; `spiece.model` is included for the slow tokenizer.",
    "",
  ]
