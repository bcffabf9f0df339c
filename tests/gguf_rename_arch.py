# tests/gguf_rename_arch.py IN.gguf OUT.gguf ARCH — IN with general.architecture = ARCH and every "OLD.*" key renamed
# "ARCH.*": the same tensors under an architecture qlab has no description of (tests/cli_test.sh: quantization by
# tensor names). Plain Python, no gguf package.
import os, sys
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), '..', 'bench'))
from gguf_raw import gguf_str, read_raw, write_raw
src, out, arch = sys.argv[1:4]
ver, kvs, ti, nt, data, align = read_raw(src)
old = next(v[8:].decode() for k, t, v in kvs if k == 'general.architecture')
for kv in kvs:
    if kv[0] == 'general.architecture': kv[2] = gguf_str(arch)
    elif kv[0].startswith(old + '.'): kv[0] = arch + kv[0][len(old):]
write_raw(out, ver, kvs, ti, nt, data, align)
