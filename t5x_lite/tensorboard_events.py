"""TensorBoard scalars without TensorFlow: the events `tf.summary.scalar` writes (a float32 tensor
with the `scalars` plugin's metadata, one event per value), framed as TFRecords by the tensorboard
package's own record writer and protos.

Locally the event file is appended to and flushed after each row. An object store (gs://) cannot
append: the file is written in a local temporary directory and uploaded whole, through etils.epath,
after each row and at close, as metrics.jsonl is rewritten there.
"""

import itertools
import os
import shutil
import socket
import tempfile
import time

import numpy as np
from tensorboard.compat.proto import event_pb2, summary_pb2, tensor_pb2, tensor_shape_pb2, types_pb2
from tensorboard.summary.writer.record_writer import RecordWriter

from t5x_lite import files, paths

# TensorBoard's reader adds the data class (DATA_CLASS_SCALAR) from the plugin name, as for TF's.
_SCALAR_METADATA = summary_pb2.SummaryMetadata(
  plugin_data=summary_pb2.SummaryMetadata.PluginData(plugin_name="scalars")
)
_writer_ids = itertools.count()  # two writers of one process in one second get two files


class ScalarEventWriter:
  """Creates its event file in `log_dir` (made if missing) when constructed."""

  def __init__(self, log_dir: str):
    # The name tf.summary gives its files; TensorBoard reads every events.out.tfevents.* file.
    name = (
      f"events.out.tfevents.{int(time.time()):010d}.{socket.gethostname()}.{os.getpid()}."
      f"{next(_writer_ids)}.v2"
    )
    self._target = os.path.join(log_dir, name)
    self._local_dir = None
    if paths.is_remote(log_dir):
      self._local_dir = tempfile.mkdtemp(prefix="t5x_lite_events_")
      files.makedirs(log_dir)
      local = os.path.join(self._local_dir, name)
    else:
      os.makedirs(log_dir, exist_ok=True)
      local = self._target
    self._file = open(local, "wb")  # noqa: SIM115  (closed by close())
    self._local = local
    self._records = RecordWriter(self._file)
    self._add(event_pb2.Event(wall_time=time.time(), file_version="brain.Event:2"))

  def _add(self, event: event_pb2.Event) -> None:
    self._records.write(event.SerializeToString())

  def scalars(self, step: int, values: dict[str, float]) -> None:
    """One row: each value under its name as tag, at `step`; written through when this returns."""
    for tag, value in values.items():
      with np.errstate(over="ignore"):  # beyond float32's range: inf, as tf.summary writes it
        content = np.asarray(value, dtype="<f4").tobytes()
      tensor = tensor_pb2.TensorProto(
        dtype=types_pb2.DT_FLOAT,
        tensor_shape=tensor_shape_pb2.TensorShapeProto(),
        tensor_content=content,
      )
      summary = summary_pb2.Summary(
        value=[summary_pb2.Summary.Value(tag=tag, tensor=tensor, metadata=_SCALAR_METADATA)]
      )
      self._add(event_pb2.Event(wall_time=time.time(), step=step, summary=summary))
    self.flush()

  def flush(self) -> None:
    self._file.flush()
    if self._local_dir is not None:
      files.copy(self._local, self._target)

  def close(self) -> None:
    if self._file.closed:
      return
    self.flush()
    self._file.close()
    if self._local_dir is not None:
      shutil.rmtree(self._local_dir, ignore_errors=True)
