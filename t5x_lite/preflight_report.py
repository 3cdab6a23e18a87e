"""The verdict lines of `preflight`: one per risk, from the numbers it measured."""

import math

GB = 1e9


def verdicts(report: dict, host_cores: int | None) -> list[str]:
  lines = [_memory(report["memory"], report["target"])]
  lines += _data(report["data"], report["required_examples_per_s"], host_cores)
  lines += _start(report)
  lines += _checkpoint(report["checkpoint"])
  return [line for line in lines if line]


def _memory(memory: dict, target: str) -> str:
  if "error" in memory:
    return (
      f"memory: not compiled for {target}: {memory['error']} (the rest assumes one host; "
      "--hosts=N says how many)"
    )
  how = (
    f"remat '{memory['remat_policy']}', {memory['num_microbatches']} microbatches; "
    f"deviceless compile, {memory['compile_s']} s here"
  )
  peak, limit = memory["peak_bytes"], memory["device_bytes"]
  if memory["fits"]:
    return f"fits: {peak / GB:.1f} GB of {limit / GB:.1f} GB per device ({how})"
  used = f"{peak / GB:.1f} GB" if peak else "more than it has"
  return (
    f"does not fit: a device needs {used} of {limit / GB:.1f} GB ({how}): use more devices "
    "(a larger target, NUM_PARTITIONS, runs/fsdp.gin) or a smaller BATCH_SIZE"
  )


def _data(data: dict, required: dict, host_cores: int | None) -> list[str]:
  if data.get("skipped"):
    return []
  if "error" in data:
    return [f"does not start: {data['error']}"]
  per_core = data["examples_per_core_s"]
  need = {m: required[f"mfu_{m}"] for m in (40, 60)}
  cores = {m: math.ceil(need[m] / per_core) for m in need}
  rate = (
    f"{need[40]:,.0f} / {need[60]:,.0f} examples/s per host at 40% / 60% MFU, "
    f"{cores[40]} / {cores[60]} cores at the {per_core:,.0f} examples per core-second read here"
  )
  remedy = (
    "pre-tokenize with `python -m t5x_lite.cache_tokenized` (several times the rate), or write "
    "ready-made examples on other hosts with `python -m t5x_lite.write_examples` (no input work "
    "left on this one)"
  )
  if host_cores is None and cores[60] <= 1:
    line = f"data: fed by one core ({rate})"
  elif host_cores is None:
    line = (
      f"data: {rate}; a host with fewer than {cores[40]} cores is input-bound below 40% MFU: "
      f"{remedy}"
    )
  else:
    best = host_cores * per_core / need[40] * 0.4
    line = (
      f"data: fed ({rate}; the host has {host_cores})"
      if best >= 0.6
      else f"input-bound below {best:.0%} MFU with {host_cores} cores per host ({rate}): {remedy}"
    )
  what = (
    f"one host's {data['logical_shards']} logical shards start in"
    if data.get("logical_shards")
    else f"the {data.get('pipeline', 'data')} reader starts in"
  )
  held = "hold" if data.get("logical_shards") else "holds"
  memory = (
    f"data: {what} {data['first_batch_s']:.0f} s and {held} "
    f"{data['resident_bytes'] / GB:.2f} GB of host memory"
  )
  return [line, memory]


def _start(report: dict) -> list[str]:
  data, memory = report["data"], report["memory"]
  if "first_batch_s" not in data or memory.get("compile_s") is None:
    return []
  total = data["first_batch_s"] + memory["compile_s"]
  return [
    f"first step after ~{total:.0f} s: the first batch {data['first_batch_s']:.0f} s and the "
    f"compile ~{memory['compile_s']:.0f} s (deviceless, here; the target adds autotuning), then "
    "the step-0 evaluation"
  ]


def _checkpoint(checkpoint: dict) -> list[str]:
  size = f"a checkpoint writes {checkpoint['bytes_per_host'] / GB:.2f} GB per host"
  if "error" in checkpoint:
    return [f"checkpoint: {size}; {checkpoint['error']}"]
  share = {m: checkpoint[f"share_of_period_mfu_{m}"] for m in (40, 60)}
  line = (
    f"checkpoint: {size}, {checkpoint['seconds_per_save']:.1f} s at the "
    f"{checkpoint['write_bytes_per_s'] / 1e6:,.0f} MB/s measured in MODEL_DIR: {share[40]:.1%} "
    f"/ {share[60]:.1%} of a CHECKPOINT_PERIOD of {checkpoint['period_steps']} steps at 40% / "
    "60% MFU"
  )
  if share[60] > 0.5:
    line += (
      "; saves are asynchronous, but one that outlasts half a period delays the next: raise "
      "CHECKPOINT_PERIOD or write to faster storage"
    )
  return [line]
