"""Files and directories on local paths or object stores (gs://, s3://), read and written through
`etils.epath`, as Orbax does; no TensorFlow needed.

For gs://, epath goes through TensorFlow's gfile where TensorFlow is installed and through fsspec
otherwise, which needs gcsfs (`pip install -e '.[gcs]'`); EPATH_USE_TF=false makes it use fsspec
even where TensorFlow is installed. A file:// URL is the local path it names: it runs the
object-store code paths (uploads, rewrites) on a local disk.
"""

from etils import epath

from t5x_lite import paths


def path(name: str) -> epath.Path:
  return epath.Path(paths.orbax_path(name))


def exists(name: str) -> bool:
  return path(name).exists()


def isdir(name: str) -> bool:
  return path(name).is_dir()


def isfile(name: str) -> bool:
  return exists(name) and not isdir(name)


def listdir(name: str) -> list[str]:
  """The names in a directory (no trailing '/', whatever the store)."""
  return [child.name for child in path(name).iterdir()]


def makedirs(name: str) -> None:
  path(name).mkdir(parents=True, exist_ok=True)


def remove(name: str) -> None:
  path(name).unlink()


def rmtree(name: str) -> None:
  """Removes a directory and what it holds; nothing happens when it is not there."""
  if exists(name):
    path(name).rmtree()


def rename(source: str, target: str, overwrite: bool = False) -> None:
  """Renames a file or directory; with `overwrite`, a file at `target` is replaced."""
  if overwrite:
    path(source).replace(path(target))
  else:
    path(source).rename(path(target))


def copy(source: str, target: str) -> None:
  """Copies a file, replacing one at `target`."""
  path(source).copy(path(target), overwrite=True)


def read_bytes(name: str) -> bytes:
  return path(name).read_bytes()


def read_text(name: str) -> str:
  return read_bytes(name).decode("utf-8")  # no newline translation, as written


def write_bytes(name: str, data: bytes) -> None:
  """Writes a whole file (on an object store, the upload completes when this returns)."""
  with path(name).open("wb") as f:
    f.write(data)


def write_text(name: str, text: str) -> None:
  write_bytes(name, text.encode("utf-8"))
