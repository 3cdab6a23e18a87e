"""C4 (English) span corruption with the official T5 vocabulary, from TFDS or raw JSON shards."""

from t5x_lite.data import registry, sources
from t5x_lite.data.span_corruption import span_corruption_task
from t5x_lite.data.vocab import C4_VOCAB_PATH, scoped_vocabulary


@registry.task_builder("c4_span_corruption", prepare=sources.check_c4_tfds)
def c4_span_corruption():
  return span_corruption_task(
    "c4_span_corruption", sources.c4_tfds_source(), scoped_vocabulary("c4", C4_VOCAB_PATH)
  )


@registry.task_builder("c4_json_span_corruption")
def c4_json_span_corruption():
  return span_corruption_task(
    "c4_json_span_corruption", sources.c4_json_source(), scoped_vocabulary("c4", C4_VOCAB_PATH)
  )
