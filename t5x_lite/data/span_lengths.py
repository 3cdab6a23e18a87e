"""Span corruption's length arithmetic and its two settings, without TensorFlow.

A segment of `raw_length` tokens loses its noise tokens to one sentinel per noise span and gains
an EOS; these functions say how long inputs and targets become, exactly as the masker in
span_corruption.py cuts them (the synthetic and ready-made data, which need no TF, use them too).
"""

import gin

from t5x_lite.errors import UserError


@gin.configurable
def span_corruption_config(noise_density: float = 0.15, mean_noise_span_length: float = 3.0):
  """The two hyper-parameters of span corruption; bind them in gin to change the objective."""
  if not 0.0 < noise_density < 1.0:
    raise UserError(f"span_corruption_config.noise_density must be in (0, 1), got {noise_density}")
  if mean_noise_span_length < 1.0:
    raise UserError(
      f"span_corruption_config.mean_noise_span_length must be >= 1, got {mean_noise_span_length}"
    )
  return noise_density, mean_noise_span_length


def _num_noise(length: int, noise_density: float, mean_noise_span_length: float) -> tuple[int, int]:
  """(noise tokens, noise spans) for a segment of `length` tokens, exactly as the masker computes them."""
  length = max(length, 2)
  num_noise = min(max(int(round(length * noise_density)), 1), length - 1)
  num_spans = int(round(num_noise / mean_noise_span_length))
  return num_noise, min(max(num_spans, 1), num_noise, length - num_noise)


def corrupted_lengths(
  raw_length: int, noise_density: float = 0.15, mean_noise_span_length: float = 3.0
) -> tuple[int, int]:
  """(inputs, targets) lengths, EOS included, that a raw segment of `raw_length` tokens becomes."""
  num_noise, num_spans = _num_noise(raw_length, noise_density, mean_noise_span_length)
  # Inputs: kept tokens + one sentinel per noise span + EOS; targets: noise + sentinels + EOS.
  return raw_length - num_noise + num_spans + 1, num_noise + num_spans + 1


def raw_length_for(
  inputs_length: int,
  targets_length: int,
  noise_density: float = 0.15,
  mean_noise_span_length: float = 3.0,
) -> int:
  """The longest raw segment whose corrupted inputs and targets fit the feature lengths.

  For inputs 512 / targets 114 at density 0.15 and mean span 3.0 this is 568.
  """

  def fits(n):
    i, t = corrupted_lengths(n, noise_density, mean_noise_span_length)
    return i <= inputs_length and t <= targets_length

  if not fits(1):
    raise ValueError(
      f"feature lengths inputs={inputs_length}, targets={targets_length} are too short "
      "for span corruption"
    )
  n = 1
  while fits(n + 1):
    n += 1
  return n
