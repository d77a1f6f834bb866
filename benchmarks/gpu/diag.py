"""Which part of model loading crashes on this machine? Each variant in its own process."""
import os
import subprocess
import sys
import tempfile

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
sys.path[:0] = [os.path.join(ROOT, "tests"), ROOT]
from tinymodels import write_tiny_model  # noqa: E402

path = os.path.join(tempfile.mkdtemp(), "tiny.gguf")
write_tiny_model(path, seed=0)
CODE = """
import sys
if sys.argv[4] == 'numpy-first':  # as specli.llama.backend, pytest and measure.py import them
    import numpy
import llama_cpp
variant = sys.argv[2]
if variant == 'raw':  # llama_cpp alone, no specli callbacks
    llama_cpp.llama_backend_init()
    p = llama_cpp.llama_model_default_params()
    m = llama_cpp.llama_model_load_from_file(sys.argv[1].encode(), p)
    print('loaded', bool(m))
else:
    import os
    os.environ['SPECLI_RELEASE_PAGES'] = variant
    from specli.llama.backend import LlamaModel
    m = LlamaModel(sys.argv[1], n_ctx=256, n_gpu_layers=int(sys.argv[3]))
    print('loaded', m.n_vocab, len(m.decode([1, 2, 3], 1)))
"""
# Session 2 saw every variant load in this script (llama_cpp imported first) while
# measure.py, tiny_exact.py and pytest (numpy imported first) segfaulted in the load call:
# the import order is the prime suspect, so both orders are tried.
for order in ("llama-first", "numpy-first"):
    for variant in ("raw", "off", "after", "load"):
        for ngl in ("0", "-1"):
            r = subprocess.run([sys.executable, "-c", CODE, path, variant, ngl, order],
                               capture_output=True, text=True,
                               env={**os.environ,
                                    "PYTHONPATH": ROOT + os.pathsep + os.environ.get("PYTHONPATH", "")})
            tail = (r.stdout + r.stderr).strip().splitlines()[-3:]
            print(f"{order:11} {variant:6} ngl={ngl:3} rc={r.returncode} {' | '.join(tail)[:300]}",
                  flush=True)
            if variant == "raw":
                break
