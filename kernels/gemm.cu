/*
 * gemm.cu -- float32 matrix products for the fully connected (inner product) layers.
 *
 * The product.  Every kernel computes, for one slice z = blockIdx.z of the K range,
 *
 *     C[z] (M, N) = op(A) (M, K) @ op(B) (K, N)      (+ bias, then ReLU, see "epilogue")
 *
 * with all matrices row-major and C-contiguous:
 *   trans_a = 0: A is stored (M, K), element (m, k) at A[m * K + k]
 *   trans_a = 1: A is stored (K, M), element (m, k) at A[k * M + m]
 *   trans_b = 0: B is stored (K, N), element (k, n) at B[k * N + n]
 *   trans_b = 1: B is stored (N, K), element (k, n) at B[n * K + k]
 * The three products of a fully connected layer (x (N, D), w (O, D), y (N, O)) are
 *   forward   y  = x @ w^T   : A = x,  B = w,  trans_b = 1   (M = N,  N = O, K = D)
 *   backward  dx = dy @ w    : A = dy, B = w                 (M = N,  N = D, K = O)
 *   backward  dw = dy^T @ x  : A = dy, B = x,  trans_a = 1   (M = O,  N = D, K = N)
 *
 * Split-K.  The K range is cut into gridDim.z slices of k_chunk elements (a multiple of
 * the tile depth); slice z covers [z * k_chunk, min(K, (z + 1) * k_chunk)) and writes its
 * partial product to C + z * M * N.  gemm_splitk_reduce then adds the slices in a fixed
 * order (deterministic) and applies the epilogue.  With one slice (k_chunk >= K) the
 * kernels write the final result directly.  Why: fc6's forward (256 x 4096 outputs) is
 * only 64 tiles of 128 x 128, fewer than the GPU has multiprocessors.
 *
 * Epilogue.  bias_mode 0: none; 1: C[m, n] += bias[n] (per column, the layer's forward).
 * relu != 0: C = max(C, 0) afterwards.  When no bias is
 * used the launcher still passes a (dummy) array, which is never read.
 *
 * Versions (same arguments, different grids):
 *   gemm_v1  one thread per output element, reads A and B straight from global memory.
 *            grid (ceil(N/16), ceil(M/16), slices), block (16, 16).
 *   gemm_v2  classic shared-memory tiling: a 16 x 16 block computes a 16 x 16 tile of C,
 *            staging 16 x 16 tiles of A and B through shared memory, one output per
 *            thread.  grid (ceil(N/16), ceil(M/16), slices), block (16, 16).
 *   gemm_v3  register blocking: a block of 256 threads computes a 128 x 128 tile of C,
 *            each thread an 8 x 8 sub-tile held in registers (as two 4-wide strips in
 *            each direction, 64 apart, so that shared-memory reads are conflict free).
 *            The K loop steps by 8: each step stages an 8-deep slab of A (128 x 8) and
 *            B (8 x 128) in shared memory, stored k-major (As[k][m], Bs[k][n]) so the
 *            inner loop reads 4 consecutive floats at a time.  Global loads are float4
 *            when the 4 elements are in range and 16-byte aligned, scalar otherwise
 *            (ragged edges, K or N not a multiple of 4).  Shared memory is double
 *            buffered: the next slab is fetched into registers while the current one is
 *            multiplied, so there is one __syncthreads per step.  Threads whose whole
 *            sub-tile lies outside C (small M, e.g. batch 1) skip the arithmetic.
 *            grid (ceil(N/128), ceil(M/128), slices), block (256).
 *   gemm_v4  gemm_v3 on tensor cores: the same tiles, loads and slabs, the operands
 *            rounded to TF32 on their way into shared memory and each slab multiplied by
 *            mma.sync instructions (slab_multiply_tf32 in prelude.cuh: warp w computes a
 *            64 x 32 part of the tile as 4 x 4 products of 16 x 8 x 8).  Shared rows are
 *            padded by 8 instead of 4, so that the fragment reads are conflict free.
 *
 * Helper kernels: gemm_splitk_reduce (sum of slices + epilogue) and ip_bias_grad (column
 * sums of dy for the bias gradient, with the ReLU mask applied on the way).
 */

/* ---------------------------------------------------------------------------------- */
/* Shared pieces                                                                       */
/* ---------------------------------------------------------------------------------- */

/* op(A)[m, k] and op(B)[k, n] for the layouts above (used by v1 and v2). */
__device__ __forceinline__ float gemm_a_at(const float* A, int M, int K, int trans_a,
                                           int m, int k) {
    return trans_a ? A[(size_t)k * M + m] : A[(size_t)m * K + k];
}

__device__ __forceinline__ float gemm_b_at(const float* B, int N, int K, int trans_b,
                                           int k, int n) {
    return trans_b ? B[(size_t)n * K + k] : B[(size_t)k * N + n];
}

/* The epilogue applied to one finished output value. */
__device__ __forceinline__ float gemm_epilogue(float v, const float* bias, int bias_mode,
                                               int relu, int n) {
    if (bias_mode == 1) v += bias[n];
    if (relu && v < 0.0f) v = 0.0f;
    return v;
}

/* The K range [*k_begin, *k_end) of slice blockIdx.z. */
__device__ __forceinline__ void gemm_slice(int K, int k_chunk, int* k_begin, int* k_end) {
    *k_begin = blockIdx.z * k_chunk;
    int e = *k_begin + k_chunk;
    *k_end = e < K ? e : K;
}

/* ---------------------------------------------------------------------------------- */
/* v1: one thread per output                                                           */
/* ---------------------------------------------------------------------------------- */

extern "C" __global__ void gemm_v1(const float* A, const float* B, float* C,
                                   const float* bias, int M, int N, int K,
                                   int trans_a, int trans_b, int bias_mode, int relu,
                                   int k_chunk) {
    int n = blockIdx.x * blockDim.x + threadIdx.x;
    int m = blockIdx.y * blockDim.y + threadIdx.y;
    if (m >= M || n >= N) return;
    int k_begin, k_end;
    gemm_slice(K, k_chunk, &k_begin, &k_end);
    float acc = 0.0f;
    for (int k = k_begin; k < k_end; ++k)
        acc += gemm_a_at(A, M, K, trans_a, m, k) * gemm_b_at(B, N, K, trans_b, k, n);
    C[(size_t)blockIdx.z * M * N + (size_t)m * N + n] =
        gemm_epilogue(acc, bias, bias_mode, relu, n);
}

/* ---------------------------------------------------------------------------------- */
/* v2: 16 x 16 shared-memory tiles, one output per thread                              */
/* ---------------------------------------------------------------------------------- */

#define G2_TILE 16

extern "C" __global__ void gemm_v2(const float* A, const float* B, float* C,
                                   const float* bias, int M, int N, int K,
                                   int trans_a, int trans_b, int bias_mode, int relu,
                                   int k_chunk) {
    /* +1 column of padding: the transposed layouts write columns of the tile, which
       would otherwise all fall in one shared-memory bank. */
    __shared__ float As[G2_TILE][G2_TILE + 1];   /* As[m][k] */
    __shared__ float Bs[G2_TILE][G2_TILE + 1];   /* Bs[k][n] */
    int tx = threadIdx.x, ty = threadIdx.y;
    int m0 = blockIdx.y * G2_TILE, n0 = blockIdx.x * G2_TILE;
    int k_begin, k_end;
    gemm_slice(K, k_chunk, &k_begin, &k_end);
    float acc = 0.0f;
    for (int k0 = k_begin; k0 < k_end; k0 += G2_TILE) {
        /* Each thread stages one element of each tile (zero outside the matrix).  For
           the transposed layouts the roles of tx/ty swap so that neighbouring threads
           still read neighbouring addresses (coalesced). */
        int am = trans_a ? m0 + tx : m0 + ty, ak = trans_a ? k0 + ty : k0 + tx;
        int bk = trans_b ? k0 + tx : k0 + ty, bn = trans_b ? n0 + ty : n0 + tx;
        float a = (am < M && ak < k_end) ? gemm_a_at(A, M, K, trans_a, am, ak) : 0.0f;
        float b = (bk < k_end && bn < N) ? gemm_b_at(B, N, K, trans_b, bk, bn) : 0.0f;
        As[am - m0][ak - k0] = a;
        Bs[bk - k0][bn - n0] = b;
        __syncthreads();
        for (int kk = 0; kk < G2_TILE; ++kk) acc += As[ty][kk] * Bs[kk][tx];
        __syncthreads();   /* the tiles are overwritten in the next step */
    }
    int m = m0 + ty, n = n0 + tx;
    if (m < M && n < N)
        C[(size_t)blockIdx.z * M * N + (size_t)m * N + n] =
            gemm_epilogue(acc, bias, bias_mode, relu, n);
}

/* ---------------------------------------------------------------------------------- */
/* v3 (v4): 128 x 128 tiles, 8 x 8 outputs per thread (tensor cores), float4 loads,    */
/* ---------------------------------------------------------------------------------- */

#define G3_BM 128          /* tile rows (M)                                  */
#define G3_BN 128          /* tile columns (N)                               */
#define G3_BK 8            /* tile depth (K) per step                        */
#define G3_THREADS 256     /* 16 x 16 threads, each 8 x 8 outputs            */
/* Shared row length: padded by 4 (v3) to kill bank conflicts on the transposing stores
   and keep rows 16-byte aligned, by 8 (v4) for conflict-free mma fragment reads. */
#define G3_LD(TF32) (G3_BM + ((TF32) ? 8 : 4))
/* The per-thread 8 x 8 multiply of a slab (slab_multiply, slab_sub) is in prelude.cuh:
   conv.cu's implicit GEMM uses the same one. */

/* Reads 4 consecutive elements src[r * ld + c .. c + 3] of a (rows, cols) row-major
   matrix into v, with zeros outside it.  One float4 load when all 4 are inside and
   vec_ok says the rows are 16-byte aligned (ld % 4 == 0 and an aligned base; c is always
   a multiple of 4), else scalar loads: the ragged edges. */
__device__ __forceinline__ void g3_load4(const float* src, int ld, int rows, int cols,
                                         int r, int c, int vec_ok, float v[4]) {
    if (r < rows && vec_ok && c + 3 < cols) {
        float4 q = *(const float4*)(src + (size_t)r * ld + c);
        v[0] = q.x; v[1] = q.y; v[2] = q.z; v[3] = q.w;
        return;
    }
    for (int i = 0; i < 4; ++i)
        v[i] = (r < rows && c + i < cols) ? src[(size_t)r * ld + c + i] : 0.0f;
}

/* Fetches this thread's 4 elements of one 8-deep slab of an operand into v, and
   stores them into the shared slab S[k][row] (row stride G3_LD).
   k_contig = 1: the operand is stored with k contiguous ((rows, K) row-major: A, or B
   transposed); thread t reads row t / 2, k offsets (t % 2) * 4 .. + 3.
   k_contig = 0: stored (K, rows) row-major (A transposed, or B); thread t reads k row
   t / 32, columns (t % 32) * 4 .. + 3.
   In both cases neighbouring threads read neighbouring addresses.  rows = M or N; the
   slab starts at (row0, k0); k stays below k_end, the end of this block's slice. */
__device__ __forceinline__ void g3_fetch(const float* src, int k_contig, int rows, int K,
                                         int row0, int k0, int k_end, int vec_ok, int t,
                                         float v[4]) {
    if (k_contig)
        g3_load4(src, K, rows, k_end, row0 + t / 2, k0 + (t % 2) * 4, vec_ok, v);
    else
        g3_load4(src, rows, k_end, rows, k0 + t / 32, row0 + (t % 32) * 4, vec_ok, v);
}

template <int TF32>   /* 1: rounded to TF32 for the tensor cores */
__device__ __forceinline__ void g3_stash(float* S, int k_contig, int t, const float v[4]) {
    float r[4];
    for (int i = 0; i < 4; ++i) r[i] = TF32 ? tf32_round(v[i]) : v[i];
    if (k_contig)
        for (int i = 0; i < 4; ++i) S[((t % 2) * 4 + i) * G3_LD(TF32) + t / 2] = r[i];
    else {   /* one 128-bit store: 4 scalar stores 4 floats apart would hit 8 banks */
        float4 q;
        q.x = r[0]; q.y = r[1]; q.z = r[2]; q.w = r[3];
        *(float4*)(S + (t / 32) * G3_LD(TF32) + (t % 32) * 4) = q;
    }
}


/* One 128 x 128 tile of C (slice blockIdx.z), on CUDA cores (TF32 = 0, gemm_v3) or tensor
   cores (1, gemm_v4).  As and Bs: the kernel's double-buffered shared slabs, 2 x 8 rows
   of G3_LD(1) floats each (declared in the kernels: the emulator cannot place static
   shared arrays inside an inline function). */
template <int TF32>
__device__ __forceinline__ void g3_tile(const float* A, const float* B, float* C,
                                        const float* bias, int M, int N, int K, int trans_a,
                                        int trans_b, int bias_mode, int relu, int k_chunk,
                                        float* As, float* Bs) {
    const int LD = G3_LD(TF32), SLAB = G3_BK * G3_LD(1);
    int t = threadIdx.x, tx = t % 16, ty = t / 16;
    int m0 = blockIdx.y * G3_BM, n0 = blockIdx.x * G3_BN;
    int k_begin, k_end;
    gemm_slice(K, k_chunk, &k_begin, &k_end);

    /* A is k-contiguous unless transposed; B is k-contiguous only when transposed. */
    int a_kc = !trans_a, b_kc = trans_b;
    int a_vec = ((a_kc ? K : M) % 4 == 0) && (((size_t)A & 15) == 0);
    int b_vec = ((b_kc ? K : N) % 4 == 0) && (((size_t)B & 15) == 0);

    float acc[8][8];
    for (int i = 0; i < 8; ++i)
        for (int j = 0; j < 8; ++j) acc[i][j] = 0.0f;

    /* A thread whose first row (or column) strip lies outside C has nothing to compute
       (its second strip, 64 further, is outside too): at batch 1 only 16 of the 256
       threads have work.  It still loads and reaches every barrier.  On tensor cores
       every thread computes: a warp's mma needs all 32. */
    int live = TF32 || ((m0 + ty * 4 < M) && (n0 + tx * 4 < N));

    float va[4], vb[4];
    g3_fetch(A, a_kc, M, K, m0, k_begin, k_end, a_vec, t, va);
    g3_fetch(B, b_kc, N, K, n0, k_begin, k_end, b_vec, t, vb);
    g3_stash<TF32>(As, a_kc, t, va);
    g3_stash<TF32>(Bs, b_kc, t, vb);
    __syncthreads();

    int buf = 0;
    for (int k0 = k_begin; k0 < k_end; k0 += G3_BK) {
        int has_next = k0 + G3_BK < k_end;   /* the same for every thread */
        if (has_next) {   /* global loads in flight while the slab is multiplied */
            g3_fetch(A, a_kc, M, K, m0, k0 + G3_BK, k_end, a_vec, t, va);
            g3_fetch(B, b_kc, N, K, n0, k0 + G3_BK, k_end, b_vec, t, vb);
        }
        if (TF32)
            slab_multiply_tf32<LD, LD, 4>(As + buf * SLAB, Bs + buf * SLAB, acc);
        else if (live)
            slab_multiply<G3_BK, LD>(As + buf * SLAB, Bs + buf * SLAB, ty, tx, acc);
        if (has_next) {
            /* The other buffer was last read in the previous step, which every thread
               finished before the barrier that ended it. */
            g3_stash<TF32>(As + (buf ^ 1) * SLAB, a_kc, t, va);
            g3_stash<TF32>(Bs + (buf ^ 1) * SLAB, b_kc, t, vb);
        }
        __syncthreads();
        buf ^= 1;
    }

    float* Cz = C + (size_t)blockIdx.z * M * N;
    for (int i = 0; i < 8; ++i) {
        int m = m0 + (TF32 ? mma_acc_row<4>(i) : slab_sub(ty, i));
        if (m >= M) continue;
        for (int j = 0; j < 8; ++j) {
            int n = n0 + (TF32 ? mma_acc_col(j) : slab_sub(tx, j));
            if (n < N)
                Cz[(size_t)m * N + n] = gemm_epilogue(acc[i][j], bias, bias_mode, relu, n);
        }
    }
}

/* Two buffers per operand; 2 x 2 x 8 x 136 floats = 17 KiB of static shared.  At most 128
   registers, so that two blocks (16 warps) fit on a multiprocessor. */
#define G3_SHARED_SLABS                                        \
    __shared__ __align__(16) float As[2 * G3_BK * G3_LD(1)];   \
    __shared__ __align__(16) float Bs[2 * G3_BK * G3_LD(1)]

extern "C" __global__ void __launch_bounds__(G3_THREADS, 2)
    gemm_v3(const float* A, const float* B, float* C, const float* bias, int M, int N, int K,
            int trans_a, int trans_b, int bias_mode, int relu, int k_chunk) {
    G3_SHARED_SLABS;
    g3_tile<0>(A, B, C, bias, M, N, K, trans_a, trans_b, bias_mode, relu, k_chunk, As, Bs);
}

extern "C" __global__ void __launch_bounds__(G3_THREADS, 2)
    gemm_v4(const float* A, const float* B, float* C, const float* bias, int M, int N, int K,
            int trans_a, int trans_b, int bias_mode, int relu, int k_chunk) {
    G3_SHARED_SLABS;
    g3_tile<1>(A, B, C, bias, M, N, K, trans_a, trans_b, bias_mode, relu, k_chunk, As, Bs);
}

/* ---------------------------------------------------------------------------------- */
/* Helpers                                                                             */
/* ---------------------------------------------------------------------------------- */

/* C[m, n] = epilogue(sum over z of partial[z, m, n]), summed in order z = 0, 1, ...
   partial (splits, M, N), C (M, N).  One thread per element: grid (ceil(M*N/256)),
   block (256). */
extern "C" __global__ void gemm_splitk_reduce(const float* partial, float* C,
                                              const float* bias, int M, int N, int splits,
                                              int bias_mode, int relu) {
    size_t idx = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    size_t total = (size_t)M * N;
    if (idx >= total) return;
    float s = 0.0f;
    for (int z = 0; z < splits; ++z) s += partial[(size_t)z * total + idx];
    C[idx] = gemm_epilogue(s, bias, bias_mode, relu, (int)(idx % N));
}

#define IPB_COLS 32   /* columns per block   */
#define IPB_ROWS 8    /* row lanes per block */

/* Bias gradient of a fully connected layer, db[o] = sum_n dy_eff[n, o], where
   dy_eff = dy * (y > 0) if relu else dy.  With relu, dy_eff is also written to dy_out
   (the launcher feeds it to the two matrix products).  dy, y, dy_out (rows, cols), db (cols).
   grid (ceil(cols / 32)), block (32, 8): threadIdx.x picks the column (coalesced),
   threadIdx.y strides over the rows; the 8 partial sums of a column are then added in
   shared memory in a fixed order (deterministic, no atomics).  When relu is 0, y and
   dy_out are neither read nor written (the launcher passes dy for both). */
extern "C" __global__ void ip_bias_grad(const float* dy, const float* y, float* dy_out,
                                        float* db, int rows, int cols, int relu) {
    __shared__ float part[IPB_ROWS][IPB_COLS];
    int col = blockIdx.x * IPB_COLS + threadIdx.x;
    float s = 0.0f;
    if (col < cols) {
        for (int r = threadIdx.y; r < rows; r += IPB_ROWS) {
            size_t i = (size_t)r * cols + col;
            float g = dy[i];
            if (relu && !(y[i] > 0.0f)) g = 0.0f;
            if (relu) dy_out[i] = g;
            s += g;
        }
    }
    part[threadIdx.y][threadIdx.x] = s;
    __syncthreads();
    if (threadIdx.y == 0 && col < cols) {
        float total = 0.0f;
        for (int r = 0; r < IPB_ROWS; ++r) total += part[r][threadIdx.x];
        db[col] = total;
    }
}
