"""Span corruption over your own corpora: plain text (a document per line) or JSON lines.

Both default to the C4 vocabulary; train your own with `python -m t5x_lite.train_vocab` and bind
`text/task_vocabulary.path` (or `jsonl/...`, or unscoped `task_vocabulary.path`).
"""

from t5x_lite.data import registry, sources
from t5x_lite.data.span_corruption import span_corruption_task
from t5x_lite.data.vocab import C4_VOCAB_PATH, scoped_vocabulary


@registry.task_builder("text_span_corruption")
def text_span_corruption():
  return span_corruption_task(
    "text_span_corruption", sources.text_source(), scoped_vocabulary("text", C4_VOCAB_PATH)
  )


@registry.task_builder("jsonl_span_corruption")
def jsonl_span_corruption():
  return span_corruption_task(
    "jsonl_span_corruption", sources.jsonl_source(), scoped_vocabulary("jsonl", C4_VOCAB_PATH)
  )
