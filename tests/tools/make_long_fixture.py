#!/usr/bin/python3
"""Writes tests/data/models/long-odd: a random Gemma 2 checkpoint with odd shapes and a sequence
longer than gemma2.h's 128-token prefill chunk and its sliding-window ring, plus the logits of an
independent float64 NumPy forward pass written from the conventions in tests/data/models/README.md.

It checks what the shared fixtures cannot: several prefill chunks, sliding-window rings that wrap,
a single kv head with many query heads, an odd head_dim, F16 weights. Run with Debian's python3-numpy:
    /usr/bin/python3 tests/tools/make_long_fixture.py
"""
import json, os, struct
import numpy as np

OUT = os.path.join(os.path.dirname(__file__), "..", "data", "models", "long-odd")
V, H, I, L, NH, NKV, HD, QPAS, W, ACAP, FCAP = 97, 40, 72, 5, 6, 1, 10, 7.0, 50, 20.0, 15.0
T = 300
rng = np.random.default_rng(20261128)

def f16(a):
    return a.astype(np.float16)

w = {"model.embed_tokens.weight": f16(rng.normal(0, 3 / np.sqrt(H), (V, H))),
     "model.norm.weight": f16(rng.normal(0, 0.3, H))}
for l in range(L):
    p = f"model.layers.{l}."
    w[p + "input_layernorm.weight"] = f16(rng.normal(0, 0.3, H))
    w[p + "post_attention_layernorm.weight"] = f16(rng.normal(3, 0.5, H))
    w[p + "pre_feedforward_layernorm.weight"] = f16(rng.normal(0, 0.3, H))
    w[p + "post_feedforward_layernorm.weight"] = f16(rng.normal(3, 0.5, H))
    w[p + "self_attn.q_proj.weight"] = f16(rng.normal(0, 2.5 / np.sqrt(H), (NH * HD, H)))
    w[p + "self_attn.k_proj.weight"] = f16(rng.normal(0, 2.5 / np.sqrt(H), (NKV * HD, H)))
    w[p + "self_attn.v_proj.weight"] = f16(rng.normal(0, 1 / np.sqrt(H), (NKV * HD, H)))
    w[p + "self_attn.o_proj.weight"] = f16(rng.normal(0, 1 / np.sqrt(NH * HD), (H, NH * HD)))
    w[p + "mlp.gate_proj.weight"] = f16(rng.normal(0, 1 / np.sqrt(H), (I, H)))
    w[p + "mlp.up_proj.weight"] = f16(rng.normal(0, 1 / np.sqrt(H), (I, H)))
    w[p + "mlp.down_proj.weight"] = f16(rng.normal(0, 1 / np.sqrt(I), (H, I)))
ids = [2] + list(rng.integers(3, V, T - 1))

def rms(x, wt):
    return x / np.sqrt((x * x).mean(-1, keepdims=True) + 1e-6) * (1 + wt.astype(np.float64))

def rope(x, pos):  # x [T, heads, HD], rotate-half layout
    half = HD // 2
    inv = 10000.0 ** (-np.arange(half) * 2 / HD)
    ang = pos[:, None] * inv[None, :]
    c, s = np.cos(ang)[:, None, :], np.sin(ang)[:, None, :]
    a, b = x[..., :half], x[..., half:]
    return np.concatenate([a * c - b * s, b * c + a * s], -1)

W64 = {k: v.astype(np.float64) for k, v in w.items()}
x = W64["model.embed_tokens.weight"][ids] * np.sqrt(H)
pos = np.arange(T, dtype=np.float64)
for l in range(L):
    p = f"model.layers.{l}."
    h = rms(x, W64[p + "input_layernorm.weight"])
    q = rope((h @ W64[p + "self_attn.q_proj.weight"].T).reshape(T, NH, HD), pos)
    k = rope((h @ W64[p + "self_attn.k_proj.weight"].T).reshape(T, NKV, HD), pos)
    v = (h @ W64[p + "self_attn.v_proj.weight"].T).reshape(T, NKV, HD)
    out = np.zeros((T, NH, HD))
    i_idx, j_idx = np.arange(T)[:, None], np.arange(T)[None, :]
    allowed = j_idx <= i_idx
    if l % 2 == 0:
        allowed &= j_idx > i_idx - W
    for hh in range(NH):
        kv = hh // (NH // NKV)
        sc = (q[:, hh, :] @ k[:, kv, :].T) * QPAS ** -0.5
        sc = ACAP * np.tanh(sc / ACAP)
        sc = np.where(allowed, sc, -np.inf)
        sc = np.exp(sc - sc.max(-1, keepdims=True))
        sc /= sc.sum(-1, keepdims=True)
        out[:, hh, :] = sc @ v[:, kv, :]
    a = out.reshape(T, NH * HD) @ W64[p + "self_attn.o_proj.weight"].T
    x = x + rms(a, W64[p + "post_attention_layernorm.weight"])
    h = rms(x, W64[p + "pre_feedforward_layernorm.weight"])
    g = h @ W64[p + "mlp.gate_proj.weight"].T
    g = 0.5 * g * (1 + np.tanh(np.sqrt(2 / np.pi) * (g + 0.044715 * g ** 3)))
    m = (g * (h @ W64[p + "mlp.up_proj.weight"].T)) @ W64[p + "mlp.down_proj.weight"].T
    x = x + rms(m, W64[p + "post_feedforward_layernorm.weight"])
logits = rms(x, W64["model.norm.weight"]) @ W64["model.embed_tokens.weight"].T
logits = FCAP * np.tanh(logits / FCAP)

os.makedirs(OUT, exist_ok=True)
cfg = {"architectures": ["Gemma2ForCausalLM"], "model_type": "gemma2", "vocab_size": V, "hidden_size": H,
       "intermediate_size": I, "num_hidden_layers": L, "num_attention_heads": NH, "num_key_value_heads": NKV,
       "head_dim": HD, "query_pre_attn_scalar": QPAS, "sliding_window": W, "attn_logit_softcapping": ACAP,
       "final_logit_softcapping": FCAP, "max_position_embeddings": 512, "rms_norm_eps": 1e-6,
       "rope_theta": 10000.0, "hidden_activation": "gelu_pytorch_tanh", "bos_token_id": 2, "eos_token_id": 1,
       "pad_token_id": 0, "torch_dtype": "float16"}
json.dump(cfg, open(os.path.join(OUT, "config.json"), "w"), indent=2, sort_keys=True)
header, blobs, off = {"__metadata__": {"format": "pt"}}, [], 0
for name in sorted(w):
    b = w[name].tobytes()
    header[name] = {"dtype": "F16", "shape": list(w[name].shape), "data_offsets": [off, off + len(b)]}
    blobs.append(b)
    off += len(b)
hj = json.dumps(header, separators=(",", ":")).encode()
hj += b" " * (-len(hj) % 8)
with open(os.path.join(OUT, "model.safetensors"), "wb") as f:
    f.write(struct.pack("<Q", len(hj)) + hj + b"".join(blobs))
logits.astype("<f4").tofile(os.path.join(OUT, "logits.f32"))
json.dump({"ids": [int(i) for i in ids], "logits_shape": [T, V], "oracle": "tests/tools/make_long_fixture.py (NumPy float64)"},
          open(os.path.join(OUT, "reference.json"), "w"))
print("wrote", OUT)
