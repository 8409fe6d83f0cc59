"""Inference: the hybrid cache, segmented prefill, the decode step, sampling, generate().

No exported name equals a submodule's name, so `m1jax.inference.<module>` is always the
module (a function exported as `generate` once hid the module `generate`).
"""
from m1jax.inference.cache import HybridCache, cache_bytes, init_cache
from m1jax.inference.forward import decode_step, prefill_segment
from m1jax.inference.generation import GenerateOutput, generate
from m1jax.inference.sampling import sample_tokens
from m1jax.inference.segmented_prefill import left_pad, prefill

__all__ = ["GenerateOutput", "HybridCache", "cache_bytes", "decode_step", "generate",
           "init_cache", "left_pad", "prefill", "prefill_segment", "sample_tokens"]
