"""8-bit SageAttention kernels for SGLang's ``sage_attn`` attention backend.

``kernels`` holds the Triton kernels, ``plan`` the per-batch block tables, ``reference`` the fp32
reference the tests compare against, ``stats`` the per-path counters a running engine exposes.
"""
