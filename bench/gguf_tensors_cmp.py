# bench/gguf_tensors_cmp.py A.gguf B.gguf — do two GGUF files hold the same tensors (names, ggml types, data bytes)?
# Used by bench/vs_llamacpp.sh to check qlab quant against llama-quantize; plain Python, no numpy. Prints the
# tensors that differ, then one summary line.
import struct, sys
def read(path):
    f = open(path, 'rb'); d = f.read(); f.close()
    o = 0
    def u(fmt):
        nonlocal o
        v = struct.unpack_from('<' + fmt, d, o); o += struct.calcsize('<' + fmt); return v[0]
    def s():
        nonlocal o
        n = u('Q'); v = d[o:o+n]; o += n; return v.decode('utf-8', 'replace')
    SZ = {0:'B',1:'b',2:'H',3:'h',4:'I',5:'i',6:'f',7:'?',10:'Q',11:'q',12:'d'}
    def val(t):
        if t == 8: return s()
        if t == 9:
            et = u('I'); n = u('Q'); return [val(et) for _ in range(n)]
        return u(SZ[t])
    assert d[:4] == b'GGUF'; o = 4
    ver = u('I'); nt = u('Q'); nkv = u('Q')
    kv = {}
    for _ in range(nkv):
        k = s(); t = u('I'); kv[k] = val(t)
    ts = []
    for _ in range(nt):
        name = s(); nd = u('I'); dims = [u('Q') for _ in range(nd)]; ty = u('I'); off = u('Q')
        ts.append([name, dims, ty, off])
    al = kv.get('general.alignment', 32)
    base = (o + al - 1) // al * al
    offs = sorted(t[3] for t in ts) + [len(d) - base]
    for t in ts:
        i = offs.index(t[3]); t.append(offs[i+1] - t[3]); t[3] += base
    return d, {t[0]: t for t in ts}
da, A = read(sys.argv[1]); db, B = read(sys.argv[2])
same = diff = tdiff = 0
for n, ta in A.items():
    tb = B.get(n)
    if not tb: print('missing in b:', n); diff += 1; continue
    if ta[2] != tb[2]: print('type differs', n, ta[2], tb[2]); tdiff += 1; continue
    sz = min(ta[4], tb[4])
    if da[ta[3]:ta[3]+sz] == db[tb[3]:tb[3]+sz]: same += 1
    else:
        diff += 1
        a = da[ta[3]:ta[3]+sz]; b = db[tb[3]:tb[3]+sz]
        nb = sum(1 for x, y in zip(a, b) if x != y)
        print('bytes differ', n, 'type', ta[2], '%d/%d bytes' % (nb, sz))
print('%d identical, %d differ, %d other type' % (same, diff, tdiff))
