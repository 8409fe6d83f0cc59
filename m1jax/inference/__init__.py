"""Inference: the hybrid cache, segmented prefill, the decode step, sampling, generate()."""
from m1jax.inference.cache import HybridCache, cache_bytes, init_cache
from m1jax.inference.forward import decode_step, prefill_segment
from m1jax.inference.generate import GenerateOutput, generate
from m1jax.inference.prefill import left_pad, prefill
from m1jax.inference.sampling import sample_tokens

__all__ = ["GenerateOutput", "HybridCache", "cache_bytes", "decode_step", "generate",
           "init_cache", "left_pad", "prefill", "prefill_segment", "sample_tokens"]
