// kernels/prelude.cuh -- put before every kernels/*.cu file by the loader (kernels/runner.py),
// on the GPU (NVRTC through CuPy) and in the CPU emulator (g++), followed by a
// `#line 1 "<file>"` directive so that messages point into the .cu file itself.
// Kernel files have no #include, so everything they share lives here.

// Dynamic shared memory (the `shared_mem=` bytes of a launch). Use it as a statement at the
// top of a kernel body:   EXTERN_SHARED(float, tile);   ...   tile[threadIdx.x] = ...;
// `name` becomes a `type*` to the start of the block's dynamic shared memory. One untyped
// byte array backs it so that several kernels in one file may use different types.
#ifdef CAFFENET_EMU
// The emulator hands out a per-block buffer, filled with 0xFF bytes at each block start.
#define EXTERN_SHARED(type, name) type* name = reinterpret_cast<type*>(emu_dynamic_shared())
#else
#define EXTERN_SHARED(type, name)                                   \
    extern __shared__ __align__(16) unsigned char prelude_dyn_smem_[];  \
    type* name = reinterpret_cast<type*>(prelude_dyn_smem_)
#endif

// <float.h> constants (NVRTC has no system headers).
#ifndef FLT_MAX
#define FLT_MAX 3.402823466e+38F
#endif
#ifndef FLT_MIN
#define FLT_MIN 1.175494351e-38F
#endif
#ifndef INT_MAX
#define INT_MAX 2147483647
#endif
#ifndef INFINITY
#define INFINITY __int_as_float(0x7f800000)
#endif
#ifndef NAN
#define NAN __int_as_float(0x7fffffff)
#endif

// ---- Flat index -> coordinates --------------------------------------------------------------
// (a, b, c) of flat index i in a C-contiguous (A, B, C) array, like numpy.unravel_index (A
// itself is not needed). For the kernels whose grid-stride loop runs over flat indices.
__device__ __forceinline__ void unravel3(int i, int B, int C, int* a, int* b, int* c) {
    *c = i % C;
    *b = (i / C) % B;
    *a = i / (C * B);
}

// Offset of element (n, 0, s) of a C-contiguous (N, C, S) array, where col = n * S + s
// numbers the (n, s) "columns" (C values S floats apart), for the kernels that give one
// thread or block a column (softmax.cu, lrn.cu). long long: N * C * S may pass 2^31 - 1.
__device__ __forceinline__ long long column_offset(int col, int C, int S) {
    return (long long)(col / S) * C * S + col % S;
}

// ---- Sliding windows ---------------------------------------------------------------------------
// Output positions o whose window (starting at o * stride - pad, `kernel` long) covers input
// position p, i.e. 0 <= p + pad - o * stride < kernel, as [*lo, *hi) clipped to [0, out_size).
// The gathers of conv's and pooling's backward passes visit exactly these.
__device__ __forceinline__ void windows_covering(int p, int stride, int pad, int kernel,
                                                 int out_size, int* lo, int* hi) {
    int a = p + pad - kernel + 1;      // need o * stride >= a
    *lo = a <= 0 ? 0 : (a + stride - 1) / stride;
    int h = (p + pad) / stride + 1;    // p + pad >= 0 always
    *hi = h < out_size ? h : out_size;
}

// ---- Tree reduction over one block -----------------------------------------------------------
// blockDim.x a power of two, buf holds blockDim.x floats (shared). take_max != 0: maximum, else
// sum, always in the same order (deterministic). Every thread of the block must call it (it
// contains barriers); every thread gets the result.
__device__ float block_reduce(float* buf, float v, int take_max) {
    const int t = threadIdx.x;
    buf[t] = v;
    __syncthreads();
    for (int half = blockDim.x / 2; half > 0; half /= 2) {
        if (t < half) buf[t] = take_max ? fmaxf(buf[t], buf[t + half]) : buf[t] + buf[t + half];
        __syncthreads();
    }
    const float r = buf[0];
    __syncthreads();   // all threads read buf[0] before anyone reuses buf
    return r;
}

// ---- The register micro-kernel of the 128-column-tile products ----------------------------
// gemm.cu's gemm_v3 and conv.cu's implicit GEMM (the v2 convolution kernels) compute a
// 128 x 128 tile of C with 16 x 16 threads, each thread holding 8 x 8 accumulators (conv.cu
// also a 64 x 128 tile, 4 x 8 per thread). The reduction runs over shared slabs As[k][row] and
// Bs[k][col] (BK rows of LD floats, LD >= the tile's size; the callers pad it by 4 against
// bank conflicts), declared in the kernel and passed in.
//
// Thread (ty, tx) owns the tile rows slab_sub(ty, 0..7) = ty*4 + {0..3} and 64 + ty*4 + {0..3}
// (likewise the columns with tx). Reading 4 consecutive floats per strip makes the loads
// 128-bit; the 64 gap means the 16 threads of a half-warp read 64 distinct consecutive floats
// (no bank conflicts). A template so that BK and LD are compile-time constants: the loop
// unrolls fully and acc stays in registers (forceinline: the same code as written in place).

// Row (or column) of the tile held in accumulator index i (0..7) by thread coordinate tc
// (ty or tx): the two 4-wide strips, 64 apart.
__device__ __forceinline__ int slab_sub(int tc, int i) {
    return (i < 4 ? 0 : 64) + tc * 4 + (i & 3);
}

// acc[i][j] += As[k][slab_sub(ty, i)] * Bs[k][slab_sub(tx, j)] for k = 0 .. BK-1, j < 8 and
// i < 4 * ROW_STRIPS. ROW_STRIPS = 2: the 8 x 8 sub-tile of a 128-row tile; 1: the 4 x 8
// sub-tile (rows ty*4 .. ty*4 + 3) of a 64-row tile (conv.cu's narrow tiles). LD and LDA:
// the row lengths of Bs and As.
template <int BK, int LD, int ROW_STRIPS = 2, int LDA = LD>
__device__ __forceinline__ void slab_multiply(const float* As, const float* Bs, int ty, int tx,
                                              float acc[][8]) {
#pragma unroll
    for (int kk = 0; kk < BK; ++kk) {
        float a[4 * ROW_STRIPS], b[8];
        const float* ar = As + kk * LDA;
        const float* br = Bs + kk * LD;
#pragma unroll
        for (int s = 0; s < ROW_STRIPS; ++s) {
            float4 av = *(const float4*)(ar + 64 * s + ty * 4);
            a[4 * s] = av.x; a[4 * s + 1] = av.y; a[4 * s + 2] = av.z; a[4 * s + 3] = av.w;
        }
        float4 b0 = *(const float4*)(br + tx * 4), b1 = *(const float4*)(br + 64 + tx * 4);
        b[0] = b0.x; b[1] = b0.y; b[2] = b0.z; b[3] = b0.w;
        b[4] = b1.x; b[5] = b1.y; b[6] = b1.z; b[7] = b1.w;
        for (int i = 0; i < 4 * ROW_STRIPS; ++i)
            for (int j = 0; j < 8; ++j) acc[i][j] += a[i] * b[j];
    }
}

// ---- TF32 tensor cores: the micro-kernel of the products' TF32 versions --------------------
// mma.sync.aligned.m16n8k8.row.col.f32.tf32.tf32.f32: one warp-wide instruction adds the
// product of a 16 x 8 and an 8 x 8 matrix, inputs in TF32 (float32's 8 exponent bits and 10
// of its 23 mantissa bits), to a 16 x 8 float32 accumulator. Which thread holds which
// element is the PTX ISA's layout ("Matrix Fragments for mma.m16n8k8", .tf32), with
// g = lane / 4 and q = lane % 4:
//     a[0] A[g][q]     a[1] A[g+8][q]     a[2] A[g][q+4]     a[3] A[g+8][q+4]
//     b[0] B[q][g]     b[1] B[q+4][g]
//     d[0] D[g][2q]    d[1] D[g][2q+1]    d[2] D[g+8][2q]    d[3] D[g+8][2q+1]
// The emulator computes the same (kernels/emulator/shim.h), but synchronises the whole block
// to do it: every thread of a block must call mma_m16n8k8_tf32 together. Tensor cores with
// TF32 came with sm_80 (A100); compiled for an older GPU these functions trap, and the
// launchers refuse the TF32 versions there (launch_utils.check_tf32).
// Measured error of the TF32 versions: about 5e-4 of a result's largest value against
// float64 (float32: about 1e-7), see docs/benchmarks.md.

// x rounded to TF32, to nearest with ties away from zero (cvt.rna.tf32.f32): the products'
// TF32 versions round each operand once, when it goes into shared memory.
__device__ __forceinline__ float tf32_round(float x) {
#ifdef CAFFENET_EMU
    unsigned int u = __float_as_uint(x);
    if ((u & 0x7f800000u) != 0x7f800000u) u = (u + 0x1000u) & 0xffffe000u;  // not inf/NaN
    return __uint_as_float(u);
#elif __CUDA_ARCH__ >= 800
    unsigned int u;
    asm("cvt.rna.tf32.f32 %0, %1;" : "=r"(u) : "f"(x));
    return __uint_as_float(u);
#else   // no TF32 before sm_80: the launchers refuse the TF32 versions there (launch_utils.check_tf32)
    __trap();
    return x;
#endif
}

// d += A B for one 16 x 8 x 8 tile, in the layout above.
__device__ __forceinline__ void mma_m16n8k8_tf32(float d[4], const float a[4], const float b[2]) {
#ifdef CAFFENET_EMU
    emu_mma_m16n8k8_tf32(d, a, b);
#elif __CUDA_ARCH__ >= 800
    asm volatile(
        "mma.sync.aligned.m16n8k8.row.col.f32.tf32.tf32.f32 "
        "{%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, {%0, %1, %2, %3};"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(__float_as_uint(a[0])), "r"(__float_as_uint(a[1])), "r"(__float_as_uint(a[2])),
          "r"(__float_as_uint(a[3])), "r"(__float_as_uint(b[0])), "r"(__float_as_uint(b[1])));
#else
    __trap();
#endif
}

// The TF32 twin of slab_multiply, for a tile of 32 * MT rows and 128 columns and 256 threads
// (8 warps): warp w computes the rows (w / 4) * 16 MT .. + 16 MT and the columns
// (w % 4) * 32 .. + 32 of the tile, MT x 4 mma tiles of 16 x 8, over one 8-deep slab
// As[k][row], Bs[k][col]. acc[i][j] (i < 2 MT, j < 8) holds tile row mma_acc_row<MT>(i) and
// column mma_acc_col(j). LDA and LDB should be 8 more than a multiple of 32: then the 32
// lanes' fragment reads (rows q and q + 4, 8 consecutive elements each) hit 32 banks.
template <int MT>
__device__ __forceinline__ int mma_acc_row(int i) {
    int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
    return (warp / 4) * 16 * MT + (i / 2) * 16 + lane / 4 + 8 * (i % 2);
}

__device__ __forceinline__ int mma_acc_col(int j) {
    int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
    return (warp % 4) * 32 + (j / 2) * 8 + 2 * (lane % 4) + j % 2;
}

template <int LDA, int LDB, int MT>
__device__ __forceinline__ void slab_multiply_tf32(const float* As, const float* Bs,
                                                   float acc[][8]) {
    const int lane = threadIdx.x % 32, warp = threadIdx.x / 32, g = lane / 4, q = lane % 4;
    const float* a_rows = As + (warp / 4) * 16 * MT + g;
    const float* b_cols = Bs + (warp % 4) * 32 + g;
    float a[MT][4], b[4][2];
#pragma unroll
    for (int mi = 0; mi < MT; ++mi) {
        a[mi][0] = a_rows[q * LDA + 16 * mi];
        a[mi][1] = a_rows[q * LDA + 16 * mi + 8];
        a[mi][2] = a_rows[(q + 4) * LDA + 16 * mi];
        a[mi][3] = a_rows[(q + 4) * LDA + 16 * mi + 8];
    }
#pragma unroll
    for (int nj = 0; nj < 4; ++nj) {
        b[nj][0] = b_cols[q * LDB + 8 * nj];
        b[nj][1] = b_cols[(q + 4) * LDB + 8 * nj];
    }
#pragma unroll
    for (int mi = 0; mi < MT; ++mi)
#pragma unroll
        for (int nj = 0; nj < 4; ++nj) {
            float d[4] = {acc[2 * mi][2 * nj], acc[2 * mi][2 * nj + 1],
                          acc[2 * mi + 1][2 * nj], acc[2 * mi + 1][2 * nj + 1]};
            mma_m16n8k8_tf32(d, a[mi], b[nj]);
            acc[2 * mi][2 * nj] = d[0];
            acc[2 * mi][2 * nj + 1] = d[1];
            acc[2 * mi + 1][2 * nj] = d[2];
            acc[2 * mi + 1][2 * nj + 1] = d[3];
        }
}
