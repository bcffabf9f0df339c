# tests/gguf_rename_arch.py IN.gguf OUT.gguf ARCH — IN with general.architecture = ARCH and every "OLD.*" key renamed
# "ARCH.*": the same tensors under an architecture qlab has no description of (tests/cli_test.sh: quantization by
# tensor names). Plain Python, no gguf package.
import struct, sys
src, out, arch = sys.argv[1:4]
d = open(src, 'rb').read(); o = 4
def u(fmt):
    global o
    v = struct.unpack_from('<' + fmt, d, o); o += struct.calcsize('<' + fmt); return v[0]
SZ = {0: 'B', 1: 'b', 2: 'H', 3: 'h', 4: 'I', 5: 'i', 6: 'f', 7: '?', 10: 'Q', 11: 'q', 12: 'd'}
def skip_val(t):
    global o
    if t == 8: n = u('Q'); o += n; return
    if t == 9:
        et = u('I'); n = u('Q')
        for _ in range(n): skip_val(et)
        return
    o += struct.calcsize('<' + SZ[t])
def S(s): b = s.encode(); return struct.pack('<Q', len(b)) + b
ver = u('I'); nt = u('Q'); nkv = u('Q'); kvs = []; old = None; align = 32
for _ in range(nkv):
    n = u('Q'); key = d[o:o + n].decode(); o += n; t = u('I'); v0 = o; skip_val(t); val = d[v0:o]
    if key == 'general.architecture':
        old = val[8:].decode(); val = S(arch)
    if key == 'general.alignment': align = struct.unpack('<I', val)[0]
    kvs.append([key, t, val])
for kv in kvs:
    if old and kv[0].startswith(old + '.'): kv[0] = arch + kv[0][len(old):]
ti0 = o
for _ in range(nt):
    n = u('Q'); o += n; nd = u('I'); o += 8 * nd + 4 + 8
ti = d[ti0:o]; data0 = (o + align - 1) // align * align
hdr = b'GGUF' + struct.pack('<IQQ', ver, nt, len(kvs)) + b''.join(S(k) + struct.pack('<I', t) + v for k, t, v in kvs) + ti
hdr += b'\0' * ((-len(hdr)) % align)
open(out, 'wb').write(hdr + d[data0:])
