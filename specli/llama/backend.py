"""LlamaModel: a thin adapter over llama_cpp's low-level API. The only module importing llama_cpp.

One model, one context, one sequence. The adapter tracks how many positions its KV cache
holds (`n_past`); `decode` appends tokens at those positions and returns logits rows only
for the last `n_logits` of them, as a zero-copy numpy view of llama.cpp's output buffer.
`truncate(n)` drops every cached position >= n, which is how rejected drafts are undone.

We never use `Llama(logits_all=True)`: it allocates n_ctx x n_vocab floats (2.5 GB for
Qwen's vocabulary at 4,096 context). Here the output buffer is capped at `n_outputs_max`
rows, enough for the largest verification batch (K_MAX + 1).
"""

from __future__ import annotations

import ctypes
import logging
import os
import re
import sys
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Sequence

import numpy as np

from specli.config import K_MAX
from specli.core.ngram import common_prefix
from specli.errors import ContextFullError, ModelError

log = logging.getLogger("specli.llama")


def physical_cores() -> int:
    """Number of physical cores (llama.cpp runs best with one thread per core)."""
    try:
        cores = set()
        phys = core = None
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("physical id"):
                    phys = line.split(":")[1].strip()
                elif line.startswith("core id"):
                    core = line.split(":")[1].strip()
                elif not line.strip() and core is not None:
                    cores.add((phys, core))
                    phys = core = None
        if core is not None:
            cores.add((phys, core))
        if cores:
            return len(cores)
    except OSError:
        pass
    return max(1, (os.cpu_count() or 2) // 2 if (os.cpu_count() or 1) > 2 else (os.cpu_count() or 1))


def _u8_ptr(a: np.ndarray):
    """A uint8* to a contiguous numpy array's bytes, for llama.cpp's state calls."""
    return a.ctypes.data_as(ctypes.POINTER(ctypes.c_uint8))


def _llama():
    """Import llama_cpp once, route its logging to Python logging, init the backend.

    OpenMP's wait policy is left to libgomp (and to OMP_WAIT_POLICY / GOMP_SPINCOUNT when
    the user sets them): its long spin is what makes an idle machine decode fast, and the
    collapse it causes on a busy one is handled by shedding threads (specli/threads.py).
    """
    import llama_cpp

    if not getattr(llama_cpp, "_specli_ready", False):
        llama_cpp.llama_log_set(_LOG_CALLBACK(llama_cpp), ctypes.c_void_p(0))
        llama_cpp.llama_backend_init()
        llama_cpp._specli_ready = True  # marker on the library module, not our state
    return llama_cpp


def _LOG_CALLBACK(llama_cpp):
    # The callback object must outlive every call from C, so it is kept on the module.
    cb = getattr(llama_cpp, "_specli_log_cb", None)
    if cb is None:

        @llama_cpp.llama_log_callback
        def cb(level, text, user_data):  # noqa: ANN001
            log.debug(text.decode("utf-8", "replace").rstrip())

        llama_cpp._specli_log_cb = cb
    return cb


# --- buffer types and devices (ggml's C API, through llama_cpp's own libggml) ------------

GGML_TYPE_F32 = 0
_DEV_CPU, _DEV_GPU, _DEV_IGPU = 0, 1, 2


class _GgmlInitParams(ctypes.Structure):
    _fields_ = [("mem_size", ctypes.c_size_t), ("mem_buffer", ctypes.c_void_p),
                ("no_alloc", ctypes.c_bool)]


class _BuftOverride(ctypes.Structure):  # struct llama_model_tensor_buft_override
    _fields_ = [("pattern", ctypes.c_char_p), ("buft", ctypes.c_void_p)]


def _ggml():
    """libggml with the prototypes used here (set once; ctypes keeps them on the handle)."""
    from llama_cpp._ggml import libggml as lib

    if getattr(lib, "_specli_typed", False):
        return lib
    P, S, B, I64 = ctypes.c_void_p, ctypes.c_char_p, ctypes.c_bool, ctypes.c_int64
    for name, res, args in (
        ("ggml_backend_dev_by_type", P, [ctypes.c_int]),
        ("ggml_backend_dev_backend_reg", P, [P]),
        ("ggml_backend_reg_get_proc_address", P, [P, S]),
        ("ggml_backend_buft_name", S, [P]),
        ("ggml_backend_buft_alloc_buffer", P, [P, ctypes.c_size_t]),
        ("ggml_backend_buffer_free", None, [P]),
        ("ggml_backend_dev_supports_op", B, [P, P]),
        ("ggml_backend_dev_count", ctypes.c_size_t, []),
        ("ggml_backend_dev_get", P, [ctypes.c_size_t]),
        ("ggml_backend_dev_name", S, [P]),
        ("ggml_backend_dev_description", S, [P]),
        ("ggml_backend_dev_type", ctypes.c_int, [P]),
        ("ggml_backend_dev_memory", None, [P, ctypes.POINTER(ctypes.c_size_t),
                                           ctypes.POINTER(ctypes.c_size_t)]),
        ("ggml_init", P, [_GgmlInitParams]),
        ("ggml_free", None, [P]),
        ("ggml_tensor_overhead", ctypes.c_size_t, []),
        ("ggml_new_tensor_2d", P, [P, ctypes.c_int, I64, I64]),
        ("ggml_mul_mat", P, [P, P, P]),
    ):
        fn = getattr(lib, name)
        fn.restype, fn.argtypes = res, args
    lib._specli_typed = True
    return lib


def cpu_extra_bufts() -> dict[str, int]:
    """The CPU backend's extra buffer types, {name: handle}, in llama.cpp's order of use."""
    _llama()
    g = _ggml()
    dev = g.ggml_backend_dev_by_type(_DEV_CPU)
    addr = g.ggml_backend_reg_get_proc_address(g.ggml_backend_dev_backend_reg(dev),
                                               b"ggml_backend_dev_get_extra_bufts")
    if not addr:
        return {}
    arr = ctypes.CFUNCTYPE(ctypes.POINTER(ctypes.c_void_p), ctypes.c_void_p)(addr)(dev)
    out, i = {}, 0
    while arr and arr[i]:
        out[g.ggml_backend_buft_name(arr[i]).decode()] = arr[i]
        i += 1
    return out


def buft_supports(buft: int, tensor) -> bool:
    """Whether buffer type `buft` runs a matmul with this weight, by the CPU backend's own
    answer: the check llama.cpp makes when it picks a weight's buffer (a dummy MUL_MAT
    with a 512-row F32 input, the weight marked as living in a buffer of that type)."""
    g = _ggml()
    ctx = g.ggml_init(_GgmlInitParams(8 * g.ggml_tensor_overhead(), None, True))
    buf = None
    try:
        w = g.ggml_new_tensor_2d(ctx, tensor.ggml_type, tensor.dims[0], tensor.dims[1])
        x = g.ggml_new_tensor_2d(ctx, GGML_TYPE_F32, tensor.dims[0], 512)
        op = g.ggml_mul_mat(ctx, w, x)
        buf = g.ggml_backend_buft_alloc_buffer(buft, 0)
        # struct ggml_tensor { enum ggml_type type; struct ggml_backend_buffer * buffer; ...}
        ctypes.c_void_p.from_address(w + ctypes.sizeof(ctypes.c_void_p)).value = buf
        return bool(g.ggml_backend_dev_supports_op(g.ggml_backend_dev_by_type(_DEV_CPU), op))
    finally:
        if buf:
            g.ggml_backend_buffer_free(buf)
        g.ggml_free(ctx)


def gpu_devices() -> list[dict]:
    """GPU devices llama.cpp can offload to: name, description, memory (MiB)."""
    _llama()
    g = _ggml()
    out = []
    for i in range(g.ggml_backend_dev_count()):
        dev = g.ggml_backend_dev_get(i)
        if g.ggml_backend_dev_type(dev) not in (_DEV_GPU, _DEV_IGPU):
            continue
        free, total = ctypes.c_size_t(0), ctypes.c_size_t(0)
        g.ggml_backend_dev_memory(dev, ctypes.byref(free), ctypes.byref(total))
        out.append({"name": g.ggml_backend_dev_name(dev).decode(),
                    "description": g.ggml_backend_dev_description(dev).decode(),
                    "memory_total_mib": total.value // 2**20,
                    "memory_free_mib": free.value // 2**20})
    return out


def supports_gpu_offload() -> bool:
    """llama.cpp's own answer: was it built with a GPU backend that has a device here."""
    return bool(_llama().llama_supports_gpu_offload())


def resolve_gpu_layers(n_gpu_layers: int | None) -> int:
    """--n-gpu-layers: None means all layers when GPU offload is supported, else 0."""
    if n_gpu_layers is None:
        return -1 if supports_gpu_offload() else 0
    return n_gpu_layers


def system_info() -> str:
    """llama_print_system_info(): the CPU features llama.cpp was built with and sees."""
    return _llama().llama_print_system_info().decode("utf-8", "replace").strip()


def plan_placement(path: Path, n_gpu_layers: int, env: dict | None = None, header=None):
    """The Placement (specli.llama.placement) for loading `path` here: asks the backend which
    extra buffer types it offers and, when AMX is among them, which weights CPU_REPACK
    takes (from the tensors of `header`, read from `path` when not given)."""
    from specli.llama import placement

    bufts = cpu_extra_bufts()
    allow = placement.amx_allowed(env)
    if placement.AMX not in bufts or allow:
        return placement.decide(list(bufts), [], lambda t: False, n_layer=0,
                                n_gpu_layers=n_gpu_layers, allow_amx=allow), bufts
    from specli.llama.gguf import read_gguf

    if header is None or header.tensors is None:
        header = read_gguf(path, tensors=True)
    n_layer = int(header.arch_key("block_count") or 0)
    seen: dict[tuple, bool] = {}  # one backend query per (type, shape)

    def repack_ok(t) -> bool:
        key = (t.ggml_type, t.dims)
        if key not in seen:
            seen[key] = buft_supports(bufts[placement.REPACK], t)
        return seen[key]

    return placement.decide(list(bufts), header.tensors or [], repack_ok, n_layer=n_layer,
                            n_gpu_layers=n_gpu_layers, allow_amx=False), bufts


_MADV_DONTNEED = 4  # Linux


def release_file_pages(path: str | os.PathLike) -> int:
    """Drop this process's resident pages of its read-only mappings of `path`; bytes advised.

    llama.cpp maps the GGUF file and, on CPUs with repacked kernels (CPU_REPACK), copies
    most weights into a second, interleaved buffer; the mapped originals then sit in RSS
    unused (600 MB for the 1.5B target). MADV_DONTNEED on a read-only shared file mapping
    only unmaps pages from this process: they stay in the page cache, and a page still in
    use (an embedding table, say) faults back in at memory speed on its next read. Linux
    only; elsewhere a no-op.
    """
    if not sys.platform.startswith("linux"):
        return 0
    real = os.path.realpath(path)
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        madvise = libc.madvise
        madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
        with open("/proc/self/maps") as f:
            lines = f.readlines()
    except (OSError, AttributeError):
        return 0
    released = 0
    for line in lines:
        fields = line.split(maxsplit=5)
        if len(fields) < 6 or fields[5].rstrip("\n") != real or "w" in fields[1]:
            continue
        lo, hi = (int(x, 16) for x in fields[0].split("-"))
        if madvise(lo, hi - lo, _MADV_DONTNEED) == 0:
            released += hi - lo
    return released


def device_label(buffers: dict[str, float], n_gpu_layers: int) -> str:
    """Where a model runs, from the buffers its weights landed in: 'CPU', 'CUDA0', ..."""
    gpus = [name for name in buffers if not name.upper().startswith(("CPU", "AMX"))]
    if not gpus or n_gpu_layers == 0:
        return "CPU"
    partial = f" ({n_gpu_layers} layers)" if n_gpu_layers > 0 else ""
    return "+".join(gpus) + partial


def _override_array(overrides, bufts: dict[str, int]):
    """A NULL-terminated llama_model_tensor_buft_override[] for `overrides`, or None."""
    if not overrides:
        return None
    arr = (_BuftOverride * (len(overrides) + 1))()
    for i, (pattern, name) in enumerate(overrides):
        arr[i].pattern = pattern.encode()
        arr[i].buft = bufts[name]
    return arr


_BUFFER_LINE = re.compile(r"(\S+) model buffer size =\s*([\d.]+) MiB")


@contextmanager
def _capture_buffers():
    """Collect llama.cpp's 'X model buffer size = N MiB' load lines into a dict."""
    found: dict[str, float] = {}

    class Grab(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            m = _BUFFER_LINE.search(record.getMessage())
            if m:
                found[m.group(1)] = found.get(m.group(1), 0.0) + float(m.group(2))

    handler, level = Grab(logging.DEBUG), log.level
    log.addHandler(handler)
    if not log.isEnabledFor(logging.DEBUG):
        log.setLevel(logging.DEBUG)  # llama.cpp logs these at info; we route all to debug
    try:
        yield found
    finally:
        log.removeHandler(handler)
        log.setLevel(level)


class LlamaModel:
    """A loaded GGUF model with its own context and KV cache (sequence 0)."""

    def __init__(
        self,
        path: str | os.PathLike,
        *,
        n_ctx: int = 4096,
        n_threads: int | None = None,
        n_gpu_layers: int | None = None,
        n_batch: int = 512,
        header=None,
        n_seq: int = 1,
    ) -> None:
        """`header`: the file's llama.gguf.GGUFHeader with tensors, if already read (a load
        reads it once, for the pair check and the placement alike). `n_seq`: sequences the
        context holds, each with its own `n_ctx` cells (llama.batch.SeqView reads one;
        this object itself is sequence 0)."""
        from specli.llama.gguf import check_gguf

        self.path = Path(path)
        if header is None:
            check_gguf(self.path)
        lc = self._lc = _llama()
        n_gpu_layers = resolve_gpu_layers(n_gpu_layers)
        mparams = lc.llama_model_default_params()
        mparams.n_gpu_layers = n_gpu_layers
        self.placement, bufts = plan_placement(self.path, n_gpu_layers, header=header)
        log.debug("%s: buffer types: %s", self.path.name, self.placement.reason)
        mparams.use_extra_bufts = self.placement.use_extra_bufts
        overrides = _override_array(self.placement.overrides, bufts)  # alive until loaded
        if overrides is not None:
            mparams.tensor_buft_overrides = ctypes.cast(overrides, ctypes.c_void_p)
        # While loading, drop the mapped pages already copied into repacked (or GPU) buffers,
        # so peak RSS is not file + copies; once more when loading is done.
        # SPECLI_RELEASE_PAGES=after (only after loading) or off: escape hatches.
        mode = os.environ.get("SPECLI_RELEASE_PAGES", "load").strip().lower()
        step = [0.0]

        def on_progress(progress: float, _user) -> bool:
            try:
                if progress - step[0] >= 0.1:
                    step[0] = progress
                    release_file_pages(self.path)
            except Exception:  # noqa: BLE001 - never abort a load over an optimisation
                pass
            return True

        if mode == "load":
            progress_cb = lc.llama_progress_callback(on_progress)  # alive until the load returns
            mparams.progress_callback = progress_cb
        with _capture_buffers() as buffers:
            self._model = lc.llama_model_load_from_file(str(self.path).encode(), mparams)
        self.buffers = buffers  # {"CPU_REPACK": MiB, "CPU_Mapped": MiB, "CUDA0": MiB, ...}
        if mode in ("load", "after"):
            release_file_pages(self.path)
        if not self._model:
            raise ModelError(f"llama.cpp could not load {self.path} (corrupt or unsupported GGUF)")
        self._vocab = lc.llama_model_get_vocab(self._model)
        self.n_vocab = lc.llama_vocab_n_tokens(self._vocab)
        threads = n_threads or physical_cores()
        cparams = lc.llama_context_default_params()
        if n_seq < 1:
            raise ValueError(f"n_seq must be >= 1, got {n_seq}")
        cparams.n_ctx = n_ctx * n_seq  # split evenly: each sequence gets n_ctx cells
        cparams.n_seq_max = n_seq
        # One KV pool for all sequences (each sees only its own cells: llama.cpp masks by
        # sequence). Per-sequence streams (kv_unified off) make llama.cpp split a batch into
        # ubatches of equal tokens per sequence, in increasing sequence order: a step of a
        # 1-token sequence beside a 4-row verification ran as two forward passes, and
        # [1, 1, 1, 1] in arrival order took 116-139 ms where in order it took 98.
        cparams.kv_unified = True
        cparams.n_batch = cparams.n_ubatch = n_batch
        cparams.n_threads = cparams.n_threads_batch = threads
        if hasattr(cparams, "n_outputs_max"):
            # logits buffer sized to the largest verify batch, one per sequence
            cparams.n_outputs_max = n_seq * (K_MAX + 1)
        cparams.no_perf = True
        self._ctx = lc.llama_init_from_model(self._model, cparams)
        if not self._ctx:
            lc.llama_model_free(self._model)
            self._model = None
            raise ModelError(f"llama.cpp could not create a context of {n_ctx} tokens for {self.path}")
        self.n_seq = n_seq
        self.n_ctx = lc.llama_n_ctx(self._ctx) // n_seq  # cells per sequence (SeqView keeps to it)
        self.n_outputs_max = n_seq * (K_MAX + 1)
        self.n_batch = n_batch
        self.n_threads = threads  # as configured (cost-cache keys, stats)
        self.threads_now = threads  # what decodes use now (a ThreadGovernor may lower it)
        self.governor = None  # set by threads.governor_for
        self.n_gpu_layers = n_gpu_layers
        self.placement_key = self.placement.key
        self.device = device_label(self.buffers, n_gpu_layers)
        self._mem = lc.llama_get_memory(self._ctx)
        self._batch = lc.llama_batch_init(n_batch, 0, 1)
        self._init_batch_views()
        self._pieces: dict[int, bytes] = {}
        self._eog: list[int] | None = None  # see eog_tokens
        self._lltok = None  # see grammar_tokenizer
        self.tokens: list[int] = []  # exactly what the KV cache holds, in order
        self.decode_seconds = 0.0  # time inside llama_decode, for the Python-overhead figure

    def _init_batch_views(self) -> None:
        b, n = self._batch, self.n_batch
        self._b_token = np.ctypeslib.as_array(b.token, shape=(n,))
        self._b_pos = np.ctypeslib.as_array(b.pos, shape=(n,))
        self._b_logits = np.ctypeslib.as_array(b.logits, shape=(n,))
        np.ctypeslib.as_array(b.n_seq_id, shape=(n,))[:] = 1
        for i in range(n):  # every token belongs to sequence 0 unless decode_parts says not
            b.seq_id[i][0] = 0
        self._b_seq = np.zeros(n, dtype=np.int32)  # what seq_id[i][0] holds now
        self.lock = threading.RLock()  # one llama.cpp context: one call at a time (SeqViews)

    # --- lifetime -------------------------------------------------------------------
    def close(self) -> None:
        lc = self._lc
        if getattr(self, "_batch", None) is not None:
            lc.llama_batch_free(self._batch)
            self._batch = None
        if getattr(self, "_ctx", None):
            lc.llama_free(self._ctx)
            self._ctx = None
        if getattr(self, "_model", None):
            lc.llama_model_free(self._model)
            self._model = None

    def __enter__(self) -> "LlamaModel":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:
            pass

    # --- KV cache -------------------------------------------------------------------
    def decode(self, tokens: Sequence[int], n_logits: int = 1) -> np.ndarray:
        """Append `tokens` to the cache; return logits [n_logits, n_vocab] for the last ones.

        The array is a view of llama.cpp's buffer: valid until this model's next decode.
        Long inputs are split into n_batch chunks, the last holding all requested rows.
        """
        n = len(tokens)
        if not 0 <= n_logits <= min(n, self.n_batch, K_MAX + 1):
            raise ValueError(f"n_logits={n_logits} for {n} tokens")
        if self.n_past + n > self.n_ctx:
            raise ContextFullError(
                f"context full: {self.n_past} + {n} tokens exceed --ctx {self.n_ctx}"
            )
        if self.governor is not None:
            self.governor.tick()
        start = 0
        while start < n:
            # Chunks are cut from the end so that the final chunk holds >= n_logits tokens.
            end = n - ((n - start - 1) // self.n_batch) * self.n_batch
            if end - start > self.n_batch:
                end = start + self.n_batch
            self._decode_chunk(tokens[start:end], n_logits if end == n else 0)
            start = end
        if n_logits == 0:
            return np.empty((0, self.n_vocab), dtype=np.float32)
        ptr = self._lc.llama_get_logits(self._ctx)
        return np.ctypeslib.as_array(ptr, shape=(n_logits, self.n_vocab))

    def set_threads(self, n: int) -> None:
        """Decode with n threads from the next call on (prompt batches too)."""
        self._lc.llama_set_n_threads(self._ctx, n, n)
        self.threads_now = n

    def _decode_chunk(self, tokens: Sequence[int], n_logits: int) -> None:
        m = len(tokens)
        self._batch.n_tokens = m
        self._b_token[:m] = tokens
        self._b_pos[:m] = np.arange(self.n_past, self.n_past + m)  # positions continue the cache
        self._b_logits[:m] = 0
        if n_logits:
            self._b_logits[m - n_logits : m] = 1
        if self.n_seq > 1:  # decode_parts may have left other sequences' ids in the batch
            for i in np.flatnonzero(self._b_seq[:m]):
                self._batch.seq_id[int(i)][0] = 0
            self._b_seq[:m] = 0
        t0 = time.perf_counter()
        rc = self._lc.llama_decode(self._ctx, self._batch)
        self.decode_seconds += time.perf_counter() - t0
        if rc != 0:
            # A failed decode leaves the cache as it was before this chunk.
            raise ModelError(f"llama_decode failed with code {rc} for {self.path.name}")
        self.tokens.extend(tokens)

    def decode_parts(self, parts: Sequence[tuple[int, int, Sequence[int], int]]) -> tuple[list, float]:
        """One llama_decode over several sequences' tokens: parts are (seq, first position,
        tokens, rows of logits wanted for its last tokens). Returns each part's rows
        ([n_logits, n_vocab] copies: the buffer is overwritten by the next call) and the
        call's seconds. Sequence 0's token list (this object's own) is not touched: a
        SeqView keeps its own. The caller keeps the total within n_batch and n_outputs_max.
        """
        b, m, want = self._batch, 0, 0
        for seq, pos0, tokens, n_logits in parts:
            n = len(tokens)
            self._b_token[m : m + n] = tokens
            self._b_pos[m : m + n] = np.arange(pos0, pos0 + n)
            self._b_logits[m : m + n] = 0
            if n_logits:
                self._b_logits[m + n - n_logits : m + n] = 1
            for i in np.flatnonzero(self._b_seq[m : m + n] != seq):
                b.seq_id[m + int(i)][0] = seq
            self._b_seq[m : m + n] = seq
            m, want = m + n, want + n_logits
        b.n_tokens = m
        if self.governor is not None:
            self.governor.tick()
        t0 = time.perf_counter()
        rc = self._lc.llama_decode(self._ctx, b)
        dt = time.perf_counter() - t0
        self.decode_seconds += dt
        if rc != 0:
            raise ModelError(f"llama_decode failed with code {rc} for {self.path.name}")
        out, row = [], 0
        if want:
            logits = np.ctypeslib.as_array(self._lc.llama_get_logits(self._ctx),
                                           shape=(want, self.n_vocab))
        for _, _, _, n_logits in parts:
            out.append(np.array(logits[row : row + n_logits]) if n_logits
                       else np.empty((0, self.n_vocab), dtype=np.float32))
            row += n_logits
        return out, dt

    def seq_rm(self, seq: int, n: int) -> None:
        """Forget sequence `seq`'s cached positions >= n (for a SeqView)."""
        if not self._lc.llama_memory_seq_rm(self._mem, seq, n, -1):
            raise ModelError(f"llama.cpp could not truncate the KV cache of {self.path.name}")

    def seq_state(self, seq: int):
        """Sequence `seq`'s KV state as uint8 (see save_state)."""
        lc = self._lc
        size = lc.llama_state_seq_get_size(self._ctx, seq)
        buf = np.empty(size, dtype=np.uint8)
        n = lc.llama_state_seq_get_data(self._ctx, _u8_ptr(buf), size, seq)
        return buf if n == size else buf[:n].copy(), n

    def set_seq_state(self, seq: int, data) -> bool:
        buf = np.frombuffer(data, dtype=np.uint8)
        return self._lc.llama_state_seq_set_data(self._ctx, _u8_ptr(buf), buf.nbytes, seq) != 0

    def truncate(self, n: int) -> None:
        """Forget every cached position >= n (rejected drafts); n_past becomes n."""
        if not 0 <= n <= self.n_past:
            raise ValueError(f"truncate({n}) with n_past={self.n_past}")
        # Always asked of llama.cpp, even when n == n_past: a Ctrl-C that lands just after
        # llama_decode returns leaves positions in the cache that self.tokens never recorded.
        if not self._lc.llama_memory_seq_rm(self._mem, 0, n, -1):
            raise ModelError(f"llama.cpp could not truncate the KV cache of {self.path.name}")
        del self.tokens[n:]

    def reuse_prefix(self, tokens: Sequence[int]) -> int:
        """Keep the longest cached prefix of `tokens`, minus its last token; return its length.

        The last token of a prompt is always left pending (decoded with the first round),
        so at most len(tokens) - 1 positions are kept.
        """
        n = min(common_prefix(self.tokens, tokens), len(tokens) - 1)
        self.truncate(n)
        return n

    def save_state(self) -> tuple[tuple[int, ...], np.ndarray]:
        """The cached tokens and their KV state (sequence 0, as uint8), for `load_state` later.

        llama.cpp writes straight into an uninitialised numpy buffer: for 4,000 tokens of
        the 1.5B target (109 MiB) that took 35 ms (48 ms for the whole call, median of 5),
        where a zeroed ctypes array copied to bytes took 179 ms (the zero fill 72 ms, the
        copy 79 ms, llama.cpp's own part 19).
        """
        lc = self._lc
        size = lc.llama_state_seq_get_size(self._ctx, 0)
        buf = np.empty(size, dtype=np.uint8)
        n = lc.llama_state_seq_get_data(self._ctx, _u8_ptr(buf), size, 0)
        if n == 0 and self.tokens:
            raise ModelError(f"llama.cpp could not save the KV state of {self.path.name}")
        return tuple(self.tokens), buf if n == size else buf[:n].copy()  # len() = the bytes held

    def load_state(self, tokens: Sequence[int], data) -> None:
        """Replace the cache with a state `save_state` returned (same model and context).
        `data`: any buffer of its bytes (numpy array or bytes), read in place, not copied."""
        lc = self._lc
        self.reset()
        if not tokens:
            return
        buf = np.frombuffer(data, dtype=np.uint8)
        if lc.llama_state_seq_set_data(self._ctx, _u8_ptr(buf), buf.nbytes, 0) == 0:
            self.reset()
            raise ModelError(f"llama.cpp could not restore a KV state of {self.path.name}")
        self.tokens = list(tokens)

    @property
    def n_past(self) -> int:
        return len(self.tokens)

    def reset(self) -> None:
        self._lc.llama_memory_clear(self._mem, True)
        self.tokens.clear()

    # --- vocabulary -----------------------------------------------------------------
    def tokenize(self, text: str, *, add_special: bool = True, parse_special: bool = True) -> list[int]:
        """Text -> token ids; special tokens written in the text (<|im_start|>) are parsed."""
        data = text.encode("utf-8")
        cap = len(data) + 8
        buf = (self._lc.llama_token * cap)()
        n = self._lc.llama_tokenize(self._vocab, data, len(data), buf, cap, add_special, parse_special)
        if n < 0:  # buffer too small: -n is the size needed
            cap = -n
            buf = (self._lc.llama_token * cap)()
            n = self._lc.llama_tokenize(self._vocab, data, len(data), buf, cap, add_special, parse_special)
        return list(buf[:n])

    def token_bytes(self, token: int) -> bytes:
        """The raw bytes of one token (control tokens give b'')."""
        piece = self._pieces.get(token)
        if piece is None:
            buf = ctypes.create_string_buffer(64)
            n = self._lc.llama_token_to_piece(self._vocab, token, buf, 64, 0, False)
            if n < 0:
                buf = ctypes.create_string_buffer(-n)
                n = self._lc.llama_token_to_piece(self._vocab, token, buf, -n, 0, False)
            piece = self._pieces[token] = buf.raw[:n]
        return piece

    def token_text(self, token: int, *, special: bool = True) -> str:
        """A token's text, with control tokens spelled out (used for chat templates)."""
        buf = ctypes.create_string_buffer(256)
        n = self._lc.llama_token_to_piece(self._vocab, token, buf, 256, 0, special)
        return buf.raw[: max(n, 0)].decode("utf-8", "replace")

    def is_eog(self, token: int) -> bool:
        return bool(self._lc.llama_vocab_is_eog(self._vocab, token))

    def eog_tokens(self) -> list[int]:
        """Every end-of-generation id (Qwen2.5 has six: <|im_end|>, <|endoftext|>, ...)."""
        if self._eog is None:
            is_eog, vocab = self._lc.llama_vocab_is_eog, self._vocab
            self._eog = [t for t in range(self.n_vocab) if is_eog(vocab, t)]
        return self._eog

    def grammar_tokenizer(self):
        """llguidance's tokenizer over this model's vocabulary, for core.grammar (built on
        first use, about 1 s on Qwen's 151,936 ids, then kept). A grammar's end may be
        any end-of-generation token."""
        if self._lltok is None:
            import warnings

            from llguidance.llamacpp import lltokenizer_from_vocab

            with warnings.catch_warnings():  # it calls a deprecated llama_cpp function
                warnings.simplefilter("ignore", DeprecationWarning)  # once per token
                self._lltok = lltokenizer_from_vocab(self._vocab, eos_token=self.eog_tokens())
        return self._lltok

    def fim_tokens(self) -> dict[str, int]:
        """The fill-in-the-middle token ids llama.cpp found (pre, suf, mid, pad, rep, sep),
        from tokenizer.ggml.fim_*_token_id or, failing that, the vocabulary's texts
        (<|fim_prefix|>, <PRE>, <|repo_name|>, ...); a role the model lacks is left out."""
        lc, vocab = self._lc, self._vocab
        found = {role: getattr(lc, f"llama_vocab_fim_{role}")(vocab)
                 for role in ("pre", "suf", "mid", "pad", "rep", "sep")}
        return {role: t for role, t in found.items() if 0 <= t < self.n_vocab}

    @property
    def bos(self) -> int:
        return self._lc.llama_vocab_bos(self._vocab)

    @property
    def eot(self) -> int:
        """The end-of-turn id (llama.cpp's token_eot), or end-of-sequence where none."""
        t = self._lc.llama_vocab_eot(self._vocab)
        return t if t >= 0 else self.eos

    @property
    def eos(self) -> int:
        return self._lc.llama_vocab_eos(self._vocab)

    @property
    def adds_bos(self) -> bool:
        return bool(self._lc.llama_vocab_get_add_bos(self._vocab))

    def chat_template(self) -> str | None:
        raw = self._lc.llama_model_chat_template(self._model, None)
        return raw.decode("utf-8", "replace") if raw else None

    def meta(self, key: str) -> str | None:
        buf = ctypes.create_string_buffer(4096)
        n = self._lc.llama_model_meta_val_str(self._model, key.encode(), buf, 4096)
        return buf.value.decode("utf-8", "replace") if n >= 0 else None

    def __repr__(self) -> str:
        return f"LlamaModel({self.path.name!r}, n_ctx={self.n_ctx}, n_past={self.n_past})"
