"""Pure-TF text decoding for corpora: UTF-8 repair and JSON string fields.

Everything here is graph TF (no py_function), so pipelines that use it stay checkpointable.
"""

import tensorflow as tf

REPLACEMENT_CHAR = 0xFFFD
_BACKSLASH = 92
# Placeholder for an escaped backslash while other escapes are decoded: a raw NUL cannot occur
# inside a valid JSON string, so it never collides with real text.
_PLACEHOLDER = "\x00"
# Placeholder for an escaped quote, so that every remaining quote delimits a string (raw control
# characters cannot occur in JSON strings either).
_QUOTE_PLACEHOLDER = "\x01"
_SIMPLE_ESCAPES = {'"': '"', "/": "/", "b": "\b", "f": "\f", "n": "\n", "r": "\r", "t": "\t"}


def repair_utf8(text):
  """Replaces every invalid UTF-8 sequence by U+FFFD (never fails)."""
  return tf.strings.unicode_transcode(
    text, "UTF-8", "UTF-8", errors="replace", replacement_char=REPLACEMENT_CHAR
  )


def count_invalid_utf8(text):
  """Number of invalid UTF-8 sequences in a scalar string (what `repair_utf8` replaces)."""
  cps = tf.strings.unicode_decode(
    text, "UTF-8", errors="replace", replacement_char=REPLACEMENT_CHAR
  )
  replaced = tf.reduce_sum(tf.cast(tf.equal(cps, REPLACEMENT_CHAR), tf.int32))
  # U+FFFD characters that were already in the text are not repairs.
  literal = tf.size(tf.strings.split(text, sep="\ufffd")) - 1
  return replaced - tf.cast(literal, tf.int32)


def _shift(x, k, fill=0):
  """x[i + k] at position i, `fill` past the end."""
  return tf.concat([x[k:], tf.fill([tf.minimum(k, tf.size(x))], tf.cast(fill, x.dtype))], axis=0)


def _hex_value(c):
  """Value of a hex-digit code point, -1 if it is not one."""
  return tf.where(
    (c >= 48) & (c <= 57),
    c - 48,
    tf.where((c >= 97) & (c <= 102), c - 87, tf.where((c >= 65) & (c <= 70), c - 55, -1)),
  )


def _unescape_codepoints(cps, row_ids):
  """Decodes JSON escapes in the flat code points of many strings at once.

  `row_ids` names each code point's string: an escape never reaches into the next string.
  Every backslash starts an escape (escaped backslashes and quotes were replaced by
  placeholders before). Returns (code points, keep): the decoded value at each escape's first
  position, and False on the positions the escape consumed.
  """
  n = tf.size(cps)

  def at(k):
    """cps[i + k] where it belongs to the same string as i, else -1."""
    return tf.where(tf.equal(_shift(row_ids, k, -1), row_ids), _shift(cps, k), -1)

  is_escape = tf.equal(cps, _BACKSLASH)
  nxt = at(1)
  value = cps
  length = tf.zeros_like(cps)  # Code points each escape consumes (0 where none starts).
  for esc, out in _SIMPLE_ESCAPES.items():
    hit = is_escape & tf.equal(nxt, ord(esc))
    value = tf.where(hit, ord(out), value)
    length = tf.where(hit, 2, length)

  def unicode_escape(k):
    """(is a \\u escape with four hex digits at i+k, its value)."""
    digits = [_hex_value(at(k + 2 + j)) for j in range(4)]
    valid = (
      tf.equal(at(k), _BACKSLASH)
      & tf.equal(at(k + 1), ord("u"))
      & tf.reduce_all(tf.stack([d >= 0 for d in digits]), axis=0)
    )
    val = digits[0] * 4096 + digits[1] * 256 + digits[2] * 16 + digits[3]
    return valid, val

  is_u, u_val = unicode_escape(0)
  is_u &= is_escape
  low_ok, low_val = unicode_escape(6)
  is_pair = (
    is_u
    & (u_val >= 0xD800)
    & (u_val <= 0xDBFF)
    & low_ok
    & (low_val >= 0xDC00)
    & (low_val <= 0xDFFF)
  )
  pair_val = 0x10000 + (u_val - 0xD800) * 1024 + (low_val - 0xDC00)
  value = tf.where(is_pair, pair_val, tf.where(is_u, u_val, value))
  length = tf.where(is_pair, 12, tf.where(is_u, 6, length))
  # Drop positions start+1 .. start+length-1 of every escape: a +1/-1 difference array.
  starts = tf.where(length > 0)[:, 0]
  lens = tf.gather(length, starts)
  idx = tf.cast(starts, tf.int32)
  diff = tf.zeros([n + 13], tf.int32)
  diff = tf.tensor_scatter_nd_add(diff, tf.expand_dims(idx + 1, 1), tf.ones_like(idx))
  diff = tf.tensor_scatter_nd_add(diff, tf.expand_dims(idx + lens, 1), -tf.ones_like(idx))
  covered = tf.cumsum(diff)[:n] > 0
  # Placeholders back to the characters they stand for.
  value = tf.where(tf.equal(cps, ord(_PLACEHOLDER)), _BACKSLASH, value)
  value = tf.where(tf.equal(cps, ord(_QUOTE_PLACEHOLDER)), ord('"'), value)
  return value, tf.logical_not(covered)


def _unescape_bodies(bodies):
  """Decodes a 1-D batch of JSON string bodies (placeholders already in) to UTF-8 text."""
  cps = tf.strings.unicode_decode(bodies, "UTF-8", errors="replace")
  value, keep = _unescape_codepoints(cps.flat_values, tf.cast(cps.value_rowids(), tf.int32))
  decoded = tf.ragged.boolean_mask(cps.with_flat_values(value), cps.with_flat_values(keep))
  return tf.strings.unicode_encode(decoded, "UTF-8", errors="replace")


def repair_invalid_utf8(texts):
  """`repair_utf8` on a 1-D batch, transcoding only the texts RE2 finds invalid (transcoding
  costs ~50 ns per character, the check a few). RE2 accepts encoded surrogates, which
  SentencePiece and `unicode_encode` treat as replacement characters anyway."""
  bad = tf.where(tf.logical_not(tf.strings.regex_full_match(texts, "(?s).*")))
  return tf.tensor_scatter_nd_update(texts, bad, repair_utf8(tf.gather_nd(texts, bad)))


def _unescape_simple(bodies):
  """Decodes string bodies without \\u escapes: one global replacement per escape kind."""
  for esc, out in _SIMPLE_ESCAPES.items():
    bodies = tf.strings.regex_replace(bodies, r"\\" + esc, out)  # No escape char is special.
  bodies = tf.strings.regex_replace(bodies, _QUOTE_PLACEHOLDER, '"')
  return tf.strings.regex_replace(bodies, _PLACEHOLDER, r"\\")


def _unescape_json_bodies(bodies):
  """Decodes a 1-D batch of string bodies (placeholders in): bodies with \\u escapes go through
  code points, the rest through string replacements (an order of magnitude cheaper)."""
  has_u = tf.where(tf.strings.regex_full_match(bodies, r"(?s).*\\u.*"))
  decoded = _unescape_simple(bodies)
  return tf.tensor_scatter_nd_update(decoded, has_u, _unescape_bodies(tf.gather_nd(bodies, has_u)))


def json_string_fields(lines, field: str):
  """The string value of key `field` in each line of a 1-D batch of JSON object lines.

  '' where a line has no such key with a string value; values are valid UTF-8 (invalid bytes
  in the lines are replaced first). Vectorised over the batch: escaped backslashes and quotes
  become placeholders, so every remaining `"` delimits a string; the line split on `"` then has
  its string literals at odd positions, a key is a literal followed by nothing but a colon, and
  the value is the literal after it. The first such key counts.
  """
  return json_string_fields_found(lines, field)[0]


def json_string_fields_found(lines, field: str):
  """(`json_string_fields`, whether each line has the key with a closed string value)."""
  lines = repair_invalid_utf8(tf.convert_to_tensor(lines))
  text = tf.strings.regex_replace(lines, r"\\\\", _PLACEHOLDER)  # Left to right, as JSON.
  text = tf.strings.regex_replace(text, r'\\"', _QUOTE_PLACEHOLDER)
  parts = tf.strings.split(text, '"')
  flat = parts.flat_values
  rows = tf.cast(parts.value_rowids(), tf.int32)
  index = tf.range(tf.size(flat))
  position = index - tf.gather(tf.cast(parts.row_starts(), tf.int32), rows)
  row_length = tf.gather(tf.cast(parts.row_lengths(), tf.int32), rows)
  colon_next = tf.strings.regex_full_match(_shift(flat, 1, ""), r"\s*:\s*")
  # The value literal at position+2 must be closed, i.e. followed by one more part.
  is_key = (position % 2 == 1) & tf.equal(flat, field) & colon_next & (position + 3 < row_length)
  big = tf.size(flat) + 2
  first_key = tf.math.unsorted_segment_min(tf.where(is_key, index, big), rows, tf.size(lines))
  found = first_key < big
  bodies = tf.where(found, tf.gather(flat, tf.where(found, first_key + 2, 0)), "")
  return _unescape_json_bodies(bodies), found


def json_string_field(line, field: str):
  """`json_string_fields` for one scalar line."""
  return json_string_fields(tf.reshape(line, [1]), field)[0]
