# bench/gguf_bpe_fixture.py MODEL.gguf TOKENIZER.json OUT.gguf PRE — MODEL.gguf (stories260K: 512 rows) with its
# tokenizer replaced by the byte-level BPE of TOKENIZER.json (tests/data/tok/bpe-bytelevel.json, padded with unused
# tokens to the model's rows) and tokenizer.ggml.pre = PRE: a GGUF llama.cpp's llama-tokenize and `qlab tokenize`
# both read, to compare the pre-tokenizers' splits (bench/vs_llamacpp.sh). Plain Python.
import json, os, struct, sys
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from gguf_raw import gguf_str as S, read_raw, write_raw
src, fix, out, pre_name = sys.argv[1:5]
ver, kvs, ti, nt, data, align = read_raw(src)
kvs = [kv for kv in kvs if not kv[0].startswith('tokenizer.')]
j = json.load(open(fix))
vocab = j['model']['vocab']; N = 512
toks = ['[PAD%d]' % i for i in range(N)]; types = [5] * N
for t, i in vocab.items(): toks[i] = t; types[i] = 1
for a in j.get('added_tokens', []):
    toks[a['id']] = a['content']; types[a['id']] = 3 if a.get('special') else 4
merges = [m if isinstance(m, str) else ' '.join(m) for m in j['model']['merges']]
def kv_str(k, v): return [k, 8, S(v)]
def kv_u32(k, v): return [k, 4, struct.pack('<I', v)]
def kv_bool(k, v): return [k, 7, struct.pack('<B', v)]
def kv_arr_str(k, a): return [k, 9, struct.pack('<IQ', 8, len(a)) + b''.join(S(x) for x in a)]
def kv_arr_i32(k, a): return [k, 9, struct.pack('<IQ', 5, len(a)) + b''.join(struct.pack('<i', x) for x in a)]
kvs += [kv_str('tokenizer.ggml.model', 'gpt2'), kv_str('tokenizer.ggml.pre', pre_name),
        kv_arr_str('tokenizer.ggml.tokens', toks), kv_arr_i32('tokenizer.ggml.token_type', types),
        kv_arr_str('tokenizer.ggml.merges', merges), kv_u32('tokenizer.ggml.bos_token_id', 270),
        kv_u32('tokenizer.ggml.eos_token_id', 268), kv_bool('tokenizer.ggml.add_bos_token', 0)]
write_raw(out, ver, kvs, ti, nt, data, align)
