#!/usr/bin/env python3
"""decode_hf_quant.py EXPORT_DIR REF_DIR [QUANT.gguf] — an independent decoder for the quantized Hugging Face folders
qlab exports (--to gptq, awq, compressed-tensors, bnb, exl2), written from each ecosystem's published layout
(docs/formats.md § Exporters) with NumPy only. It reads EXPORT_DIR's config.json quantization_config and
its safetensors (one file or shards + model.safetensors.index.json), dequantizes every quantized linear,
and requires every weight to equal, bit for bit, REF_DIR's F32 tensor of the same name — REF_DIR being
`qlab convert QUANTIZED.gguf --type f32` of the same plan, i.e. qlab's own dequantization.
With QUANT.gguf (the same plan written as GGUF), the activation schemes it carries (qlab.act.* keys, read
here with a GGUF reader of its own) must be what compressed-tensors' config says for each module:
input_activations per token with `dynamic: true`, or per tensor with an input_scale equal to the GGUF's
qlab.act.scale bit for bit; a module without a scheme sits in a group with input_activations null.
Prints one line per target checked; exits 1 on any mismatch or missing tensor."""
import json, os, re, struct, sys
import numpy as np

DT = {"F32": np.float32, "F16": np.float16, "I32": np.int32, "I64": np.int64, "U8": np.uint8, "I8": np.int8,
      "F8_E4M3": np.uint8, "BF16": np.uint16, "I16": np.int16}


def fp8_e4m3_table():
    # OCP E4M3 "fn": bias 7, 3 mantissa bits, subnormals, no infinities, S.1111.111 = NaN
    t = np.zeros(256, dtype=np.float32)
    for c in range(256):
        s, e, m = c >> 7, (c >> 3) & 15, c & 7
        v = (m / 8.0) * 2.0 ** -6 if e == 0 else (1 + m / 8.0) * 2.0 ** (e - 7)
        if e == 15 and m == 7:
            v = np.nan
        t[c] = -v if s else v
    return t


def read_safetensors(path):
    with open(path, "rb") as f:
        raw = f.read()
    n = struct.unpack("<Q", raw[:8])[0]
    hdr = json.loads(raw[8:8 + n])
    base = 8 + n
    out = {}
    for name, info in hdr.items():
        if name == "__metadata__":
            continue
        a, b = info["data_offsets"]
        arr = np.frombuffer(raw[base + a:base + b], dtype=DT[info["dtype"]]).reshape(info["shape"])
        if info["dtype"] == "BF16":
            arr = (arr.astype(np.uint32) << 16).view(np.float32)
        out[name] = (info["dtype"], arr)
    return out


def read_folder(d):
    idx = os.path.join(d, "model.safetensors.index.json")
    if os.path.exists(idx):
        wm = json.load(open(idx))["weight_map"]
        out = {}
        for shard in sorted(set(wm.values())):
            part = read_safetensors(os.path.join(d, shard))
            for k in part:
                if wm.get(k) != shard:
                    raise SystemExit(f"{d}: {k} is in {shard} but the index says {wm.get(k)}")
            out.update(part)
        if set(out) != set(wm):
            raise SystemExit(f"{d}: index and shards disagree: {sorted(set(out) ^ set(wm))[:5]}")
        return out
    return read_safetensors(os.path.join(d, "model.safetensors"))


def unpack_stream(words, bits, count):
    """words: uint32 [..., W] read as one LSB-first bit stream along the last axis; count values of `bits`."""
    w = words.astype(np.uint64)
    b = (w[..., :, None] >> np.arange(32, dtype=np.uint64)) & 1           # [..., W, 32]
    b = b.reshape(*w.shape[:-1], w.shape[-1] * 32)[..., :count * bits]
    b = b.reshape(*w.shape[:-1], count, bits)
    return (b << np.arange(bits, dtype=np.uint64)).sum(-1).astype(np.int64)


def dq(q, z, s):
    return (q - z).astype(np.float32) * s.astype(np.float32)


def gptq(t, m, qc):
    bits = qc["bits"]
    qw, qz, sc, gi = (t[m + "." + k][1] for k in ("qweight", "qzeros", "scales", "g_idx"))
    K, N = qw.shape[0] * 32 // bits, qw.shape[1]
    q = unpack_stream(qw.view(np.uint32).T, bits, K)                     # [N, K]
    z = unpack_stream(qz.view(np.uint32), bits, N) + 1                   # [ng, N], v1: stored zero + 1
    g = gi.astype(np.int64)
    return dq(q, z[g, :].T, sc[g, :].T)


AWQ_ORDER = [0, 2, 4, 6, 1, 3, 5, 7]


def awq_unpack(words):
    w = words.view(np.uint32).astype(np.int64)
    out = np.zeros((w.shape[0], w.shape[1] * 8), dtype=np.int64)
    for i in range(8):
        out[:, AWQ_ORDER[i]::8] = (w >> (4 * i)) & 15
    return out


def awq(t, m, qc):
    q = awq_unpack(t[m + ".qweight"][1])                                  # [K, N]
    z = awq_unpack(t[m + ".qzeros"][1])                                   # [ng, N]
    s = t[m + ".scales"][1]
    K = q.shape[0]
    g = np.arange(K) // qc["group_size"]
    return dq(q, z[g, :], s[g, :]).T


def ct_group(qc, m):
    for grp in qc["config_groups"].values():
        for tg in grp["targets"]:
            if tg == "Linear" or (tg.startswith("re:") and re.match(tg[3:], m)):
                return grp
    return None


def ct(t, m, qc):
    grp = ct_group(qc, m)
    if grp is None:
        raise SystemExit(f"{m}: no config group targets it")
    wa = grp["weights"]
    strat = wa["strategy"]
    if m + ".weight_global_scale" in t:
        # nvfp4-pack-quantized (compressed-tensors' NVFP4PackedCompressor): two E2M1 codes per byte, low nibble
        # first, bit 3 the sign; dequantize: code * (weight_scale / weight_global_scale), in float32
        pk = t[m + ".weight_packed"][1].astype(np.int64)
        N, K = pk.shape[0], pk.shape[1] * 2
        codes = np.zeros((N, K), dtype=np.int64)
        codes[:, 0::2], codes[:, 1::2] = pk & 15, pk >> 4
        e2m1 = np.array([0, .5, 1, 1.5, 2, 3, 4, 6, -0., -.5, -1, -1.5, -2, -3, -4, -6], dtype=np.float32)
        sc = fp8_e4m3_table()[t[m + ".weight_scale"][1]] / t[m + ".weight_global_scale"][1].reshape(-1)[0]
        if wa["strategy"] != "tensor_group" or wa["group_size"] != 16:
            raise SystemExit(f"{m}: nvfp4 with strategy {wa['strategy']} / group {wa['group_size']}")
        return e2m1[codes] * sc.astype(np.float32)[:, np.arange(K) // 16]
    if m + ".weight_packed" in t:
        bits = wa["num_bits"]
        pf = 32 // bits
        N, K = (int(v) for v in t[m + ".weight_shape"][1])
        pk = t[m + ".weight_packed"][1].view(np.uint32).astype(np.int64)
        q = np.zeros((N, pk.shape[1] * pf), dtype=np.int64)
        for i in range(pf):
            q[:, i::pf] = (pk >> (bits * i)) & ((1 << bits) - 1)
        q = q[:, :K] - (1 << (bits - 1))
        s = t[m + ".weight_scale"][1]
        if wa["symmetric"]:
            z = np.zeros(s.shape if s.ndim == 2 else (1, 1), dtype=np.int64)
        else:
            zp = t[m + ".weight_zero_point"][1].view(np.uint32).astype(np.int64)
            z = np.zeros((zp.shape[0] * pf, zp.shape[1]), dtype=np.int64)
            for i in range(pf):
                z[i::pf, :] = (zp >> (bits * i)) & ((1 << bits) - 1)
            z = z[:N] - (1 << (bits - 1))
    else:
        codes = t[m + ".weight"][1]
        N, K = codes.shape
        q = fp8_e4m3_table()[codes]
        s = t[m + ".weight_scale"][1]
        z = None
    if strat == "group":
        cols = np.arange(K) // wa["group_size"]
        S, Z = s[:, cols], (z[:, cols] if z is not None else None)
    elif strat == "channel":
        S, Z = np.repeat(s.reshape(N, 1), K, 1), (np.repeat(z.reshape(N, -1)[:, :1], K, 1) if z is not None else None)
    elif strat == "tensor":
        S, Z = np.full((N, K), s.reshape(-1)[0], dtype=s.dtype), (np.zeros((N, K), np.int64) if z is not None else None)
    elif strat == "block":
        bs0, bs1 = wa["block_structure"]
        S, Z = s[np.arange(N)[:, None] // bs0, np.arange(K)[None, :] // bs1], None
    else:
        raise SystemExit(f"{m}: strategy {strat} not understood")
    if Z is None:
        return q.astype(np.float32) * S.astype(np.float32)
    return dq(q, Z, S)


def bnb(t, m, qc):
    """bitsandbytes 8-bit (weight + SCB) or 4-bit (transformers' load_in_4bit save): flattened codes, high nibble first, blocks of
    `blocksize` with an absmax each; double quantization codes the absmax with the nested map."""
    w = m + ".weight"
    if m + ".SCB" in t:
        # LLM.int8 (load_in_8bit): bitsandbytes' int8_vectorwise_dequant, A * SCB * 7.874015718698502e-3 in float32
        a, scb = t[w][1].astype(np.float32), t[m + ".SCB"][1].astype(np.float32)
        return (a * scb.reshape(-1, 1)) * np.float32(7.874015718698502e-3)
    qs_key = [k for k in t if k.startswith(w + ".quant_state.bitsandbytes__")]
    qs = json.loads(bytes(t[qs_key[0]][1]).decode("utf-8"))
    packed = t[w][1].reshape(-1)
    codes = np.empty(packed.size * 2, dtype=np.int64)
    codes[0::2], codes[1::2] = packed >> 4, packed & 15
    qmap = t[w + ".quant_map"][1]
    absmax = t[w + ".absmax"][1]
    if "nested_absmax" in [k.split(".")[-1] for k in t if k.startswith(w + ".")]:
        nmap, nabs = t[w + ".nested_quant_map"][1], t[w + ".nested_absmax"][1]
        b = np.arange(absmax.size) // qs["nested_blocksize"]
        absmax = nmap[absmax.astype(np.int64)] * nabs[b] + np.float32(qs["nested_offset"])
    N, K = qs["shape"]
    vals = qmap[codes[:N * K]] * absmax[np.arange(N * K) // qs["blocksize"]]
    return vals.astype(np.float32).reshape(N, K)


def f16(x):
    """float32 -> float16 -> float32 with numpy's round to nearest even (what CUDA's __float2half_rn does)."""
    return np.asarray(x, dtype=np.float32).astype(np.float16).astype(np.float32)


def exl2(t, m, qc):
    """ExLlamaV2 EXL2 (exllamav2/ext.py make_q_matrix, exllamav2_ext/cuda/q_matrix.cu reconstruct_kernel,
    quant/qdq_*.cuh): q_groups holds (bits, first q_weight row) per group; a group's rows are its q_weight rows
    times 32 / bits (the last group: what is left of K). Codes run down each output column as one LSB-first
    bit stream; the loader multiplies q_scale_max by 1/256 (rounded to fp16), each output's scale is
    fp16((qs + 1)^2 * that), each weight fp16((q - 2^(bits-1)) * scale), and row k of the permuted order is
    input q_perm[k] = argsort(q_invperm)[k]."""
    qw = t[m + ".q_weight"][1].view(np.uint32).astype(np.uint64)            # [qrows, N]
    qs = t[m + ".q_scale"][1].view(np.uint32).astype(np.int64)              # [G, N/8]
    smax = t[m + ".q_scale_max"][1].astype(np.float32)                      # [G]
    groups = t[m + ".q_groups"][1].astype(np.int64).reshape(-1, 2)          # [G, 2]
    invperm = t[m + ".q_invperm"][1].astype(np.int64)
    K, N, G = invperm.size, qw.shape[1], groups.shape[0]
    perm = np.argsort(invperm)
    if m + ".q_perm" in t and not np.array_equal(t[m + ".q_perm"][1].astype(np.int64), perm):
        raise SystemExit(f"{m}: q_perm is not argsort(q_invperm)")
    ms = f16(smax / np.float32(256))
    out = np.zeros((K, N), dtype=np.float32)                                # permuted rows
    row = 0
    for g in range(G):
        bits, q0 = int(groups[g, 0]), int(groups[g, 1])
        q1 = int(groups[g + 1, 1]) if g + 1 < G else qw.shape[0]
        rows = (q1 - q0) * 32 // bits if g + 1 < G else K - row
        codes = unpack_stream(qw[q0:q1, :].T.astype(np.uint32), bits, rows)  # [N, rows]
        qsn = np.zeros(N, dtype=np.int64)
        for i in range(8):
            qsn[i::8] = (qs[g] >> (4 * i)) & 15
        scale = f16(((qsn + 1) ** 2).astype(np.float32) * ms[g])
        out[row:row + rows, :] = f16((codes.T - (1 << (bits - 1))).astype(np.float32) * scale[None, :])
        row += rows
    w = np.zeros((N, K), dtype=np.float32)
    w[:, perm] = out.T
    return w


def read_gguf_kv(path):
    """The metadata of a GGUF file (v2/v3): {key: value}."""
    raw = open(path, "rb").read()
    if raw[:4] != b"GGUF":
        raise SystemExit(f"{path}: not a GGUF file")
    pos = 8
    n_kv = struct.unpack_from("<Q", raw, pos + 8)[0]
    pos += 16
    scalar = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q", 12: "<d"}

    def value(t, pos):
        if t == 8:
            n = struct.unpack_from("<Q", raw, pos)[0]
            return raw[pos + 8:pos + 8 + n].decode("utf-8"), pos + 8 + n
        if t == 9:
            et, n = struct.unpack_from("<IQ", raw, pos)
            pos += 12
            items = []
            for _ in range(n):
                v, pos = value(et, pos)
                items.append(v)
            return items, pos
        fmt = scalar[t]
        return struct.unpack_from(fmt, raw, pos)[0], pos + struct.calcsize(fmt)

    kv = {}
    for _ in range(n_kv):
        n = struct.unpack_from("<Q", raw, pos)[0]
        key = raw[pos + 8:pos + 8 + n].decode("utf-8")
        pos += 8 + n
        t = struct.unpack_from("<I", raw, pos)[0]
        kv[key], pos = value(t, pos + 4)
        if t == 6:  # keep the exact f32 bits for comparison
            kv[key] = np.float32(kv[key])
    return kv


HF_MODULE = {"attn_q": "self_attn.q_proj", "attn_k": "self_attn.k_proj", "attn_v": "self_attn.v_proj",
             "attn_output": "self_attn.o_proj", "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj",
             "ffn_down": "mlp.down_proj"}


def hf_module(gguf_weight):
    if gguf_weight == "output.weight":
        return "lm_head"
    mt = re.match(r"blk\.(\d+)\.(\w+)\.weight$", gguf_weight)
    return f"model.layers.{mt.group(1)}.{HF_MODULE[mt.group(2)]}"


def group_of(qc, module):
    for name, g in qc.get("config_groups", {}).items():
        for tg in g["targets"]:
            if tg == "Linear" or (tg.startswith("re:") and re.match(tg[3:], module)):
                return g
    return None


def check_activations(t, qc, gguf):
    """Returns the number of failures: every module's input scheme in config.json and its input_scale against
    the GGUF's qlab.act.* keys."""
    kv = read_gguf_kv(gguf)
    want = {}
    for k, v in kv.items():
        if k.startswith("qlab.act.mode."):
            w = k[len("qlab.act.mode."):]
            want[hf_module(w)] = (v, kv.get("qlab.act.scale." + w))
    bad = n = 0
    modules = {k[:-len(".weight_scale")] for k in t if k.endswith(".weight_scale")}
    for m in sorted(modules | set(want)):
        g = group_of(qc, m)
        ia = g.get("input_activations") if g else None
        mode, scale = want.get(m, (None, None))
        if mode is None:
            ok = ia is None and m + ".input_scale" not in t
        else:
            fp, static = mode.startswith("fp8"), mode.endswith("_tensor")
            ok = ia is not None and ia["num_bits"] == 8 and ia["type"] == ("float" if fp else "int") \
                and ia["strategy"] == ("tensor" if static else "token") and ia["dynamic"] == (not static)
            if static:
                got = t.get(m + ".input_scale")
                ok = ok and got is not None and got[0] == "F32" and got[1].shape == (1,) \
                    and got[1].view(np.uint32)[0] == np.float32(scale).view(np.uint32)
            else:
                ok = ok and m + ".input_scale" not in t
            n += 1
        if not ok:
            print(f"FAIL {m}: input activations {ia} do not say {mode} (scale {scale})")
            bad += 1
    print(f"activations: {n} quantized inputs checked against {os.path.basename(gguf)}")
    return bad


def main():
    exp, ref = sys.argv[1], sys.argv[2]
    qc = json.load(open(os.path.join(exp, "config.json")))["quantization_config"]
    method = qc["quant_method"]
    t, r = read_folder(exp), read_folder(ref)
    decode = {"gptq": gptq, "awq": awq, "compressed-tensors": ct, "bitsandbytes": bnb, "exl2": exl2}[method]
    bad = nq = nf = 0
    used = set()
    for name, (dt, want) in sorted(r.items()):
        if want.dtype != np.float32:
            want = want.astype(np.float32)
        m = name[:-len(".weight")] if name.endswith(".weight") else name
        if name in t and m + ".weight_scale" not in t and name + ".absmax" not in t and m + ".SCB" not in t:
            got = t[name][1].astype(np.float32)
            used.add(name)
            nf += 1
        else:
            parts = [k for k in t if k.startswith(m + ".")]
            if not parts:
                print(f"FAIL {name}: not in {exp}")
                bad += 1
                continue
            used.update(parts)
            got = decode(t, m, qc)
            nq += 1
        if got.shape != want.shape or not np.array_equal(got.view(np.uint32), want.view(np.uint32)):
            diff = "shape" if got.shape != want.shape else f"{int((got.view(np.uint32) != want.view(np.uint32)).sum())} values"
            print(f"FAIL {name}: {diff} differ")
            bad += 1
    extra = sorted(set(t) - used)
    if extra:
        print(f"FAIL tensors the reference has no weight for: {extra[:5]}")
        bad += 1
    if len(sys.argv) > 3:
        bad += check_activations(t, qc, sys.argv[3])
    print(f"{method}: {nq} quantized and {nf} float tensors decoded; {'all bit-identical' if not bad else f'{bad} FAILED'}")
    sys.exit(1 if bad else 0)


if __name__ == "__main__":
    main()
