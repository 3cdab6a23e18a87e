"""t5x_lite: pretrain T5 encoder-decoder models with span corruption, in JAX/Flax."""

__version__ = "0.1.0"
