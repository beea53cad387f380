// kernels/emulator/shim.h -- makes an unchanged CUDA C kernel file compile with g++.
//
// The emulator (kernels/emulator/__init__.py) builds one translation unit per .cu file:
//     #include "shim.h"          (this file)
//     <kernels/prelude.cuh>      (with CAFFENET_EMU defined: EXTERN_SHARED uses the emulator)
//     #line 1 "<file>.cu"
//     <the kernel file, unchanged>
//     <generated launchers>      (one per extern "C" __global__ kernel, see EMU_LAUNCHER)
// and links it with runtime.cpp, which runs the threads of a block as fibers.
//
// Everything a kernel sees of "the GPU" is declared here; the definitions live in
// runtime.cpp. The built-in index variables are ordinary globals that the runtime sets
// before it switches to a thread; __syncthreads() is a call into the other translation
// unit, so the compiler must reload globals and shared memory after it.
#ifndef CAFFENET_EMU_SHIM_H
#define CAFFENET_EMU_SHIM_H

#define CAFFENET_EMU 1

#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <type_traits>
#include <utility>

// ---- qualifiers --------------------------------------------------------------------
#define __global__
#define __device__
#define __host__
#define __constant__
#define __forceinline__ inline __attribute__((always_inline))
#define __noinline__ __attribute__((noinline))
#define __align__(n) __attribute__((aligned(n)))
#define __launch_bounds__(...)
// g++ knows __restrict__ already.

// Static shared memory: one object per variable (a per-block static). All of them sit in
// the section "emu_shared", which the runtime fills with 0xFF bytes at every block start
// (NaN for float, -1 for int), so a read before the first write gives a visibly wrong
// result instead of a left-over value from the previous block.
#define __shared__ __attribute__((section("emu_shared"))) static

// ---- vector types --------------------------------------------------------------------
struct uint3 { unsigned int x, y, z; };
struct dim3 {
    unsigned int x, y, z;
    constexpr dim3(unsigned int x_ = 1, unsigned int y_ = 1, unsigned int z_ = 1)
        : x(x_), y(y_), z(z_) {}
};
struct __attribute__((aligned(8))) float2 { float x, y; };
struct __attribute__((aligned(16))) float4 { float x, y, z, w; };
struct __attribute__((aligned(8))) int2 { int x, y; };
struct __attribute__((aligned(16))) int4 { int x, y, z, w; };
struct __attribute__((aligned(8))) uint2 { unsigned int x, y; };
struct __attribute__((aligned(16))) uint4 { unsigned int x, y, z, w; };
static inline float2 make_float2(float x, float y) { return {x, y}; }
static inline float4 make_float4(float x, float y, float z, float w) { return {x, y, z, w}; }
static inline int2 make_int2(int x, int y) { return {x, y}; }
static inline int4 make_int4(int x, int y, int z, int w) { return {x, y, z, w}; }
static inline uint2 make_uint2(unsigned int x, unsigned int y) { return {x, y}; }
static inline uint3 make_uint3(unsigned int x, unsigned int y, unsigned int z) { return {x, y, z}; }
static inline uint4 make_uint4(unsigned int x, unsigned int y, unsigned int z, unsigned int w) {
    return {x, y, z, w};
}

// ---- built-in variables (set by the runtime for the running thread) -------------------
#define EMU_API extern "C" __attribute__((visibility("default")))
extern "C" {
extern uint3 threadIdx;
extern uint3 blockIdx;
extern dim3 blockDim;
extern dim3 gridDim;
}
#define warpSize 32

// ---- synchronisation -----------------------------------------------------------------
extern "C" void emu_syncthreads(const char* file, int line);
extern "C" void* emu_dynamic_shared(void);
extern "C" void emu_assert_fail(const char* expr, const char* file, int line, const char* func);
extern "C" void emu_atomic_note(const void* p);
// The file and line identify the barrier, so that threads waiting at different
// __syncthreads() calls are reported as a divergent barrier.
#define __syncthreads() emu_syncthreads(__FILE__, __LINE__)
// Threads of one block never run at the same time, so memory is always coherent.
#define __threadfence() __asm__ __volatile__("" ::: "memory")
#define __threadfence_block() __asm__ __volatile__("" ::: "memory")

// Device assert: reports kernel, file:line, block and thread to Python (no abort()).
#undef assert
#define assert(e) ((e) ? (void)0 : emu_assert_fail(#e, __FILE__, __LINE__, __func__))

// ---- atomics: plain read-modify-write is atomic because fibers switch only at barriers --
#define EMU_ATOMIC(name, T, expr)                  \
    static inline T name(T* p, T v) {              \
        T old = *p;                                \
        *p = (expr);                               \
        emu_atomic_note(p);                        \
        return old;                                \
    }
EMU_ATOMIC(atomicAdd, float, old + v)
EMU_ATOMIC(atomicAdd, int, old + v)
EMU_ATOMIC(atomicAdd, unsigned int, old + v)
EMU_ATOMIC(atomicSub, int, old - v)
EMU_ATOMIC(atomicSub, unsigned int, old - v)
EMU_ATOMIC(atomicMax, int, old > v ? old : v)
EMU_ATOMIC(atomicMax, unsigned int, old > v ? old : v)
EMU_ATOMIC(atomicMin, int, old < v ? old : v)
EMU_ATOMIC(atomicMin, unsigned int, old < v ? old : v)
EMU_ATOMIC(atomicExch, float, v)
EMU_ATOMIC(atomicExch, int, v)
EMU_ATOMIC(atomicExch, unsigned int, v)
EMU_ATOMIC(atomicAnd, int, old & v)
EMU_ATOMIC(atomicAnd, unsigned int, old & v)
EMU_ATOMIC(atomicOr, int, old | v)
EMU_ATOMIC(atomicOr, unsigned int, old | v)
EMU_ATOMIC(atomicXor, int, old ^ v)
EMU_ATOMIC(atomicXor, unsigned int, old ^ v)
#undef EMU_ATOMIC
static inline int atomicCAS(int* p, int cmp, int v) {
    int old = *p;
    *p = old == cmp ? v : old;
    emu_atomic_note(p);
    return old;
}
static inline unsigned int atomicCAS(unsigned int* p, unsigned int cmp, unsigned int v) {
    unsigned int old = *p;
    *p = old == cmp ? v : old;
    emu_atomic_note(p);
    return old;
}

// ---- loads, bit casts, integer intrinsics ----------------------------------------------
template <typename T>
static inline T __ldg(const T* p) { return *p; }
static inline unsigned int __float_as_uint(float f) { unsigned int u; std::memcpy(&u, &f, 4); return u; }
static inline int __float_as_int(float f) { int i; std::memcpy(&i, &f, 4); return i; }
static inline float __uint_as_float(unsigned int u) { float f; std::memcpy(&f, &u, 4); return f; }
static inline float __int_as_float(int i) { float f; std::memcpy(&f, &i, 4); return f; }
static inline int __popc(unsigned int x) { return __builtin_popcount(x); }
static inline int __clz(int x) { return x == 0 ? 32 : __builtin_clz((unsigned int)x); }
static inline int __ffs(int x) { return __builtin_ffs(x); }
static inline unsigned int __umulhi(unsigned int a, unsigned int b) {
    return (unsigned int)(((unsigned long long)a * b) >> 32);
}
static inline int __mulhi(int a, int b) { return (int)(((long long)a * b) >> 32); }

// ---- tensor-core product: mma.sync.aligned.m16n8k8.row.col.f32.tf32.tf32.f32 -----------
// On the GPU one warp-wide instruction, D (16 x 8) += A (16 x 8) B (8 x 8), each of the 32
// threads holding pieces of the matrices in the PTX ISA's layout ("Matrix Fragments for
// mma.m16n8k8", .tf32), with g = lane / 4 and q = lane % 4:
//     a[0] A[g][q]     a[1] A[g+8][q]     a[2] A[g][q+4]     a[3] A[g+8][q+4]
//     b[0] B[q][g]     b[1] B[q+4][g]
//     d[0] D[g][2q]    d[1] D[g][2q+1]    d[2] D[g+8][2q]    d[3] D[g+8][2q+1]
// Emulated: every thread leaves its fragments in a buffer (blocks run one after another on
// an OS thread, so one buffer per library serves them all), the block synchronises, each
// thread gathers its warp's A and B from it and computes its 4 elements of D, and the block
// synchronises again. So every thread of the block must call it, together and in the
// same order: stricter than the GPU, where the warp's 32 threads must. Inputs are cut to
// TF32 (the low 13 mantissa bits dropped; what the hardware does with unrounded inputs is
// unspecified, and the kernels round every input with tf32_round first). The 8 products
// are exact in float32 and summed in order in IEEE float; the tensor core's accumulation
// may differ in the last bits, which the tests' float32 tolerances absorb.
static float emu_mma_a[1024][4], emu_mma_b[1024][2];

static inline float emu_tf32_read(float x) { return __uint_as_float(__float_as_uint(x) & 0xffffe000u); }

static inline void emu_mma_m16n8k8_tf32(float d[4], const float a[4], const float b[2]) {
    const unsigned int t = threadIdx.x + blockDim.x * (threadIdx.y + blockDim.y * threadIdx.z);
    const unsigned int warp0 = t - t % 32, g = (t % 32) / 4, q = t % 4;
    for (int i = 0; i < 4; i++) emu_mma_a[t][i] = a[i];
    for (int i = 0; i < 2; i++) emu_mma_b[t][i] = b[i];
    __syncthreads();
    for (int i = 0; i < 4; i++) {
        const unsigned int row = g + 8 * (i / 2), col = 2 * q + i % 2;
        float sum = d[i];
        for (unsigned int k = 0; k < 8; k++) {
            // A[row][k] is register (row / 8) + 2 (k / 4) of lane (row % 8) * 4 + k % 4;
            // B[k][col] is register k / 4 of lane col * 4 + k % 4.
            float av = emu_mma_a[warp0 + (row % 8) * 4 + k % 4][row / 8 + 2 * (k / 4)];
            float bv = emu_mma_b[warp0 + col * 4 + k % 4][k / 4];
            sum += emu_tf32_read(av) * emu_tf32_read(bv);
        }
        d[i] = sum;
    }
    __syncthreads();
}

// ---- min / max (CUDA overloads; mixed int/unsigned goes unsigned, as in CUDA) -------------
static inline int min(int a, int b) { return a < b ? a : b; }
static inline int max(int a, int b) { return a > b ? a : b; }
static inline unsigned int min(unsigned int a, unsigned int b) { return a < b ? a : b; }
static inline unsigned int max(unsigned int a, unsigned int b) { return a > b ? a : b; }
static inline unsigned int min(int a, unsigned int b) { return min((unsigned int)a, b); }
static inline unsigned int max(int a, unsigned int b) { return max((unsigned int)a, b); }
static inline unsigned int min(unsigned int a, int b) { return min(a, (unsigned int)b); }
static inline unsigned int max(unsigned int a, int b) { return max(a, (unsigned int)b); }
static inline long long min(long long a, long long b) { return a < b ? a : b; }
static inline long long max(long long a, long long b) { return a > b ? a : b; }
static inline float min(float a, float b) { return fminf(a, b); }
static inline float max(float a, float b) { return fmaxf(a, b); }
static inline double min(double a, double b) { return fmin(a, b); }
static inline double max(double a, double b) { return fmax(a, b); }

// ---- float math: <cmath> gives expf, logf, powf, sqrtf, fmaxf, fminf, fabsf, fmaf, floorf,
// ceilf, roundf, truncf, tanhf, exp2f, log2f, ... ; these are the CUDA-only names. The fast
// intrinsics are computed exactly here; GPU results may differ in the last bits.
static inline float rsqrtf(float x) { return 1.0f / sqrtf(x); }
// (Macros, because glibc declares some of these names itself.)
#define __expf(x) expf(x)
#define __logf(x) logf(x)
#define __log2f(x) log2f(x)
#define __powf(x, y) powf(x, y)
#define __sinf(x) sinf(x)
#define __cosf(x) cosf(x)
#define __tanf(x) tanf(x)
#define exp10f(x) powf(10.0f, x)
static inline float __fdividef(float a, float b) { return a / b; }
static inline float __frcp_rn(float x) { return 1.0f / x; }
static inline float __fsqrt_rn(float x) { return sqrtf(x); }
static inline float __fadd_rn(float a, float b) { return a + b; }
static inline float __fmul_rn(float a, float b) { return a * b; }
static inline float __fmaf_rn(float a, float b, float c) { return fmaf(a, b, c); }
static inline float __saturatef(float x) { return x < 0.0f ? 0.0f : (x > 1.0f ? 1.0f : x); }
static inline int __float2int_rz(float x) { return (int)x; }
static inline int __float2int_rd(float x) { return (int)floorf(x); }
static inline int __float2int_ru(float x) { return (int)ceilf(x); }
static inline int __float2int_rn(float x) { return (int)nearbyintf(x); }
static inline unsigned int __float2uint_rz(float x) { return (unsigned int)x; }
static inline float __int2float_rn(int x) { return (float)x; }
static inline float __uint2float_rn(unsigned int x) { return (float)x; }

// ---- launcher templates ------------------------------------------------------------------
// For every kernel the emulator appends EMU_LAUNCHER(name), which exports
//   emu_entry_<name>(void** args)  -- calls the kernel with args[i] pointing at parameter i
//                                     (the cuLaunchKernel convention)
//   emu_arity_<name>()             -- number of parameters
//   emu_types_<name>()             -- one type code per parameter, separated by ','
// The parameter types come from the kernel's own signature, so Python never parses C types.
template <typename T> struct emu_type_code { static constexpr const char* code = "unsupported"; };
#define EMU_TYPE_CODE(T, c) \
    template <> struct emu_type_code<T> { static constexpr const char* code = c; };
EMU_TYPE_CODE(float, "float32")
EMU_TYPE_CODE(int, "int32")
EMU_TYPE_CODE(unsigned int, "uint32")
EMU_TYPE_CODE(float*, "ptr float32")
EMU_TYPE_CODE(const float*, "ptr const float32")
EMU_TYPE_CODE(int*, "ptr int32")
EMU_TYPE_CODE(const int*, "ptr const int32")
EMU_TYPE_CODE(unsigned int*, "ptr uint32")
EMU_TYPE_CODE(const unsigned int*, "ptr const uint32")
#undef EMU_TYPE_CODE

template <typename F> struct emu_signature;
template <typename... A> struct emu_signature<void(A...)> {
    static constexpr int arity = (int)sizeof...(A);
    template <std::size_t... I>
    static void call(void (*f)(A...), void** args, std::index_sequence<I...>) {
        // std::decay drops top-level const of by-value parameters (`const int n`).
        f(*static_cast<std::decay_t<A>*>(args[I])...);
    }
    static void call(void (*f)(A...), void** args) { call(f, args, std::index_sequence_for<A...>{}); }
    static const char* types() {
        static const char* const codes[] = {emu_type_code<std::decay_t<A>>::code..., nullptr};
        static char joined[1024];
        joined[0] = '\0';
        for (int i = 0; codes[i]; i++) {
            if (i) std::strncat(joined, ",", sizeof(joined) - std::strlen(joined) - 1);
            std::strncat(joined, codes[i], sizeof(joined) - std::strlen(joined) - 1);
        }
        return joined;
    }
};

#define EMU_LAUNCHER(name)                                                                   \
    EMU_API void emu_entry_##name(void** args) {                                            \
        emu_signature<decltype(name)>::call(name, args);                                     \
    }                                                                                       \
    EMU_API int emu_arity_##name(void) { return emu_signature<decltype(name)>::arity; }    \
    EMU_API const char* emu_types_##name(void) { return emu_signature<decltype(name)>::types(); }

#endif  // CAFFENET_EMU_SHIM_H
