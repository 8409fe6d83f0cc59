"""The RSS floor of experiments.bench_hf_convert_memory: a process that imports what
experiments.convert_hf and experiments.export_hf import (jax, Orbax, TensorStore, m1jax.hf)
and initialises the CPU backend, then exits."""
import jax
import m1jax.hf.convert  # noqa: F401
import m1jax.hf.export  # noqa: F401
import m1jax.hf.trainer_source  # noqa: F401

jax.numpy.zeros(1).block_until_ready()
