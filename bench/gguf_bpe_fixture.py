# bench/gguf_bpe_fixture.py MODEL.gguf TOKENIZER.json OUT.gguf PRE — MODEL.gguf (stories260K: 512 rows) with its
# tokenizer replaced by the byte-level BPE of TOKENIZER.json (tests/data/tok/bpe-bytelevel.json, padded with unused
# tokens to the model's rows) and tokenizer.ggml.pre = PRE: a GGUF llama.cpp's llama-tokenize and `qlab tokenize`
# both read, to compare the pre-tokenizers' splits (bench/vs_llamacpp.sh). Plain Python.
import json, struct, sys
src, fix, out, pre_name = sys.argv[1:5]
d = open(src, 'rb').read(); o = 4
def u(fmt):
    global o
    v = struct.unpack_from('<' + fmt, d, o); o += struct.calcsize('<' + fmt); return v[0]
SZ = {0:'B',1:'b',2:'H',3:'h',4:'I',5:'i',6:'f',7:'?',10:'Q',11:'q',12:'d'}
def skip_val(t):
    global o
    if t == 8: n = u('Q'); o += n; return
    if t == 9:
        et = u('I'); n = u('Q')
        for _ in range(n): skip_val(et)
        return
    o += struct.calcsize('<' + SZ[t])
ver = u('I'); nt = u('Q'); nkv = u('Q'); kvs = []; align = 32
for _ in range(nkv):
    s0 = o; n = u('Q'); key = d[o:o+n].decode(); o += n; t = u('I'); skip_val(t)
    if not key.startswith('tokenizer.'): kvs.append(d[s0:o])
ti0 = o
for _ in range(nt):
    n = u('Q'); o += n; nd = u('I'); o += 8 * nd + 4 + 8
ti = d[ti0:o]; data0 = (o + align - 1) // align * align
j = json.load(open(fix))
vocab = j['model']['vocab']; N = 512
toks = ['[PAD%d]' % i for i in range(N)]; types = [5] * N
for t, i in vocab.items(): toks[i] = t; types[i] = 1
for a in j.get('added_tokens', []):
    toks[a['id']] = a['content']; types[a['id']] = 3 if a.get('special') else 4
merges = [m if isinstance(m, str) else ' '.join(m) for m in j['model']['merges']]
def S(s): b = s.encode(); return struct.pack('<Q', len(b)) + b
def kv_str(k, v): return S(k) + struct.pack('<I', 8) + S(v)
def kv_u32(k, v): return S(k) + struct.pack('<II', 4, v)
def kv_bool(k, v): return S(k) + struct.pack('<IB', 7, v)
def kv_arr_str(k, a): return S(k) + struct.pack('<IIQ', 9, 8, len(a)) + b''.join(S(x) for x in a)
def kv_arr_i32(k, a): return S(k) + struct.pack('<IIQ', 9, 5, len(a)) + b''.join(struct.pack('<i', x) for x in a)
kvs += [kv_str('tokenizer.ggml.model', 'gpt2'), kv_str('tokenizer.ggml.pre', pre_name),
        kv_arr_str('tokenizer.ggml.tokens', toks), kv_arr_i32('tokenizer.ggml.token_type', types),
        kv_arr_str('tokenizer.ggml.merges', merges), kv_u32('tokenizer.ggml.bos_token_id', 270),
        kv_u32('tokenizer.ggml.eos_token_id', 268), kv_bool('tokenizer.ggml.add_bos_token', 0)]
hdr = b'GGUF' + struct.pack('<IQQ', ver, nt, len(kvs)) + b''.join(kvs) + ti
hdr += b'\0' * ((-len(hdr)) % align)
open(out, 'wb').write(hdr + d[data0:])
