"""Flax Linen building blocks of the MiniMax-M1 decoder, one concern per file."""
