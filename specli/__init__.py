"""specli: exact speculative decoding for local GGUF models, over llama.cpp."""

__version__ = "0.1.0"
