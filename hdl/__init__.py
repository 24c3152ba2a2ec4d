"""Amaranth design of the matrix-vector unit (data flows: memory port -> buffers -> array -> post-processing -> memory)."""
