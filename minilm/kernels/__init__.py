"""Fused kernels behind the ops: today ``attention_cpu``, a flash-style attention forward and backward for the
CPU, jitted with Numba on raw NumPy arrays (BLAS gemm tiles, an online softmax, no T×S score matrix held).
Nothing in the package imports this layer except the attention op in ``minilm/ops``; models and modules never
call Numba directly."""
