"""What the training streams skipped or repaired in the data, and when that stops a run.

Every record a stream reads is counted (per logical shard, cumulatively, saved with its position):
  records       lines or records read
  blank         blank lines (separators, not documents; never reported)
  malformed     lines that are not what the source expects: a JSON line without a closed string
                in its text field (truncated, or the field missing), a TSV line without exactly
                two columns
  empty         documents, or one side of a seq2seq example, empty after stripping whitespace
  invalid_utf8  documents with invalid UTF-8 bytes, kept with U+FFFD in their place
  binary        records with NUL bytes (no text holds one), skipped
Malformed, empty and binary records are skipped. The run stops when the split has skipped more
than `data_quality.max_skipped_fraction` of its non-blank records (after the first
`data_quality.allowed_skipped`, so one broken last line of a small file is reported, not fatal),
counted over the whole split: all logical shards of all processes, the allowance once (one
process checks each batch in its pipeline, several check the gathered counts at each log point);
and at once when a group of records is mostly binary: that file is not text.
"""

import gin

COUNTERS = ("records", "blank", "malformed", "empty", "invalid_utf8", "binary")
SKIPPED = ("malformed", "empty", "binary")
# Errors raised inside the tf.data graph carry this tag; the host turns the text after it into a
# one-line UserError (streams.py).
ERROR_TAG = "t5x_lite data error: "


@gin.configurable("data_quality")
def data_quality_config(max_skipped_fraction: float = 0.01, allowed_skipped: int = 10):
  """The share of non-blank records a stream may skip, beyond `allowed_skipped` of them."""
  return float(max_skipped_fraction), int(allowed_skipped)


def skipped(counts: dict) -> int:
  return sum(int(counts.get(name, 0)) for name in SKIPPED)


def too_many_skipped(counts: dict) -> bool:
  """Whether a whole split's counts skip more than `data_quality` allows (the graph's check,
  streams.py, computes the same)."""
  fraction, free = data_quality_config()
  return skipped(counts) > free + int(fraction * (counts["records"] - counts["blank"]))


def too_many_skipped_message(counts: dict, where: str, format_hint: str) -> str:
  fraction, _ = data_quality_config()
  return (
    f"{where}: {skipped(counts)} of the {counts['records'] - counts['blank']} records read so far "
    f"were skipped ({counts['malformed']} malformed, {counts['empty']} empty, "
    f"{counts['binary']} binary), more than data_quality.max_skipped_fraction={fraction}: "
    f"{format_hint}; repair or remove the bad records, or raise the setting"
  )


def totals(per_shard: list[dict]) -> dict:
  """The counters of several shards added up."""
  return {name: sum(int(c.get(name, 0)) for c in per_shard) for name in COUNTERS}


def any_reported(counts: dict) -> bool:
  return any(counts.get(name, 0) for name in SKIPPED + ("invalid_utf8",))


def describe(counts: dict) -> str:
  """One line: how many records were read, what was skipped and repaired."""
  documents = counts["records"] - counts["blank"]
  skipped = [
    f"{counts[name]:,} {label}"
    for name, label in (
      ("malformed", "malformed lines"),
      ("empty", "empty documents"),
      ("binary", "binary records"),
    )
    if counts[name]
  ]
  line = f"{documents:,} records read; skipped: {', '.join(skipped) or 'none'}"
  if counts["invalid_utf8"]:
    line += f"; repaired: {counts['invalid_utf8']:,} with invalid UTF-8 (replaced by U+FFFD)"
  return line
