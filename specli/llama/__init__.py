"""The llama.cpp side: the model adapter (the only importer of llama_cpp), weight
placement, thread governing, and the GGUF file reader."""
