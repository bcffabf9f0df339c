#!/usr/bin/env python3
"""hf_quant_seeds.py — makes the seeds of fuzz/fuzz_hf_quant.c from folders `qlab quant --to X` wrote:
each seed is u16 len(config.json) + config.json + model.safetensors, with the embedding cut to 16 rows
(vocab_size 16) so seeds stay small. Usage: hf_quant_seeds.py OUT_DIR FOLDER..."""
import json, os, struct, sys

def shrink(folder):
    cfg = json.load(open(os.path.join(folder, "config.json")))
    cfg["vocab_size"] = 16
    for k in ("bos_token_id", "eos_token_id"):
        cfg.pop(k, None)
    raw = open(os.path.join(folder, "model.safetensors"), "rb").read()
    n = struct.unpack("<Q", raw[:8])[0]
    hdr = json.loads(raw[8:8 + n])
    data = raw[8 + n:]
    out_hdr, blobs, off = {}, [], 0
    for name, t in hdr.items():
        if name == "__metadata__":
            continue
        a, b = t["data_offsets"]
        blob = data[a:b]
        if name in ("model.embed_tokens.weight", "lm_head.weight"):
            row = len(blob) // t["shape"][0]
            blob = blob[:16 * row]
            t = dict(t, shape=[16] + t["shape"][1:])
        out_hdr[name] = dict(t, data_offsets=[off, off + len(blob)])
        blobs.append(blob)
        off += len(blob)
    h = json.dumps(out_hdr, separators=(",", ":")).encode()
    st = struct.pack("<Q", len(h)) + h + b"".join(blobs)
    c = json.dumps(cfg, separators=(",", ":")).encode()
    return struct.pack("<H", len(c)) + c + st

out = sys.argv[1]
for folder in sys.argv[2:]:
    seed = shrink(folder)
    path = os.path.join(out, os.path.basename(folder.rstrip("/")) + ".seed")
    open(path, "wb").write(seed)
    print(path, len(seed))
