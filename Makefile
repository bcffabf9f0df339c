# qlab — build, test, sanitize, bench. CPU-only unless nvcc is found (then kernels/*.cu build too); MPI when mpicc is.
CC      ?= cc
NVCC    ?= $(shell command -v nvcc 2>/dev/null || ls /usr/local/cuda/bin/nvcc 2>/dev/null)
PKGS    := ncursesw libarchive inih jansson libpcre2-8 cmocka openblas lapacke
OPTFLAGS ?= -O2 -g
CFLAGS  += $(OPTFLAGS) -std=c11 -D_GNU_SOURCE -Wall -Wextra -Werror -MMD -MP -pthread \
           -I. \
           $(shell pkg-config --cflags $(PKGS) 2>/dev/null)
LDLIBS  += $(shell pkg-config --libs $(PKGS) 2>/dev/null) -lm -pthread
BUILD   ?= build
BIN     ?= qlab

SRCS    := $(wildcard base/*.c kernels/*.c formats/*.c core/*.c methods/*.c pipeline/*.c sensitivity/*.c presets/*.c tui/*.c)
CLISRCS := $(wildcard cli/*.c)
OBJS    := $(SRCS:%.c=$(BUILD)/%.o) $(BUILD)/presets_data.o
PRESETS := $(wildcard presets/*.ini)
CLIOBJS := $(CLISRCS:%.c=$(BUILD)/%.o)
TESTS   := $(patsubst tests/%.c,%,$(wildcard tests/test_*.c))
FUZZERS := $(patsubst fuzz/%.c,%,$(wildcard fuzz/fuzz_*.c))

ifneq ($(NVCC),)
CUSRCS  := $(wildcard kernels/*.cu)
CUOBJS  := $(CUSRCS:%.cu=$(BUILD)/%.cu.o)
CUDA_HOME ?= $(patsubst %/bin/nvcc,%,$(NVCC))
CFLAGS  += -DQL_HAVE_CUDA -I$(CUDA_HOME)/include -DQL_CUDA_LIBDIR=\"$(CUDA_HOME)/lib64\"
LDLIBS  += -L$(CUDA_HOME)/lib64 -Wl,-rpath,$(CUDA_HOME)/lib64 -lcudart -lstdc++
NVFLAGS ?= -O2 -std=c++17 -MMD -MP -I. --compiler-options -fPIC -arch=sm_90 \
           -gencode arch=compute_90,code=sm_90 -gencode arch=compute_80,code=sm_80
endif

# MPI (Open MPI's mpicc): base/dist.c joins `mpirun -np N qlab sense ...` jobs; without it qlab is one process.
# `make MPICC=` builds without MPI.
MPICC   ?= $(shell command -v mpicc 2>/dev/null)
MPI_CFLAGS := $(if $(MPICC),$(shell $(MPICC) --showme:compile 2>/dev/null))
MPI_LIBS   := $(if $(MPI_CFLAGS),$(shell $(MPICC) --showme:link 2>/dev/null))
ifneq ($(MPI_LIBS),)
CFLAGS  += -DQL_HAVE_MPI $(MPI_CFLAGS)
LDLIBS  += $(MPI_LIBS)
endif

.PHONY: check-layers check-mixes check-lowbit-plans all test test-run test-build asan bench clean detect test-cuda fuzz deps run
all: detect $(BIN)

# Installs missing Debian packages when root (else prints the apt-get line); `make run` and
# `make test` start with it so one command sets up a fresh Debian machine.
deps:
	@bash scripts/deps.sh

# The default model: one qlab makes itself, so a fresh clone needs nothing beside it.
MODEL ?= models/tiny.gguf
models/tiny.gguf: | qlab
	@mkdir -p models
	./qlab synth --shape tiny -o $@

run: deps
	@$(MAKE) --no-print-directory all
	@if [ "$(MODEL)" = models/tiny.gguf ]; then $(MAKE) --no-print-directory models/tiny.gguf; fi
	./qlab $(if $(wildcard tui/*.c),workbench,info) $(MODEL)

detect:
	@printf 'qlab build: cc=%s  cuda=%s  mpi=%s  blas=openblas\n' "$(CC)" "$(if $(NVCC),$(NVCC),not found (CPU only))" \
	  "$(if $(MPI_LIBS),$(MPICC),not found (one process))"

$(BIN): $(CLIOBJS) $(BUILD)/libqlab.a
	$(CC) $(CFLAGS) $(LDFLAGS) -o $@ $(CLIOBJS) $(BUILD)/libqlab.a $(LDLIBS)

$(BUILD)/libqlab.a: $(OBJS) $(CUOBJS)
	@rm -f $@
	ar rcs $@ $^

$(BUILD)/presets_data.c: $(PRESETS) scripts/embed_presets.sh
	@mkdir -p $(BUILD)
	bash scripts/embed_presets.sh $@ $(PRESETS)

$(BUILD)/presets_data.o: $(BUILD)/presets_data.c
	$(CC) $(CFLAGS) -c -o $@ $<

$(BUILD)/%.o: %.c
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) -c -o $@ $<

$(BUILD)/%.cu.o: %.cu
	@mkdir -p $(dir $@)
	$(NVCC) $(NVFLAGS) -c -o $@ $<

# A test may link extra objects: test_cuda gets the host build of the CUDA device math (tests/*.cu).
TEST_OBJS_test_cuda := $(if $(NVCC),$(BUILD)/tests/cuda_host_check.cu.o)

.SECONDEXPANSION:
$(BUILD)/tests/%: tests/%.c $(BUILD)/libqlab.a $$(TEST_OBJS_$$*)
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) $(LDFLAGS) -o $@ $< $(TEST_OBJS_$*) $(BUILD)/libqlab.a $(LDLIBS)

# Tests read ../shared when it is there and say they skipped when it is not; a file missing from it fails.
test: deps
	@$(MAKE) --no-print-directory test-run

# The binaries are built by a sub-make with one job per core (CI's clean clone spends minutes compiling);
# the cmocka tests run JOBS at a time (scripts/run_tests.sh), then cli_test, the corpus replays and the
# fault injection one after another; each prints its seconds.
JOBS ?= $(shell nproc 2>/dev/null || echo 1)
test-build: check-layers all $(TESTS:%=$(BUILD)/tests/%) $(BUILD)/tests/libqlfault.so $(FUZZERS:%=$(BUILD)/fuzz/%)

test-run:
	@$(MAKE) --no-print-directory -j$(JOBS) test-build
	@fail=0; QLAB=$(CURDIR)/$(BIN) bash scripts/run_tests.sh $(BUILD) $(JOBS) $(TESTS) || fail=1; \
	 if [ -x tests/cli_test.sh ]; then echo "== cli_test.sh"; t0=$$(date +%s); \
	   QL_QUICK=$(QL_QUICK) QLAB=$(CURDIR)/$(BIN) bash tests/cli_test.sh || fail=1; echo "-- cli_test.sh: $$(($$(date +%s) - t0)) s"; fi; \
	 for h in $(FUZZERS); do c=tests/corpus/$${h#fuzz_}; [ -d $$c ] || continue; echo "== replay $$c"; \
	   $(BUILD)/fuzz/$$h $$c || fail=1; done; \
	 echo "== fault_inject.sh"; t0=$$(date +%s); QLAB=$(CURDIR)/$(BIN) QL_FAULT_SHIM=$(BUILD)/tests/libqlfault.so bash tests/fault_inject.sh || fail=1; \
	 echo "-- fault_inject.sh: $$(($$(date +%s) - t0)) s"; \
	 exit $$fail

# The fault-injection shim (LD_PRELOAD) for tests/fault_inject.sh: plain flags, never the sanitizers.
$(BUILD)/tests/libqlfault.so: tests/fault_shim.c
	@mkdir -p $(dir $@)
	$(CC) -std=c11 -D_GNU_SOURCE -O2 -Wall -Wextra -Werror -shared -fPIC -o $@ $< -ldl

# CUDA codecs and the CUDA backend vs the CPU reference (device tests skip without a GPU); speed is `make bench-cuda`.
test-cuda: $(BUILD)/tests/test_cuda $(BUILD)/tests/test_cuda_forward $(BUILD)/tests/test_gptq_cuda
	$(BUILD)/tests/test_cuda
	$(BUILD)/tests/test_cuda_forward
	$(BUILD)/tests/test_gptq_cuda

asan:
	$(MAKE) BUILD=build-asan OPTFLAGS="-O1 -g -fsanitize=address,undefined -fno-omit-frame-pointer -fno-sanitize-recover=undefined" \
	        LDFLAGS="-fsanitize=address,undefined" NVCC= BIN=build-asan/qlab QL_QUICK=1 test-run

# Include rules (docs/architecture.md): no include up a layer, every include names its directory, no cycles.
check-layers:
	@python3 scripts/check_layers.py

check-mixes: all
	@bash tests/mixes_check.sh

# Issue 13's automatic-plan checks against every llama.cpp mix of tinystories-d256 (all 1535 chunks; long).
check-lowbit-plans: all
	@bash tests/lowbit_plans_check.sh

bench: all $(BUILD)/bench/quip_bench $(BUILD)/tests/test_simd $(BUILD)/tests/test_simd2
	@QLAB=./$(BIN) QUIP_BENCH=$(BUILD)/bench/quip_bench SIMD_TESTS=$(BUILD)/tests bash bench/run.sh

# qlab beside llama.cpp's own quantize and perplexity tools, back to back (LLAMA_CPP: their bin folder; made by
# scripts/get_llamacpp.sh from the source node-llama-cpp carries on npm when unset).
.PHONY: bench-vs-llamacpp
bench-vs-llamacpp: all
	@LLAMA_CPP=$${LLAMA_CPP:-$$(bash scripts/get_llamacpp.sh)} QLAB=./$(BIN) bash bench/vs_llamacpp.sh

# Each harness also links with a plain driver (fuzz/replay_main.c) so `make test` replays tests/corpus/NAME/
# through it, under ASan+UBSan in `make asan`.
$(BUILD)/fuzz/%: fuzz/%.c fuzz/replay_main.c fuzz/fuzz_util.h $(BUILD)/libqlab.a
	@mkdir -p $(dir $@)
	$(CC) $(filter-out -MMD -MP,$(CFLAGS)) $(LDFLAGS) -o $@ $< fuzz/replay_main.c $(BUILD)/libqlab.a $(LDLIBS)
fuzz: $(FUZZERS:%=build-fuzz/%)
# The library is compiled once with the sanitizers and libFuzzer's coverage hooks; each harness links to it.
FUZZ_CFLAGS := -std=c11 -D_GNU_SOURCE -g -O1 -fno-sanitize-recover=undefined -I. $(shell pkg-config --cflags $(PKGS) 2>/dev/null)
FUZZ_LIBSRCS := $(filter base/%.c kernels/%.c formats/%.c core/%.c methods/%.c pipeline/%.c sensitivity/%.c presets/%.c,$(SRCS))
build-fuzz/lib/%.o: %.c
	@mkdir -p $(dir $@)
	clang $(FUZZ_CFLAGS) -MMD -MP -fsanitize=fuzzer-no-link,address,undefined -c -o $@ $<
build-fuzz/lib/presets_data.o: $(BUILD)/presets_data.c
	@mkdir -p $(dir $@)
	clang $(FUZZ_CFLAGS) -c -o $@ $<
build-fuzz/libqlab_fuzz.a: $(FUZZ_LIBSRCS:%.c=build-fuzz/lib/%.o) build-fuzz/lib/presets_data.o
	@rm -f $@
	ar rcs $@ $^
build-fuzz/%: fuzz/%.c fuzz/fuzz_util.h build-fuzz/libqlab_fuzz.a
	clang $(FUZZ_CFLAGS) -fsanitize=fuzzer,address,undefined -o $@ $< build-fuzz/libqlab_fuzz.a \
	  $(shell pkg-config --libs $(PKGS)) -lm -pthread

clean:
	rm -rf build build-asan build-fuzz qlab

-include $(wildcard build-fuzz/lib/*/*.d)
-include $(OBJS:.o=.d) $(CLIOBJS:.o=.d) $(CUOBJS:.o=.d) $(TESTS:%=$(BUILD)/tests/%.d) $(BUILD)/tests/cuda_host_check.cu.d

# GPTQ speed on a 4096x4096 layer (int4_g128, 2 threads); `make bench-gptq ARGS="rows cols threads fmt spec"`
.PHONY: bench-gptq
bench-gptq: $(BUILD)/bench/gptq_bench
	$(BUILD)/bench/gptq_bench $(ARGS)

$(BUILD)/bench/gptq_bench: bench/gptq_bench.c $(BUILD)/libqlab.a
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) $(LDFLAGS) -o $@ $< $(BUILD)/libqlab.a $(LDLIBS)

# QuIP# encode speed per million weights (e8p, e8p_rvq4, rht_int4_g64, quip LDLQ); `make bench-quip ARGS="rows cols threads"`
.PHONY: bench-quip
bench-quip: $(BUILD)/bench/quip_bench
	$(BUILD)/bench/quip_bench $(ARGS)

$(BUILD)/bench/quip_bench: bench/quip_bench.c $(BUILD)/libqlab.a
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) $(LDFLAGS) -o $@ $< $(BUILD)/libqlab.a $(LDLIBS)

# One layer's attention with a quantized KV cache vs F32 (1B shape, ctx 2048); `make bench-kv ARGS="shape ctx threads reps schemes..."`
.PHONY: bench-kv
bench-kv: $(BUILD)/bench/kv_bench
	$(BUILD)/bench/kv_bench $(ARGS)

$(BUILD)/bench/kv_bench: bench/kv_bench.c $(BUILD)/libqlab.a
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) $(LDFLAGS) -o $@ $< $(BUILD)/libqlab.a $(LDLIBS)

# Encode seconds per million weights for every per-tensor method (`make bench` prints it);
# `make bench-methods ARGS="cols threads method:format[:opts[:rows]] ..."`
.PHONY: bench-methods
bench-methods: $(BUILD)/bench/method_bench
	$(BUILD)/bench/method_bench $(ARGS)

$(BUILD)/bench/method_bench: bench/method_bench.c $(BUILD)/libqlab.a
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) $(LDFLAGS) -o $@ $< $(BUILD)/libqlab.a $(LDLIBS)

# AQLM encoding speed on one layer (aqlm_2x8, 2 threads); `make bench-aqlm ARGS="rows cols threads fmt opts"`
.PHONY: bench-aqlm
bench-aqlm: $(BUILD)/bench/aqlm_bench
	$(BUILD)/bench/aqlm_bench $(ARGS)

$(BUILD)/bench/aqlm_bench: bench/aqlm_bench.c $(BUILD)/libqlab.a
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) $(LDFLAGS) -o $@ $< $(BUILD)/libqlab.a $(LDLIBS)

# GPTQ on the GPU on gptq_bench's layer (int4_g128); `make bench-gptq-cuda ARGS="rows cols fmt block"`.
# Prints "GPU: not available on this machine" without a CUDA device.
.PHONY: bench-gptq-cuda
bench-gptq-cuda: $(BUILD)/bench/gptq_bench_cuda
	$(BUILD)/bench/gptq_bench_cuda $(ARGS)

$(BUILD)/bench/gptq_bench_cuda: bench/gptq_bench_cuda.c $(BUILD)/libqlab.a
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) $(LDFLAGS) -o $@ $< $(BUILD)/libqlab.a $(LDLIBS)

# CUDA dequantize bandwidth (4096x4096 Q4_K and Q8_0); `make bench-cuda ARGS="rows cols iters"`; then
# `qlab ppl` tokens/s and peak GPU memory on the CUDA backend (bench/cuda_ppl.sh: synthetic 1B / 8B, ctx 2048).
# Prints "GPU: not available on this machine" without a CUDA device. A benchmark: not part of make test.
.PHONY: bench-cuda bench-cuda-quant
bench-cuda: all $(BUILD)/bench/cuda_dequant_bench bench-cuda-quant
	$(BUILD)/bench/cuda_dequant_bench $(ARGS)
	@QLAB=./$(BIN) bash bench/cuda_ppl.sh

# Issue 16's 8B timing goals on one GPU (bench/cuda_8b.sh): GPTQ int4_g128 of the llama-3.1-8b shape, a 6-candidate
# KLD sense sweep of the 8B shape, the 24 GiB budget, each with peak GPU memory; ~10 min on an H100.
.PHONY: bench-cuda-8b
bench-cuda-8b: all $(BUILD)/bench/gptq_8b_cuda
	@QLAB=./$(BIN) BUILD=$(BUILD) bash bench/cuda_8b.sh

$(BUILD)/bench/gptq_8b_cuda: bench/gptq_8b_cuda.c $(BUILD)/libqlab.a
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) $(LDFLAGS) -o $@ $< $(BUILD)/libqlab.a $(LDLIBS)

# RTN quantize throughput of every format with a CUDA quantizer beside the CPU path (bench/cuda_quant_bench.c);
# `make bench-cuda-quant QARGS="rows cols iters cpu_rows [name-substring]"`.
bench-cuda-quant: $(BUILD)/bench/cuda_quant_bench
	$(BUILD)/bench/cuda_quant_bench $(QARGS)

$(BUILD)/bench/cuda_dequant_bench $(BUILD)/bench/cuda_quant_bench: $(BUILD)/bench/%: bench/%.c $(BUILD)/libqlab.a
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) $(LDFLAGS) -o $@ $< $(BUILD)/libqlab.a $(LDLIBS)

# INT8xINT8->INT32 against F32 sgemm on one W8A8 layer (issue 12); `make bench` runs it.
$(BUILD)/bench/int8_gemm_bench: bench/int8_gemm_bench.c $(BUILD)/libqlab.a
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) $(LDFLAGS) -o $@ $< $(BUILD)/libqlab.a $(LDLIBS)
