"""Which kernel computes attention: T5's own XLA core, or cuDNN's fused attention on GPUs.

`model_config.attention_impl` chooses:
  xla    unscaled float32 scores [batch, heads, q, k] in memory, softmax, weighted sum of values
         (layers.dot_product_attention); every platform, every dtype
  cudnn  cuDNN's fused attention through `jax.nn.dot_product_attention`: the scores never reach
         memory, the relative position bias is an additive input with a gradient. GPU programs
         in bfloat16 (an error there where it cannot run); other platforms run xla
  auto   cudnn where it applies (`choose`), else xla: the default
Both compute the same function (no 1/sqrt(d) scaling, float32 softmax); the setting is an
execution option that a resumed run may change.
"""

import contextlib
import contextvars

import flax.struct
import jax
import jax.numpy as jnp

from t5x_lite.errors import UserError

# cuDNN's flash attention limits (jax.nn.dot_product_attention documents them): head dim a multiple
# of 8 up to 128, even lengths when training with a bias.
CUDNN_MAX_HEAD_DIM = 128
CUDNN_DTYPES = ("bfloat16",)
# The name of jax's cuDNN forward primitive in a jaxpr; remat policies keep its outputs
# (network.remat_policy) so the backward pass does not run the forward kernel again.
FUSED_FORWARD_PRIMITIVES = frozenset({"dot_product_attention_fwd_wrapper"})
# The `implementation` passed to jax.nn.dot_product_attention for each fused kernel.
JAX_IMPLEMENTATION = {"cudnn": "cudnn"}


@flax.struct.dataclass
class AttentionMask:
  """Which keys each query attends to, in the forms the kernels take.

  dense: boolean [batch|1, 1, q, k] with every rule applied (padding, packed segments, causality);
    what the xla kernel reads. Under jit it is only computed where a kernel uses it.
  query_lengths, key_lengths: int32 [batch], the valid tokens of each row when padding is a suffix
    (unpacked batches), else None. A fused kernel then masks by length and causality and takes no
    mask array: a dense mask would be folded into the bias as a [batch, heads, q, k] tensor.
  causal: a decoder self-attention (static).
  """

  dense: jax.Array
  query_lengths: jax.Array | None = None
  key_lengths: jax.Array | None = None
  causal: bool = flax.struct.field(pytree_node=False, default=False)


_compile_platform: contextvars.ContextVar[str | None] = contextvars.ContextVar(
  "t5x_lite_attention_platform", default=None
)


@contextlib.contextmanager
def compiling_for(platform: str):
  """Resolves 'auto' for `platform` ('gpu', 'tpu', 'cpu') while tracing inside this context:
  `plan` compiles GPU programs from a process whose own backend is the CPU."""
  token = _compile_platform.set("gpu" if platform == "cuda" else platform)
  try:
    yield
  finally:
    _compile_platform.reset(token)


def target_platform() -> str:
  return _compile_platform.get() or jax.default_backend()


def cudnn_unsupported(dtype: str, head_dim: int, q_len: int, k_len: int):
  """Why cuDNN's fused attention cannot run this attention on a GPU, or None."""
  if dtype not in CUDNN_DTYPES:
    return f"it needs dtype {' or '.join(CUDNN_DTYPES)} (got {dtype})"
  if head_dim % 8 or head_dim > CUDNN_MAX_HEAD_DIM:
    return f"it needs d_kv a multiple of 8 up to {CUDNN_MAX_HEAD_DIM} (got {head_dim})"
  if q_len % 2 or k_len % 2:
    return f"it needs even lengths to train with a bias (got {q_len} queries, {k_len} keys)"
  return None


def choose(setting: str, dtype: str, head_dim: int, q_len: int, k_len: int, dropout: bool) -> str:
  """The kernel ('xla' or 'cudnn') for one attention, as traced now.

  Programs for other platforms than GPUs run xla whatever the setting, so that a configuration
  chosen for GPUs still initialises, evaluates and decodes on a CPU. On a GPU, 'cudnn' is an
  error where cuDNN cannot run (attention dropout exists only in the xla kernel); 'auto' then
  takes xla. One-token decoding steps (q_len 1) always run xla: there is nothing to fuse.
  """
  if setting == "xla" or q_len == 1 or target_platform() != "gpu":
    return "xla"
  why_not = cudnn_unsupported(dtype, head_dim, q_len, k_len)
  if dropout:
    why_not = why_not or "it has no attention dropout (dropout_rate > 0 with dropout enabled)"
  if setting == "auto":
    return "xla" if why_not else "cudnn"
  if why_not:
    raise UserError(f"model_config.attention_impl='{setting}' cannot be used: {why_not}")
  return setting


def fused_attention(query, key, value, bias, mask: AttentionMask, implementation: str):
  """`jax.nn.dot_product_attention` in T5's terms: no scaling, the bias added to the scores.

  query [batch, q, heads, d_kv]; key, value [batch, k, kv_heads, d_kv] (fewer key/value heads are
  grouped-query / multi-query attention); bias [batch|1, heads, q, k] or None.
  """
  lengths = {}
  dense = mask.dense
  if mask.query_lengths is not None:
    lengths = dict(
      query_seq_lengths=mask.query_lengths,
      key_value_seq_lengths=mask.key_lengths,
      is_causal=mask.causal,
    )
    dense = None
  if bias is not None and implementation == "cudnn":
    # cuDNN adds the bias in the input dtype; a float32 bias has given NaN gradients.
    bias = bias.astype(query.dtype)
  return jax.nn.dot_product_attention(
    query,
    key,
    value,
    bias=bias,
    mask=dense,
    scale=1.0,
    implementation=implementation,
    **lengths,
  )


def suffix_lengths(valid):
  """int32 [batch]: valid tokens per row of a [batch, length] boolean, padding being a suffix."""
  return jnp.sum(valid, axis=-1, dtype=jnp.int32)
