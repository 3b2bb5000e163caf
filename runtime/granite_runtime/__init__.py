"""The built-in Granite 4.0 inference engine (hybrid Mamba-2/Transformer, MoE).

A separate import package so that the control plane installs without torch: install the
`runtime` extra to use it. It owns the model code, kernels, caches, scheduler, the
OpenAI-compatible server, and the exact memory model of what it allocates.
"""

__version__ = "0.1.0"
