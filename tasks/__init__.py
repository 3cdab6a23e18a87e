"""seqio tasks of t5x_lite; importing this package registers them all.

Span corruption (T5's objective) over:
  c4_span_corruption          TFDS c4/en (gin: c4_tfds.data_dir, c4_tfds.version)
  c4_json_span_corruption     raw c4-{train,validation}.*-of-*.json.gz shards (gin: c4_json.data_dir)
  text_span_corruption        plain text, one document per line (gin: text_corpus.*)
  jsonl_span_corruption       JSON lines (gin: jsonl_corpus.*)
  quickstart_span_corruption  the offline smoke-test corpus, built on first use (not C4)
and seq2seq_files: fine-tuning examples from local TSV / JSON-lines files (gin: FINETUNE_*).
Locations and vocabularies are read from gin when a dataset is built (see t5x_lite.data.registry).
"""

from t5x_lite.tasks import c4, local_corpora, quickstart, seq2seq_files  # noqa: F401  (registration side effects)
