#!/usr/bin/env python3
"""Write a random-weight GGUF that llama.cpp loads, for benchmarking and for
checking what metadata llama.cpp needs.

Two architectures are supported:

* ``qwen2``  - Qwen2.5 layout: q/k/v biases, tied embeddings (no output.weight),
               NEOX-style rope (no q/k permutation).
* ``llama``  - Llama layout: no biases, untied output.weight, "normal"
               (interleaved-pair) rope; q/k rows are expected in llama.cpp's
               permuted order (see --help of --no-permute and README.md).

Examples::

    # Qwen2.5-0.5B shape, Q8_0 matrices
    python3 bench/make_test_gguf.py --preset qwen2.5-0.5b --qtype q8_0 -o /tmp/qwen-q8.gguf
    # a small llama-shaped model
    python3 bench/make_test_gguf.py --arch llama --hidden 256 --intermediate 704 \
        --layers 4 --heads 4 --kv-heads 2 --vocab 4096 --qtype q4_0 -o /tmp/tiny.gguf

Weights are N(0, 0.02) (seeded), norms are 1.0, biases N(0, 0.02); all
1-D tensors are F32, every 2-D matrix (token_embd included) is --qtype.
"""
from __future__ import annotations

import argparse
import sys
import time

import numpy as np

import gguf
from gguf import GGMLQuantizationType as QT

PRESETS = {
    # Qwen/Qwen2.5-0.5B(-Instruct) config.json
    "qwen2.5-0.5b": dict(arch="qwen2", hidden=896, intermediate=4864, layers=24,
                         heads=14, kv_heads=2, vocab=151936, rope_theta=1000000.0,
                         rms_eps=1e-6, context=32768, tied=True, qkv_bias=True,
                         tokenizer_pre="qwen2"),
    # a small llama-architecture model (shape of a ~25M-parameter test model)
    "llama-tiny": dict(arch="llama", hidden=256, intermediate=704, layers=4,
                       heads=4, kv_heads=2, vocab=4096, rope_theta=10000.0,
                       rms_eps=1e-5, context=2048, tied=False, qkv_bias=False,
                       tokenizer_pre="default"),
}

QTYPES = {"f32": QT.F32, "f16": QT.F16, "q8_0": QT.Q8_0, "q4_0": QT.Q4_0}
# general.file_type values (llama_ftype): ALL_F32=0, MOSTLY_F16=1, MOSTLY_Q4_0=2, MOSTLY_Q8_0=7
FILE_TYPE = {"f32": 0, "f16": 1, "q4_0": 2, "q8_0": 7}

# gguf TokenType values
TOKEN_NORMAL, TOKEN_CONTROL = 1, 3


def bytes_to_unicode() -> list[str]:
    """GPT-2 byte-level BPE alphabet: the 256 single-char tokens for bytes 0..255."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) \
        + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    table = dict(zip(bs, (chr(c) for c in cs)))
    return [table[b] for b in range(256)]


def synthetic_vocab(n_vocab: int):
    """tokens, token types, bos id, eos id for a fake byte-level BPE vocab."""
    assert n_vocab >= 260, "vocab must hold the 256 byte tokens plus specials"
    tokens = bytes_to_unicode() + [f"<t{i}>" for i in range(256, n_vocab)]
    types = [TOKEN_NORMAL] * n_vocab
    if n_vocab >= 151646:  # Qwen2 ids
        eot, im_start, im_end = 151643, 151644, 151645
    else:
        eot, im_start, im_end = n_vocab - 3, n_vocab - 2, n_vocab - 1
    for tid, text in ((eot, "<|endoftext|>"), (im_start, "<|im_start|>"), (im_end, "<|im_end|>")):
        tokens[tid] = text
        types[tid] = TOKEN_CONTROL
    return tokens, types, eot, im_end


class Writer(gguf.GGUFWriter):
    """gguf-py refuses empty arrays; llama.cpp's reader does not. Allow them
    (with an explicit sub_type) so an empty merges list can be tested.
    Keys named in `drop` are not written (to probe which keys llama.cpp needs)."""

    drop: set = set()

    def add_key_value(self, key, val, vtype, sub_type=None):
        if key in self.drop:
            return
        super().add_key_value(key, val, vtype, sub_type)

    def _pack_val(self, val, vtype, add_vtype, sub_type=None):
        if vtype == gguf.GGUFValueType.ARRAY and sub_type is not None and len(val) == 0:
            head = self._pack("I", vtype) if add_vtype else b""
            return head + self._pack("I", sub_type) + self._pack("Q", 0)
        return super()._pack_val(val, vtype, add_vtype, sub_type)


def permute_qk(w: np.ndarray, n_head: int) -> np.ndarray:
    """HF (rotate-half) row order -> llama.cpp 'llama' (interleaved pairs) row order.
    Same as LlamaModel.permute in llama.cpp's convert_hf_to_gguf.py. w: [out, in]."""
    return (w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:])
            .swapaxes(1, 2).reshape(w.shape))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("-o", "--output", required=True)
    ap.add_argument("--preset", choices=sorted(PRESETS), default=None)
    ap.add_argument("--arch", choices=["qwen2", "llama"])
    ap.add_argument("--hidden", type=int)
    ap.add_argument("--intermediate", type=int)
    ap.add_argument("--layers", type=int)
    ap.add_argument("--heads", type=int)
    ap.add_argument("--kv-heads", type=int)
    ap.add_argument("--vocab", type=int)
    ap.add_argument("--rope-theta", type=float)
    ap.add_argument("--rms-eps", type=float)
    ap.add_argument("--context", type=int)
    ap.add_argument("--tokenizer-pre")
    ap.add_argument("--qtype", choices=sorted(QTYPES), default="q8_0",
                    help="type of every 2-D matrix (default q8_0)")
    ap.add_argument("--embd-qtype", choices=sorted(QTYPES), default=None,
                    help="type of token_embd.weight (default: --qtype)")
    ap.add_argument("--tokenizer-model", choices=["gpt2", "none"], default="gpt2",
                    help="gpt2: synthetic byte-level BPE vocab (default); none: no vocab, "
                         "only {arch}.vocab_size (llama.cpp's 'no_vocab' path)")
    ap.add_argument("--merges", type=int, choices=[0, 1], default=1,
                    help="number of BPE merges written (0 = empty array; default 1)")
    ap.add_argument("--drop", action="append", default=[], metavar="KEY",
                    help="leave this metadata key out (repeatable; for probing what llama.cpp needs)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    cfg = dict(PRESETS[args.preset or ("llama-tiny" if args.arch == "llama" else "qwen2.5-0.5b")])
    for k in ("arch", "hidden", "intermediate", "layers", "heads", "kv_heads", "vocab",
              "rope_theta", "rms_eps", "context", "tokenizer_pre"):
        v = getattr(args, k)
        if v is not None:
            cfg[k] = v
    if cfg["arch"] == "qwen2":
        cfg.update(tied=True, qkv_bias=True)
    else:
        cfg.update(tied=False, qkv_bias=False)

    arch = cfg["arch"]
    n_embd, n_ff, n_layer = cfg["hidden"], cfg["intermediate"], cfg["layers"]
    n_head, n_head_kv, n_vocab = cfg["heads"], cfg["kv_heads"], cfg["vocab"]
    head_dim = n_embd // n_head
    assert head_dim * n_head == n_embd
    qtype, embd_qtype = QTYPES[args.qtype], QTYPES[args.embd_qtype or args.qtype]
    if args.qtype in ("q8_0", "q4_0") and (n_embd % 32 or n_ff % 32):
        ap.error("q8_0/q4_0 need hidden and intermediate to be multiples of 32 (block size)")

    rng = np.random.default_rng(args.seed)
    t0 = time.time()
    Writer.drop = set(args.drop)
    w = Writer(args.output, arch)  # writes general.architecture (string)

    # ---- metadata -------------------------------------------------------
    w.add_string("general.name", f"agora-random-{arch}")
    w.add_uint32("general.file_type", FILE_TYPE[args.qtype])
    w.add_uint32(f"{arch}.context_length", cfg["context"])
    w.add_uint32(f"{arch}.embedding_length", n_embd)
    w.add_uint32(f"{arch}.block_count", n_layer)
    w.add_uint32(f"{arch}.feed_forward_length", n_ff)
    w.add_uint32(f"{arch}.attention.head_count", n_head)
    w.add_uint32(f"{arch}.attention.head_count_kv", n_head_kv)
    w.add_float32(f"{arch}.rope.freq_base", cfg["rope_theta"])
    w.add_float32(f"{arch}.attention.layer_norm_rms_epsilon", cfg["rms_eps"])
    if arch == "llama":
        w.add_uint32(f"{arch}.rope.dimension_count", head_dim)
    if arch == "llama" or args.tokenizer_model == "none":
        w.add_uint32(f"{arch}.vocab_size", n_vocab)

    if args.tokenizer_model == "none":
        w.add_string("tokenizer.ggml.model", "none")
    else:
        tokens, types, bos, eos = synthetic_vocab(n_vocab)
        w.add_string("tokenizer.ggml.model", "gpt2")
        w.add_string("tokenizer.ggml.pre", cfg["tokenizer_pre"])
        w.add_array("tokenizer.ggml.tokens", tokens)                 # array<string>
        w.add_key_value("tokenizer.ggml.token_type", types,
                        gguf.GGUFValueType.ARRAY, sub_type=gguf.GGUFValueType.INT32)  # array<i32>
        # a BPE vocab needs the merges key (it may be an empty array)
        w.add_key_value("tokenizer.ggml.merges", ["Ġ Ġ"][:args.merges],
                        gguf.GGUFValueType.ARRAY, sub_type=gguf.GGUFValueType.STRING)  # array<string>
        w.add_uint32("tokenizer.ggml.bos_token_id", bos)
        w.add_uint32("tokenizer.ggml.eos_token_id", eos)
        w.add_bool("tokenizer.ggml.add_bos_token", False)

    # ---- tensors --------------------------------------------------------
    def mat(name: str, out_f: int, in_f: int, qt: QT, permute_heads: int = 0) -> None:
        # HF layout [out, in]; numpy row-major [out, in] == GGUF dims [in, out]
        a = (rng.standard_normal((out_f, in_f), dtype=np.float32) * 0.02)
        if permute_heads:
            a = permute_qk(a, permute_heads)
        if qt == QT.F32:
            w.add_tensor(name, a)
        elif qt == QT.F16:
            w.add_tensor(name, a.astype(np.float16))
        else:
            w.add_tensor(name, gguf.quants.quantize(a, qt), raw_dtype=qt)

    def vec(name: str, n: int, ones: bool) -> None:
        a = np.ones(n, np.float32) if ones else rng.standard_normal(n, dtype=np.float32) * 0.02
        w.add_tensor(name, a)

    mat("token_embd.weight", n_vocab, n_embd, embd_qtype)
    vec("output_norm.weight", n_embd, True)
    if not cfg["tied"]:
        mat("output.weight", n_vocab, n_embd, qtype)
    q_out, kv_out = n_head * head_dim, n_head_kv * head_dim
    for i in range(n_layer):
        p = f"blk.{i}."
        vec(p + "attn_norm.weight", n_embd, True)
        # for llama: random weights need no un-permuting, but real HF weights would
        # (llama.cpp's converter applies permute_qk to q with n_head and k with n_head_kv)
        mat(p + "attn_q.weight", q_out, n_embd, qtype)
        mat(p + "attn_k.weight", kv_out, n_embd, qtype)
        mat(p + "attn_v.weight", kv_out, n_embd, qtype)
        if cfg["qkv_bias"]:
            vec(p + "attn_q.bias", q_out, False)
            vec(p + "attn_k.bias", kv_out, False)
            vec(p + "attn_v.bias", kv_out, False)
        mat(p + "attn_output.weight", n_embd, q_out, qtype)
        vec(p + "ffn_norm.weight", n_embd, True)
        mat(p + "ffn_gate.weight", n_ff, n_embd, qtype)
        mat(p + "ffn_up.weight", n_ff, n_embd, qtype)
        mat(p + "ffn_down.weight", n_embd, n_ff, qtype)

    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    print(f"wrote {args.output}: arch={arch} qtype={args.qtype} "
          f"layers={n_layer} hidden={n_embd} vocab={n_vocab} in {time.time() - t0:.1f}s",
          file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
