"""Telling text in UTF-16 or UTF-32 from binary data, for the message that refuses it.

The corpus readers read UTF-8 (ASCII included). A file in UTF-16 or UTF-32 (what some Windows
tools write) holds NUL bytes in nearly every character, so its records read as binary; it is
text all the same, and one `iconv` makes it readable. Looked at only once a file is refused.
"""

import gzip
import io
import os
from shlex import quote as q

from t5x_lite import paths

_HEAD_BYTES = 4096
# Byte order marks, the 4-byte ones first (UTF-32LE's begins with UTF-16LE's).
_BOMS = (
  (b"\xff\xfe\x00\x00", "UTF-32"),
  (b"\x00\x00\xfe\xff", "UTF-32"),
  (b"\xff\xfe", "UTF-16"),
  (b"\xfe\xff", "UTF-16"),
)


def wide_encoding(head: bytes) -> str | None:
  """'UTF-16' / 'UTF-32' (byte order mark, which iconv reads), 'UTF-16LE', 'UTF-16BE',
  'UTF-32LE' or 'UTF-32BE' (mostly-ASCII text without one: the NUL bytes fall in the high
  bytes of each unit), or None for anything else (UTF-8, binary)."""
  for bom, name in _BOMS:
    if head.startswith(bom):
      return name
  for width, name in ((4, "UTF-32"), (2, "UTF-16")):
    units = len(head) // width
    if units < 8:
      continue
    for order, low in (("LE", 0), ("BE", width - 1)):
      # ASCII in each unit's low byte, NUL in all its others.
      low_bytes = [head[i * width + low] for i in range(units)]
      high_zero = sum(
        all(head[i * width + j] == 0 for j in range(width) if j != low) for i in range(units)
      )
      if high_zero >= 0.9 * units and sum(b != 0 for b in low_bytes) >= 0.9 * units:
        return name + order
  return None


def read_head(path: str, size: int = _HEAD_BYTES) -> bytes:
  """The first `size` bytes of a (local or gs://, plain or .gz) file; b'' when unreadable."""
  try:
    if paths.is_remote(path):
      import tensorflow as tf

      try:
        raw = tf.io.gfile.GFile(path, "rb")
        head = raw.read(1 << 20 if path.endswith(".gz") else size)
      except tf.errors.OpError:
        return b""
    else:
      with open(path, "rb") as f:
        head = f.read(1 << 20 if path.endswith(".gz") else size)
    if path.endswith(".gz"):
      with gzip.GzipFile(fileobj=io.BytesIO(head)) as f:
        return f.read(size)
    return head
  except (OSError, EOFError, ValueError):  # gzip's errors are OSErrors and EOFErrors
    return b""


def conversion_hint(path: str) -> str | None:
  """'PATH is text in ENCODING, not UTF-8: convert it with `iconv ...`', or None when the file
  does not look like UTF-16/32 text."""
  encoding = wide_encoding(read_head(path))
  if encoding is None:
    return None
  if path.endswith(".gz"):
    out = path[: -len(".gz")]
    stem, ext = os.path.splitext(out)
    out = f"{stem}.utf8{ext}.gz"
    command = f"gunzip -c {q(path)} | iconv -f {encoding} -t UTF-8 | gzip > {q(out)}"
  else:
    stem, ext = os.path.splitext(path)
    out = f"{stem}.utf8{ext}"
    command = f"iconv -f {encoding} -t UTF-8 {q(path)} > {q(out)}"
  return (
    f"{path} is text in {encoding}, not UTF-8 (what the corpus readers read): convert it with "
    f"`{command}` and give {out} instead"
  )
