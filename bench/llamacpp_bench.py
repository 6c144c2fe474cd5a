#!/usr/bin/env python3
"""llama.cpp side of `agora bench engine`: prefill and decode throughput of a
GGUF file on the CPU, through llama-cpp-python's low-level (C API) bindings.

    python3 bench/llamacpp_bench.py --model FILE.gguf --threads N \
        --prompt-tokens P --gen-tokens G [--repeats R] [--json] [--verbose]

What one run measures (after one untimed warm-up run):

* prefill: the KV cache is cleared, then P token ids (1..P mod n_vocab, no
  tokenizer involved) go to ONE llama_decode call as one llama_batch (logits
  requested for the last position only).  Timed from just before llama_decode
  until llama_get_logits_ith() returned the last row (it synchronizes the
  backend), i.e. submit -> logits ready.  prefill_tok_s = P / seconds.
* decode: then G single-token llama_decode calls at positions P..P+G-1; each
  step feeds back the greedy argmax of the previous logits (argmax over the
  full vocab with numpy, included in the timing, as any engine must do it).
  decode_tok_s = G / seconds for all G steps.

The reported numbers are medians over --repeats runs.  llama.cpp's own perf
counters (llama_perf_context: t_p_eval_ms / t_eval_ms) are reported too as a
cross-check (`llama_internal` in the JSON).

Output: one human-readable line; with --json that line goes to stderr and
stdout carries exactly one JSON object:
  {"engine":"llama.cpp","version":...,"threads":N,"prompt_tokens":P,
   "gen_tokens":G,"prefill_tok_s":...,"decode_tok_s":..., ...extra fields}
Exit status is non-zero (with a message on stderr) if loading or decoding fails.
"""
from __future__ import annotations

import argparse
import contextlib
import ctypes
import json
import os
import statistics
import sys
import tempfile
import time

# llama.cpp commit vendored by each llama-cpp-python release we have used
# (from llama-cpp-python's CHANGELOG.md); the C library does not expose it.
VENDORED_LLAMA_CPP = {"0.3.36": "0c1e57098"}


@contextlib.contextmanager
def captured_stderr(enabled: bool):
    """Redirect fd 2 (C-level stderr, where ggml/llama.cpp write) into a temp
    file while loading; yields a function returning what was captured."""
    if not enabled:
        yield lambda: ""
        return
    sys.stderr.flush()
    saved = os.dup(2)
    tmp = tempfile.TemporaryFile(mode="w+b")
    os.dup2(tmp.fileno(), 2)
    try:
        def read() -> str:
            tmp.flush()
            tmp.seek(0)
            return tmp.read().decode("utf-8", "replace")
        yield read
    finally:
        sys.stderr.flush()
        os.dup2(saved, 2)
        os.close(saved)


class LoadError(Exception):
    pass


def die(msg: str, log: str = "") -> "None":
    if log:
        sys.stderr.write(log[-4000:] + "\n")
    sys.stderr.write(f"llamacpp_bench: error: {msg}\n")
    sys.exit(1)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True, help="GGUF file")
    ap.add_argument("--threads", type=int, required=True, help="n_threads and n_threads_batch")
    ap.add_argument("--prompt-tokens", type=int, required=True, help="P, prefill length")
    ap.add_argument("--gen-tokens", type=int, required=True, help="G, decode steps")
    ap.add_argument("--repeats", type=int, default=3, help="timed runs, median reported (default 3)")
    ap.add_argument("--warmup", type=int, default=1, help="untimed runs first (default 1)")
    ap.add_argument("--flash-attn", choices=["auto", "on", "off"], default="auto",
                    help="llama.cpp flash-attention setting (default: llama.cpp's default, auto)")
    ap.add_argument("--json", action="store_true", help="one JSON object on stdout")
    ap.add_argument("--verbose", action="store_true", help="keep llama.cpp's logging on stderr")
    ap.add_argument("--quiet-warnings", action="store_true", help="no warning about a busy machine")
    args = ap.parse_args()

    P, G, N, R = args.prompt_tokens, args.gen_tokens, args.threads, args.repeats
    if P < 1 or G < 0 or N < 1 or R < 1 or args.warmup < 0:
        die("need --prompt-tokens >= 1, --gen-tokens >= 0, --threads >= 1, --repeats >= 1")
    if not os.path.isfile(args.model):
        die(f"no such file: {args.model}")

    try:
        import numpy as np
        import llama_cpp
        from llama_cpp import llama_cpp as C
    except ImportError as e:  # pragma: no cover
        die(f"{e}; install with: pip install -r bench/requirements.txt (see bench/README.md)")

    # ---- logging -------------------------------------------------------
    load_before = os.getloadavg()[0]
    ncpu = os.cpu_count() or 1
    if load_before >= 1.0 and not args.quiet_warnings:
        print(f"llamacpp_bench: warning: 1-minute load average is {load_before:.2f} on {ncpu} CPUs; "
              f"other work running makes llama.cpp's threads wait on each other at every barrier "
              f"and the numbers meaningless; benchmark on an idle machine", file=sys.stderr)

    # llama.cpp's log goes to a buffer (shown only if loading fails) unless --verbose
    log_lines: list[str] = []
    if not args.verbose:
        @C.llama_log_callback
        def _collect(level, text, user_data):  # noqa: ARG001
            log_lines.append(text.decode("utf-8", "replace") if text else "")
            if len(log_lines) > 4000:
                del log_lines[:2000]
        C.llama_log_set(_collect, ctypes.c_void_p(0))
        main._keep = _collect  # keep the callback alive

    # ---- load ----------------------------------------------------------
    try:
        with captured_stderr(not args.verbose) as load_log:
            C.llama_backend_init()
            mparams = C.llama_model_default_params()
            mparams.n_gpu_layers = 0          # CPU only; mmap etc. left at defaults
            t_load0 = time.perf_counter()
            model = C.llama_model_load_from_file(args.model.encode(), mparams)
            if not model:
                raise LoadError(f"llama.cpp failed to load {args.model}", load_log())
            vocab = C.llama_model_get_vocab(model)
            n_vocab = C.llama_vocab_n_tokens(vocab)

            cparams = C.llama_context_default_params()
            n_ctx = P + G + 16
            n_ctx = ((n_ctx + 255) // 256) * 256
            cparams.n_ctx = n_ctx
            cparams.n_batch = max(P, 1)       # the whole prompt is one llama_decode call
            cparams.n_threads = N
            cparams.n_threads_batch = N
            cparams.no_perf = False
            cparams.flash_attn_type = {"auto": C.LLAMA_FLASH_ATTN_TYPE_AUTO,
                                       "on": C.LLAMA_FLASH_ATTN_TYPE_ENABLED,
                                       "off": C.LLAMA_FLASH_ATTN_TYPE_DISABLED}[args.flash_attn]
            ctx = C.llama_init_from_model(model, cparams)
            if not ctx:
                raise LoadError("llama.cpp failed to create a context", load_log())
            load_s = time.perf_counter() - t_load0
    except LoadError as e:
        die(e.args[0], "".join(log_lines)[-3000:] + e.args[1])
    n_ubatch = C.llama_n_ubatch(ctx) if hasattr(C, "llama_n_ubatch") else None

    desc_buf = ctypes.create_string_buffer(256)
    C.llama_model_desc(model, desc_buf, ctypes.sizeof(desc_buf))
    arch_buf = ctypes.create_string_buffer(64)
    C.llama_model_meta_val_str(model, b"general.architecture", arch_buf, ctypes.sizeof(arch_buf))
    mem = C.llama_get_memory(ctx)

    prompt = [(i % (n_vocab - 1)) + 1 for i in range(1, P + 1)]  # ids 1..P, never 0
    batch_p = C.llama_batch_init(P, 0, 1)
    batch_1 = C.llama_batch_init(1, 0, 1)

    def fill(batch, toks, pos0, last_logits=True):
        for i, t in enumerate(toks):
            batch.token[i] = t
            batch.pos[i] = pos0 + i
            batch.n_seq_id[i] = 1
            batch.seq_id[i][0] = 0
            batch.logits[i] = 0
        if last_logits:
            batch.logits[len(toks) - 1] = 1
        batch.n_tokens = len(toks)

    def argmax_last():
        ptr = C.llama_get_logits_ith(ctx, -1)   # synchronizes with the backend
        return int(np.ctypeslib.as_array(ptr, shape=(n_vocab,)).argmax())

    def one_run():
        C.llama_memory_clear(mem, True)
        fill(batch_p, prompt, 0)               # filled before the clock starts
        t0 = time.perf_counter()
        rc = C.llama_decode(ctx, batch_p)
        if rc != 0:
            die(f"llama_decode(prefill of {P} tokens) returned {rc}")
        ptr = C.llama_get_logits_ith(ctx, -1)
        t1 = time.perf_counter()
        tok = int(np.ctypeslib.as_array(ptr, shape=(n_vocab,)).argmax())
        t2 = time.perf_counter()
        for i in range(G):
            batch_1.token[0] = tok
            batch_1.pos[0] = P + i
            batch_1.n_seq_id[0] = 1
            batch_1.seq_id[0][0] = 0
            batch_1.logits[0] = 1
            batch_1.n_tokens = 1
            rc = C.llama_decode(ctx, batch_1)
            if rc != 0:
                die(f"llama_decode(decode step {i}) returned {rc}")
            tok = argmax_last()
        t3 = time.perf_counter()
        return t1 - t0, t3 - t2

    try:
        for _ in range(args.warmup):
            one_run()
        prefill_s, decode_s, internal = [], [], []
        for _ in range(R):
            C.llama_perf_context_reset(ctx)
            p_s, d_s = one_run()
            perf = C.llama_perf_context(ctx)
            prefill_s.append(p_s)
            decode_s.append(d_s)
            internal.append((perf.t_p_eval_ms, perf.n_p_eval, perf.t_eval_ms, perf.n_eval))
    finally:
        C.llama_batch_free(batch_p)
        C.llama_batch_free(batch_1)

    med_p = statistics.median(prefill_s)
    med_d = statistics.median(decode_s) if G else 0.0
    prefill_tok_s = P / med_p
    decode_tok_s = (G / med_d) if G else None

    # llama.cpp's own counters (decode: every single-token llama_decode call)
    int_p = statistics.median(n * 1000.0 / t for t, n, _, _ in internal if t > 0 and n > 0) \
        if any(t > 0 for t, *_ in internal) else None
    int_d = [n * 1000.0 / t for _, _, t, n in internal if t > 0 and n > 0]
    int_d = statistics.median(int_d) if int_d else None

    lcpp_ver = getattr(llama_cpp, "__version__", "?")
    result = {
        "engine": "llama.cpp",
        "version": f"llama-cpp-python {lcpp_ver}"
                   + (f" (llama.cpp {VENDORED_LLAMA_CPP[lcpp_ver]})" if lcpp_ver in VENDORED_LLAMA_CPP else ""),
        "threads": N,
        "prompt_tokens": P,
        "gen_tokens": G,
        "prefill_tok_s": round(prefill_tok_s, 3),
        "decode_tok_s": round(decode_tok_s, 3) if decode_tok_s is not None else None,
        "repeats": R,
        "prefill_s": [round(x, 6) for x in prefill_s],
        "decode_s": [round(x, 6) for x in decode_s] if G else [],
        "llama_internal": {
            "prefill_tok_s": round(int_p, 3) if int_p else None,
            "decode_tok_s": round(int_d, 3) if int_d else None,
        },
        "model": os.path.abspath(args.model),
        "model_desc": desc_buf.value.decode("utf-8", "replace"),
        "arch": arch_buf.value.decode("utf-8", "replace"),
        "model_params": int(C.llama_model_n_params(model)),
        "model_bytes": int(C.llama_model_size(model)),
        "n_vocab": int(n_vocab),
        "n_ctx": n_ctx,
        "n_batch": max(P, 1),
        "n_ubatch": n_ubatch,
        "flash_attn": args.flash_attn,
        "load_s": round(load_s, 3),
        "loadavg_1m_before": round(load_before, 2),
        "loadavg_1m_after": round(os.getloadavg()[0], 2),
        "cpus": ncpu,
        "system_info": C.llama_print_system_info().decode("utf-8", "replace").strip(),
    }

    human = (f"llama.cpp [{result['model_desc']}] threads={N}: "
             f"prefill {P} tok: {prefill_tok_s:.2f} tok/s | "
             + (f"decode {G} tok: {decode_tok_s:.2f} tok/s" if G else "decode skipped")
             + f"  (median of {R}; llama.cpp internal: "
             f"{result['llama_internal']['prefill_tok_s']} / {result['llama_internal']['decode_tok_s']} tok/s)")
    if args.json:
        print(human, file=sys.stderr)
        print(json.dumps(result))
    else:
        print(human)
    sys.stdout.flush()

    C.llama_free(ctx)
    C.llama_model_free(model)
    C.llama_backend_free()
    return 0


if __name__ == "__main__":
    sys.exit(main())
