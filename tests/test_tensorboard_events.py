"""TensorBoard events and MODEL_DIR files without TensorFlow: the event file read back record by
record holds the scalars tf.summary wrote (same tags, steps, values and metadata); a file:// URL
runs the object-store path (uploads); a process that cannot import TensorFlow writes them too."""

import json
import os
import pathlib
import struct
import subprocess
import sys
import textwrap

import pytest
from tensorboard.compat.proto import event_pb2

from t5x_lite import files
from t5x_lite.metrics_writer import MetricsWriter

REPO = pathlib.Path(__file__).resolve().parent.parent
ROWS = [
  {"step": 0, "eval_loss": 9.5, "eval_accuracy": 0.125},
  # An int, a bool and None, as training rows hold: the bool and None are not scalars.
  {"step": 10, "loss": 5.0, "learning_rate": 0.01, "batches": 7, "mfu": None, "resumed": True},
  {"step": 20, "loss": 4.25, "grad_norm": 1e30},
]


def read_events(path) -> list[event_pb2.Event]:
  """The events of a TFRecord file: length, its CRC, the data, its CRC (CRCs not checked)."""
  data, events, at = files.read_bytes(str(path)), [], 0
  while at < len(data):
    (length,) = struct.unpack("<Q", data[at : at + 8])
    events.append(event_pb2.Event.FromString(data[at + 12 : at + 12 + length]))
    at += 12 + length + 4
  return events


def scalars(events) -> list[tuple]:
  """(step, tag, float32 value, plugin, data class) of each summary value."""
  found = []
  for event in events:
    for value in event.summary.value:
      (number,) = struct.unpack("<f", value.tensor.tensor_content)
      found.append(
        (
          event.step,
          value.tag,
          number,
          value.tensor.dtype,
          value.metadata.plugin_data.plugin_name,
          value.metadata.data_class,
        )
      )
  return found


def event_files(log_dir) -> list[str]:
  return sorted(
    os.path.join(log_dir, n) for n in os.listdir(log_dir) if n.startswith("events.out.tfevents.")
  )


def write_rows(model_dir: str) -> None:
  os.makedirs(model_dir)  # training makes MODEL_DIR first
  writer = MetricsWriter(model_dir, enabled=True)
  for row in ROWS:
    writer.write(row)
  writer.close()


def test_events_hold_what_tf_summary_wrote(tmp_path):
  write_rows(str(tmp_path / "run"))
  (ours,) = event_files(tmp_path / "run" / "tensorboard")
  events = read_events(ours)
  assert events[0].file_version == "brain.Event:2"
  found = scalars(events)
  assert [(step, tag) for step, tag, *_ in found] == [
    (0, "eval_loss"),
    (0, "eval_accuracy"),
    (10, "loss"),
    (10, "learning_rate"),
    (10, "batches"),
    (20, "loss"),
    (20, "grad_norm"),
  ]
  assert [v for _, _, v, *_ in found] == [
    9.5,
    0.125,
    5.0,
    pytest.approx(0.01),
    7.0,
    4.25,
    pytest.approx(1e30),
  ]

  # What tf.summary.scalar wrote for the same rows (the writer this one replaces).
  tf = pytest.importorskip("tensorflow")
  tf_writer = tf.summary.create_file_writer(str(tmp_path / "tf"))
  with tf.device("/CPU:0"), tf_writer.as_default():
    for row in ROWS:
      for key, value in row.items():
        if key != "step" and isinstance(value, (int, float)) and not isinstance(value, bool):
          tf.summary.scalar(key, value, step=row["step"])
  tf_writer.close()
  (theirs,) = event_files(tmp_path / "tf")
  assert found == scalars(read_events(theirs))
  assert os.path.basename(ours).endswith(".v2")  # the suffix tf.summary gives its files


def test_a_value_beyond_float32_is_inf(tmp_path):
  """(tf.summary refused it, a traceback in the middle of training.)"""
  from t5x_lite.tensorboard_events import ScalarEventWriter

  writer = ScalarEventWriter(str(tmp_path))
  writer.scalars(5, {"grad_norm": 1e39, "loss": float("nan")})
  writer.close()
  (path,) = event_files(tmp_path)
  (_, _, big, *_), (_, _, nan, *_) = scalars(read_events(path))
  assert big == float("inf") and nan != nan


def test_tensorboard_reads_the_events(tmp_path):
  from tensorboard.backend.event_processing import event_accumulator
  from tensorboard.util import tensor_util

  write_rows(str(tmp_path / "run"))
  accumulator = event_accumulator.EventAccumulator(str(tmp_path / "run" / "tensorboard"))
  accumulator.Reload()
  assert set(accumulator.Tags()["tensors"]) == {
    "eval_loss",
    "eval_accuracy",
    "loss",
    "learning_rate",
    "batches",
    "grad_norm",
  }
  loss = [
    (e.step, tensor_util.make_ndarray(e.tensor_proto).item()) for e in accumulator.Tensors("loss")
  ]
  assert loss == [(10, 5.0), (20, 4.25)]


def test_object_store_path_uploads_each_row(tmp_path):
  """A file:// MODEL_DIR goes the gs:// way: the event file is written locally and uploaded."""
  url = f"file://{tmp_path / 'run'}"
  files.makedirs(url)
  writer = MetricsWriter(url, enabled=True)
  writer.write(ROWS[0])
  (uploaded,) = event_files(tmp_path / "run" / "tensorboard")
  assert [tag for _, tag, *_ in scalars(read_events(uploaded))] == ["eval_loss", "eval_accuracy"]
  writer.write(ROWS[1])
  assert len(scalars(read_events(uploaded))) == 5
  writer.close()
  lines = (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
  assert [json.loads(line)["step"] for line in lines] == [0, 10]


def test_files_on_a_url(tmp_path):
  """The operations MODEL_DIR needs, on a file:// URL (what gs:// runs through)."""
  root = f"file://{tmp_path}"
  files.makedirs(f"{root}/a/b")
  files.write_text(f"{root}/a/b/x.txt", "one\r\ntwo\n")
  assert files.read_text(f"{root}/a/b/x.txt") == "one\r\ntwo\n"
  assert files.isdir(f"{root}/a") and files.isfile(f"{root}/a/b/x.txt")
  assert not files.isfile(f"{root}/a") and not files.exists(f"{root}/nothing")
  assert sorted(files.listdir(f"{root}/a")) == ["b"]
  files.copy(f"{root}/a/b/x.txt", f"{root}/a/y.txt")
  files.write_text(f"{root}/a/z.tmp", "new")
  files.rename(f"{root}/a/z.tmp", f"{root}/a/y.txt", overwrite=True)
  assert files.read_text(f"{root}/a/y.txt") == "new"
  with pytest.raises(FileExistsError):
    files.rename(f"{root}/a/y.txt", f"{root}/a/b/x.txt")
  files.rename(f"{root}/a/b", f"{root}/a/c")  # a directory, as a quarantined checkpoint step
  assert sorted(files.listdir(f"{root}/a")) == ["c", "y.txt"]
  files.remove(f"{root}/a/y.txt")
  files.rmtree(f"{root}/a")
  files.rmtree(f"{root}/a")  # gone already: nothing happens
  assert not files.exists(f"{root}/a")


def test_metrics_and_lock_without_tensorflow(tmp_path):
  """A process where tensorflow, seqio and tensorflow_datasets cannot be imported makes MODEL_DIR,
  takes the run lock, writes metrics and events, and none of them is loaded."""
  script = textwrap.dedent(
    f"""
    import sys
    for name in ("tensorflow", "seqio", "tensorflow_datasets"):
      sys.modules[name] = None  # import fails, and importlib.util.find_spec says absent
    from t5x_lite import paths, run_lock
    from t5x_lite.metrics_writer import MetricsWriter
    model_dir = {str(tmp_path / "run")!r}
    paths.make_dirs(model_dir, "MODEL_DIR")
    lock = run_lock.RunLock(model_dir)
    lock.acquire()
    writer = MetricsWriter(model_dir, enabled=True)
    writer.write({{"step": 3, "loss": 2.5}})
    writer.close()
    lock.release()
    loaded = [m for m, v in sys.modules.items() if v is not None and m.split(".")[0] in
              ("tensorflow", "seqio", "tensorflow_datasets")]
    assert not loaded, loaded
    """
  )
  done = subprocess.run(
    [sys.executable, "-c", script],
    capture_output=True,
    text=True,
    timeout=300,
    env={**os.environ, "PYTHONPATH": str(REPO)},
  )
  assert done.returncode == 0, done.stderr[-3000:]
  (events,) = event_files(tmp_path / "run" / "tensorboard")
  assert [(s, tag, v) for s, tag, v, *_ in scalars(read_events(events))] == [(3, "loss", 2.5)]
  assert sorted(os.listdir(tmp_path / "run")) == ["metrics.jsonl", "tensorboard"]
