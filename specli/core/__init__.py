"""The algorithm: the round loop, sampling and verification math, drafters, K policies and
their cost model. Imports only specli.config and specli.errors from outside; models are
duck-typed (anything with decode/truncate/tokenize), so nothing here imports llama_cpp."""
