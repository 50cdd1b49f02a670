#!/usr/bin/env python3
"""Writes the small tokenizer seeds of the fuzz corpora from the real Gemma tokenizer in tests/data/tokenizer:
the control and special tokens, the 256 byte pieces, <start_of_turn>/<end_of_turn> and the single ASCII characters and the most
frequent pieces (lowest ids), renumbered densely, with the merges (tokenizer.json) among the kept pieces. The fuzzer only
needs the structure of the files; a few KB keeps each iteration fast.
Usage: python3 tests/fuzz/minimise_tokenizers.py tests/data/tokenizer OUT_JSON OUT_MODEL"""
import json, struct, sys

src, out_json, out_model = sys.argv[1:4]
KEEP_NORMAL = 120   # NORMAL pieces kept, of the most frequent (ids 473..)

t = json.load(open(src + "/tokenizer.json", encoding="utf-8"))
vocab = t["model"]["vocab"]
by_id = {i: p for p, i in vocab.items()}
singles = [i for p, i in vocab.items() if i >= 473 and (p == "\u2581" or (len(p) == 1 and p.isascii() and p.isprintable()))]
old_ids = sorted(set(list(range(0, 8)) + [106, 107] + list(range(217, 473)) + list(range(473, 473 + KEEP_NORMAL)) + singles))
new_id = {o: n for n, o in enumerate(old_ids)}
kept = {by_id[o] for o in old_ids}
t["model"]["vocab"] = {by_id[o]: new_id[o] for o in old_ids}
merges = []
for m in t["model"]["merges"]:
    a, b = m.split(" ", 1) if isinstance(m, str) else m
    if a in kept and b in kept and a + b in kept:
        merges.append(m)
t["model"]["merges"] = merges
t["added_tokens"] = [dict(a, id=new_id[a["id"]]) for a in t["added_tokens"] if a["id"] in new_id]
with open(out_json, "w", encoding="utf-8") as f:
    json.dump(t, f, ensure_ascii=False, separators=(",", ":"))

# tokenizer.model: a protobuf ModelProto; field 1 (repeated SentencePiece) filtered the same way, the
# other fields (trainer_spec, normalizer_spec, ...) copied as they are.
data = open(src + "/tokenizer.model", "rb").read()

def varint(b, i):
    v = s = 0
    while True:
        c = b[i]; i += 1
        v |= (c & 0x7f) << s; s += 7
        if c < 0x80: return v, i

def put_varint(v):
    o = bytearray()
    while True:
        c = v & 0x7f; v >>= 7
        if v: o.append(c | 0x80)
        else: o.append(c); return bytes(o)

i, pieces, others = 0, [], []
while i < len(data):
    start = i
    key, i = varint(data, i)
    wt = key & 7
    if wt == 2:
        n, i = varint(data, i); i += n
    elif wt == 0:
        _, i = varint(data, i)
    elif wt == 5: i += 4
    elif wt == 1: i += 8
    else: raise SystemExit("unexpected wire type %d" % wt)
    (pieces if key >> 3 == 1 else others).append(data[start:i])
out = bytearray()
for o in old_ids:
    out += pieces[o]
for o in others:
    out += o
open(out_model, "wb").write(bytes(out))
print(out_json, len(open(out_json, "rb").read()), "bytes,", len(merges), "merges;", out_model, len(out), "bytes")
