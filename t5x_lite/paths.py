"""Paths that are local files or object-store URLs (gs://, file://); the one test for which."""

import os


def is_remote(path: str) -> bool:
  """A URL (gs://, file://, ...), read and written through tf.io.gfile and used as given."""
  return "://" in path


def resolve(path: str) -> str:
  """An absolute local path, or a URL as given."""
  return path if is_remote(path) else os.path.abspath(os.path.expanduser(path))


def orbax_path(path: str) -> str:
  """Orbax takes gs:// URLs but not file:// ones: those become plain paths."""
  return path[len("file://") :] if path.startswith("file://") else path
