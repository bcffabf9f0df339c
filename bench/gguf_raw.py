# bench/gguf_raw.py — a GGUF file's header as raw pieces, for scripts that rewrite metadata and keep the tensors:
# read_raw(path) -> (version, [[key, type, raw value bytes]], raw tensor infos, n_tensors, tensor data, alignment);
# write_raw(path, ...) puts them back, padded to the alignment. Plain Python (bench/gguf_bpe_fixture.py,
# tests/gguf_rename_arch.py).
import struct
SZ = {0: 'B', 1: 'b', 2: 'H', 3: 'h', 4: 'I', 5: 'i', 6: 'f', 7: '?', 10: 'Q', 11: 'q', 12: 'd'}

def gguf_str(s):
    b = s.encode(); return struct.pack('<Q', len(b)) + b

def read_raw(path):
    d = open(path, 'rb').read(); o = 4
    def u(fmt):
        nonlocal o
        v = struct.unpack_from('<' + fmt, d, o); o += struct.calcsize('<' + fmt); return v[0]
    def skip_val(t):
        nonlocal o
        if t == 8: n = u('Q'); o += n; return
        if t == 9:
            et = u('I'); n = u('Q')
            for _ in range(n): skip_val(et)
            return
        o += struct.calcsize('<' + SZ[t])
    ver = u('I'); nt = u('Q'); nkv = u('Q'); kvs = []; align = 32
    for _ in range(nkv):
        n = u('Q'); key = d[o:o + n].decode(); o += n; t = u('I'); v0 = o; skip_val(t)
        kvs.append([key, t, d[v0:o]])
        if key == 'general.alignment': align = struct.unpack('<I', d[v0:o])[0]
    ti0 = o
    for _ in range(nt):
        n = u('Q'); o += n; nd = u('I'); o += 8 * nd + 4 + 8
    data0 = (o + align - 1) // align * align
    return ver, kvs, d[ti0:o], nt, d[data0:], align

def write_raw(path, ver, kvs, ti, nt, data, align):
    hdr = b'GGUF' + struct.pack('<IQQ', ver, nt, len(kvs))
    hdr += b''.join(gguf_str(k) + struct.pack('<I', t) + v for k, t, v in kvs) + ti
    hdr += b'\0' * ((-len(hdr)) % align)
    open(path, 'wb').write(hdr + data)
