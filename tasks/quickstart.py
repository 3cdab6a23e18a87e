"""The offline smoke-test task: span corruption over the quickstart corpus with its own vocab.

The corpus and its 4000-piece vocabulary are built on first use (about half a minute) into
`quickstart_corpus.cache_dir` (default `$T5X_LITE_CACHE/quickstart`). It is not C4.
"""

import gin

from t5x_lite import progress
from t5x_lite.data import quickstart_corpus, registry, sources
from t5x_lite.data.span_corruption import span_corruption_task
from t5x_lite.data.vocab import scoped_vocabulary


@gin.configurable("quickstart_corpus")
def quickstart_cache_dir(cache_dir: str | None = None) -> str:
  return str(cache_dir or quickstart_corpus.default_cache_dir())


def _build_assets():
  quickstart_corpus.ensure_quickstart_assets(quickstart_cache_dir(), log=progress.log_to_stderr)


@registry.task_builder("quickstart_span_corruption", prepare=_build_assets)
def quickstart_span_corruption():
  cache_dir = quickstart_cache_dir()
  source = sources.CorpusFiles(
    quickstart_corpus.corpus_patterns(cache_dir), "text", "quickstart_corpus.cache_dir"
  )
  vocab = scoped_vocabulary("quickstart", quickstart_corpus.vocab_path(cache_dir))
  return span_corruption_task("quickstart_span_corruption", source, vocab)
