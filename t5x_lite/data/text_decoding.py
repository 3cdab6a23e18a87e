"""Pure-TF text decoding for corpora: UTF-8 repair and JSON string fields.

Everything here is graph TF (no py_function), so pipelines that use it stay checkpointable.
"""

import re

import tensorflow as tf

REPLACEMENT_CHAR = 0xFFFD
_BACKSLASH = 92
# Placeholder for an escaped backslash while other escapes are decoded: a raw NUL cannot occur
# inside a valid JSON string, so it never collides with real text.
_PLACEHOLDER = "\x00"
_SIMPLE_ESCAPES = {'"': '"', "/": "/", "b": "\b", "f": "\f", "n": "\n", "r": "\r", "t": "\t"}


def repair_utf8(text):
  """Replaces every invalid UTF-8 sequence by U+FFFD (never fails)."""
  return tf.strings.unicode_transcode(text, "UTF-8", "UTF-8", errors="replace",
                                      replacement_char=REPLACEMENT_CHAR)


def count_invalid_utf8(text):
  """Number of invalid UTF-8 sequences in a scalar string (what `repair_utf8` replaces)."""
  cps = tf.strings.unicode_decode(text, "UTF-8", errors="replace",
                                  replacement_char=REPLACEMENT_CHAR)
  replaced = tf.reduce_sum(tf.cast(tf.equal(cps, REPLACEMENT_CHAR), tf.int32))
  # U+FFFD characters that were already in the text are not repairs.
  literal = tf.size(tf.strings.split(text, sep="\ufffd")) - 1
  return replaced - tf.cast(literal, tf.int32)


def _shift(x, k):
  """x[i + k] at position i, zero past the end."""
  return tf.concat([x[k:], tf.zeros([tf.minimum(k, tf.size(x))], x.dtype)], axis=0)


def _hex_value(c):
  """Value of a hex-digit code point, -1 if it is not one."""
  return tf.where((c >= 48) & (c <= 57), c - 48,
                  tf.where((c >= 97) & (c <= 102), c - 87,
                           tf.where((c >= 65) & (c <= 70), c - 55, -1)))


def _unescape_codepoints(cps):
  """Decodes JSON escapes in code points where every backslash starts an escape."""
  n = tf.size(cps)
  is_escape = tf.equal(cps, _BACKSLASH)
  nxt = _shift(cps, 1)
  value = cps
  length = tf.zeros_like(cps)  # Code points each escape consumes (0 where none starts).
  for esc, out in _SIMPLE_ESCAPES.items():
    hit = is_escape & tf.equal(nxt, ord(esc))
    value = tf.where(hit, ord(out), value)
    length = tf.where(hit, 2, length)

  def unicode_escape(k):
    """(is a \\u escape with four hex digits at i+k, its value)."""
    digits = [_hex_value(_shift(cps, k + 2 + j)) for j in range(4)]
    valid = (tf.equal(_shift(cps, k), _BACKSLASH) & tf.equal(_shift(cps, k + 1), ord("u"))
             & tf.reduce_all(tf.stack([d >= 0 for d in digits]), axis=0))
    val = digits[0] * 4096 + digits[1] * 256 + digits[2] * 16 + digits[3]
    return valid, val

  is_u, u_val = unicode_escape(0)
  is_u &= is_escape
  low_ok, low_val = unicode_escape(6)
  is_pair = is_u & (u_val >= 0xD800) & (u_val <= 0xDBFF) & low_ok & (low_val >= 0xDC00) & (
      low_val <= 0xDFFF)
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
  value = tf.where(tf.equal(cps, 0), _BACKSLASH, value)  # Placeholders back to backslashes.
  return tf.boolean_mask(value, tf.logical_not(covered))


def unescape_json_string(s):
  """Decodes the body of a JSON string literal (scalar tf.string) to UTF-8 text."""
  def decode():
    t = tf.strings.regex_replace(s, r"\\\\", _PLACEHOLDER)  # Left-to-right, as JSON parses.
    cps = tf.strings.unicode_decode(t, "UTF-8", errors="replace")
    return tf.strings.unicode_encode(_unescape_codepoints(cps), "UTF-8", errors="replace")

  has_escape = tf.strings.regex_full_match(s, r"(?s).*\\.*")
  return tf.cond(has_escape, decode, lambda: s)


def json_string_field(line, field: str):
  """The string value of top-level-looking key `field` in one JSON object line ('' if absent).

  A regex finds `"field": "..."` (a JSON string body is a run of non-quote, non-backslash
  characters or escape pairs, so an escaped quote never ends it); escapes are then decoded.
  """
  pattern = r'(?s)^.*?"' + re.escape(field) + r'"\s*:\s*"((?:[^"\\]|\\.)*)".*$'
  line = repair_utf8(line)
  found = tf.strings.regex_full_match(line, pattern)
  body = tf.strings.regex_replace(line, pattern, r"\1", replace_global=False)
  return tf.cond(found, lambda: unescape_json_string(body), lambda: tf.constant(""))
