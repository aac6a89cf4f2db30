"""centernet_jax: CenterNet and CornerNet in JAX/Flax."""
