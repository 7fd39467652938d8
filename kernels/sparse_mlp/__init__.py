"""Fused block-sparse MLP ``fc2(gelu(fc1(x)))``: weights, reference and Pallas kernels."""
