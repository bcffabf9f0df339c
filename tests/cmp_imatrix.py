# cmp_imatrix.py OURS.gguf REF.gguf — importance (in_sum2/counts) of two llama.cpp imatrix GGUF files agree to 0.5%;
# a MoE expert stack holds one count per expert (the tokens routed to it), which must be equal. The reference's
# router entries (ffn_gate_inp, never quantized) need not be in ours.
import struct, sys
def read(path):
    b = open(path,'rb').read(); p = 0
    def u32():
        nonlocal p; v = struct.unpack_from('<I', b, p)[0]; p += 4; return v
    def u64():
        nonlocal p; v = struct.unpack_from('<Q', b, p)[0]; p += 8; return v
    def s():
        nonlocal p; n = u64(); v = b[p:p+n].decode(); p += n; return v
    sizes = {0:1,1:1,2:2,3:2,4:4,5:4,6:4,7:1,10:8,11:8,12:8}
    def val(t):
        nonlocal p
        if t == 8: return s()
        if t == 9:
            et = u32(); n = u64(); return [val(et) for _ in range(n)]
        p += sizes[t]; return None
    assert b[:4] == b'GGUF'; p = 4; u32(); nt = u64(); nkv = u64()
    for _ in range(nkv): s(); val(u32())
    infos = []
    for _ in range(nt):
        name = s(); nd = u32(); ne = [u64() for _ in range(nd)]; t = u32(); off = u64(); infos.append((name, ne, off))
    p = (p + 31) // 32 * 32
    out = {}
    for name, ne, off in infos:
        n = 1
        for x in ne: n *= x
        out[name] = struct.unpack_from('<%df' % n, b, p + off)
    return out
a = read(sys.argv[1]); r = read(sys.argv[2])
worst = 0
n_cmp = 0; bad = []
for k in r:
    if k.endswith('.in_sum2'):
        if k not in a and 'ffn_gate_inp' in k: continue
        c = k[:-8] + '.counts'
        if len(a[k]) != len(r[k]) or list(a[c]) != list(r[c]): bad.append(k); continue
        n = len(r[k]) // len(r[c])
        x = [v / a[c][j // n] for j, v in enumerate(a[k]) if r[c][j // n] > 0]
        y = [v / r[c][j // n] for j, v in enumerate(r[k]) if r[c][j // n] > 0]
        worst = max(worst, max(abs(p - q) / max(q, 1e-12) for p, q in zip(x, y)))
        n_cmp += 1
print("tensors", n_cmp, "max relative diff of importance: %.3g" % worst, ("; shapes or counts differ: " + " ".join(bad)) if bad else "")
sys.exit(0 if worst < 5e-3 and not bad else 1)
