"""Configs of earlier versions still parse; library code that needs a config of its own leaves the
caller's alone."""

import gin
import pytest

from t5x_lite import gin_utils, optimizers  # noqa: F401  (registers rsqrt_schedule)


def test_fresh_config_gives_the_callers_config_back():
  gin.clear_config()
  gin.parse_config(["optimizers.rsqrt_schedule.warmup_steps = 7"])
  try:
    with gin_utils.fresh_config():
      with pytest.raises(ValueError):
        gin.query_parameter("optimizers.rsqrt_schedule.warmup_steps")
      gin.parse_config(["optimizers.rsqrt_schedule.warmup_steps = 3"])
      assert gin.query_parameter("optimizers.rsqrt_schedule.warmup_steps") == 3
    assert gin.query_parameter("optimizers.rsqrt_schedule.warmup_steps") == 7
  finally:
    gin.clear_config()


def test_names_of_earlier_versions_are_rewritten():
  old = "\n".join(
    [
      "from tasks import quickstart",
      "import tasks.c4",
      "tasks.quickstart.quickstart_corpus.cache_dir = None",
      "partitioning.make_mesh.devices = None",
      "make_mesh.devices = None",
      "my_tasks.c4.x = 1",  # another project's module of the same name stays as it is
    ]
  )
  assert gin_utils.upgrade_old_names(old).splitlines() == [
    "from t5x_lite.tasks import quickstart",
    "import t5x_lite.tasks.c4",
    "t5x_lite.tasks.quickstart.quickstart_corpus.cache_dir = None",
    "# no longer configurable: partitioning.make_mesh.devices = None",
    "# no longer configurable: make_mesh.devices = None",
    "my_tasks.c4.x = 1",
  ]


def test_an_earlier_config_file_parses(tmp_path):
  path = tmp_path / "config.gin"
  path.write_text(
    "from tasks import quickstart\n"
    "tasks.quickstart.quickstart_corpus.cache_dir = '/tmp/q'\n"
    "partitioning.make_mesh.devices = None\n"
  )
  with gin_utils.fresh_config():
    gin_utils.parse_gin([str(path)], [], finalize=False)
    assert gin.query_parameter("quickstart_corpus.cache_dir") == "/tmp/q"
