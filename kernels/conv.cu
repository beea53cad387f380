/*
 * conv.cu -- Caffe convolution (groups, stride, zero padding, bias, optional fused ReLU):
 * forward, gradient to the data, gradients to the weights and the bias.
 *
 * Layout (all float32, C-contiguous):
 *   x  (N, C, H, W)          input                 P  = Ho * Wo   output pixels
 *   w  (K, Cg, kh, kw)       filters, Cg = C / G   KK = kh * kw   kernel taps
 *   b  (K,)                  bias                  Kg = K / G     filters per group
 *   y  (N, K, Ho, Wo)        output, Ho = (H + 2 pad - kh) / stride + 1
 * Group g (of G) maps input channels [g Cg, (g+1) Cg) to filters [g Kg, (g+1) Kg).
 *   y[n, k, oh, ow] = b[k] + sum_{c < Cg, i < kh, j < kw}
 *                     w[k, c, i, j] * x[n, g Cg + c, oh stride - pad + i, ow stride - pad + j]
 * with x = 0 outside the image (the padding).
 *
 * v1: direct kernels, one thread per output element, the readable version.
 *   conv_forward_v1        one thread per y element, sums over (c, i, j).
 *   conv_backward_data_v1  one thread per dx element; it gathers from the dy elements
 *                          whose window covers it (no scatter, no atomics), visiting only
 *                          the output positions that can reach it (stride-aware).
 *   conv_backward_weights_v1  one thread per dw element, sums over (n, oh, ow).
 *   Grid ceil(count / 256) blocks of 256 threads.
 *
 * v2: implicit GEMM, the fast version.  Each pass is a matrix product per group,
 *       out (M, Ncol) = A (M, R) @ B (R, Ncol),
 *   whose operands are never written to global memory: the tile loaders compute the
 *   address of each element from its indices (the im2col matrix exists only as 8 x 128
 *   slabs in shared memory).
 *     forward          M = Kg, R = Cg KK (c, i, j),  Ncol = N P  (n, oh, ow)
 *                      A = w,  B = im2col(x),  out = y  (+ bias, ReLU)
 *     backward data    M = Cg, R = Kg KK (k, i, j),  Ncol = N H W (n, h, w)
 *                      A = w (transposed per tap), B[(k,i,j), (n,h,w)] = dy[n, k, oh, ow]
 *                      where h = oh stride - pad + i (else 0): every dx element gathers.
 *     backward weights M = Kg, R = N P (n, oh, ow),  Ncol = Cg KK (c, i, j)
 *                      A = dy,  B = im2col(x)^T,  out = dw
 *   Tiling is that of gemm_v3 (gemm.cu): 256 threads compute a 128 x 128 tile of out,
 *   8 x 8 per thread in registers; the R loop steps by 8 with double-buffered shared
 *   slabs As[r][m], Bs[r][col] (the micro-kernel slab_multiply_8x8 is in prelude.cuh,
 *   shared with gemm_v3).  Grid (ceil(Ncol / 128), ceil(M / 128), G * S): z is
 *   (split s, group g) = (z / G, z % G).  Only backward weights uses S > 1 splits: its
 *   R = N P is long (193600 for conv1 at batch 64) while its output is small, so the R
 *   range is cut into S chunks whose partial dw go to a (S, K, Cg KK) buffer, added in a
 *   fixed order by conv_sum_partials (deterministic, no atomics).
 *   Loading: a thread loads 4 elements of each slab per step: for A, one reduction index
 *   and 4 rows 32 apart; for B, one column (fixed for the whole loop) and 4 consecutive
 *   reduction indices.  The indices are split into (c, i, j)-style digits once and then
 *   counted, not divided, each step (see IgDigits).  With stride > 1 most of backward
 *   data's B operand is zero (between strides), so the launcher uses the v1 gather there.
 *
 * Shared by both versions: conv_bias_grad, db[k] = sum over (n, oh, ow) of dy, one block
 * per filter with a shared-memory tree reduction; with a fused ReLU it also writes the
 * masked gradient dy * (y > 0) that the other passes then use.
 */

/* ---------------------------------------------------------------------------------- */
/* Geometry                                                                            */
/* ---------------------------------------------------------------------------------- */

struct ConvGeom {
    int N, C, H, W, K, kh, kw, stride, pad, G, Ho, Wo;
    int Cg, Kg, KK, P;   /* derived: C / G, K / G, kh * kw, Ho * Wo */
};

__device__ __forceinline__ ConvGeom conv_geom(int N, int C, int H, int W, int K, int kh,
                                              int kw, int stride, int pad, int G, int Ho,
                                              int Wo) {
    ConvGeom g;
    g.N = N; g.C = C; g.H = H; g.W = W; g.K = K; g.kh = kh; g.kw = kw;
    g.stride = stride; g.pad = pad; g.G = G; g.Ho = Ho; g.Wo = Wo;
    g.Cg = C / G; g.Kg = K / G; g.KK = kh * kw; g.P = Ho * Wo;
    return g;
}

/* The argument list every kernel below starts its geometry with. */
#define CONV_GEOM_PARAMS int N, int C, int H, int W, int K, int kh, int kw, int stride, \
                         int pad, int G, int Ho, int Wo
#define CONV_GEOM_ARGS N, C, H, W, K, kh, kw, stride, pad, G, Ho, Wo

/* x[n, c, ih, iw] for the input pixel seen by output (oh, ow) through tap (i, j), or 0 in
   the padding.  c is the absolute channel. */
__device__ __forceinline__ float conv_x_at(const float* x, const ConvGeom& g, int n, int c,
                                           int oh, int ow, int i, int j) {
    int ih = oh * g.stride - g.pad + i, iw = ow * g.stride - g.pad + j;
    if (ih < 0 || ih >= g.H || iw < 0 || iw >= g.W) return 0.0f;
    return x[(((size_t)n * g.C + c) * g.H + ih) * g.W + iw];
}

/* dy[n, k, oh, ow] for the output that sees input pixel (h, w) through tap (i, j):
   h = oh stride - pad + i; 0 when no such output exists (off the grid or between
   strides).  k is the absolute filter. */
__device__ __forceinline__ float conv_dy_at(const float* dy, const ConvGeom& g, int n,
                                            int k, int h, int w, int i, int j) {
    int oh = h + g.pad - i, ow = w + g.pad - j;   /* = (oh, ow) * stride */
    if (oh < 0 || ow < 0) return 0.0f;
    if (g.stride > 1) {   /* skips two divisions in the common stride-1 case */
        if (oh % g.stride || ow % g.stride) return 0.0f;
        oh /= g.stride;
        ow /= g.stride;
    }
    if (oh >= g.Ho || ow >= g.Wo) return 0.0f;
    return dy[(((size_t)n * g.K + k) * g.Ho + oh) * g.Wo + ow];
}

/* Output positions o (along one axis) whose tap t lands inside the image:
   0 <= o stride - pad + t < size, as the half-open range [*lo, *hi). */
__device__ __forceinline__ void conv_range_in_image(int t, int stride, int pad, int size,
                                                    int out_size, int* lo, int* hi) {
    int a = pad - t;                   /* need o stride >= a */
    int b = size - 1 + pad - t;        /* need o stride <= b */
    *lo = a <= 0 ? 0 : (a + stride - 1) / stride;
    int h = b < 0 ? 0 : b / stride + 1;
    *hi = h < out_size ? h : out_size;
}

/* ---------------------------------------------------------------------------------- */
/* v1: direct kernels                                                                  */
/* ---------------------------------------------------------------------------------- */

/* y (N, K, Ho, Wo) = conv(x, w) + b, ReLU if relu.  One thread per y element. */
extern "C" __global__ void conv_forward_v1(const float* x, const float* w, const float* b,
                                           float* y, CONV_GEOM_PARAMS, int relu) {
    ConvGeom g = conv_geom(CONV_GEOM_ARGS);
    size_t idx = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (idx >= (size_t)g.N * g.K * g.P) return;
    int ow = idx % g.Wo, oh = (idx / g.Wo) % g.Ho;
    int k = (idx / g.P) % g.K, n = idx / ((size_t)g.P * g.K);
    int c0 = (k / g.Kg) * g.Cg;   /* first input channel of k's group */
    float acc = b[k];
    for (int c = 0; c < g.Cg; ++c)
        for (int i = 0; i < g.kh; ++i)
            for (int j = 0; j < g.kw; ++j)
                acc += w[(((size_t)k * g.Cg + c) * g.kh + i) * g.kw + j] *
                       conv_x_at(x, g, n, c0 + c, oh, ow, i, j);
    y[idx] = (relu && acc < 0.0f) ? 0.0f : acc;
}

/* dx (N, C, H, W) from dy (N, K, Ho, Wo) (already ReLU-masked).  One thread per dx
   element, summing w[k, c, i, j] * dy[n, k, oh, ow] over the filters k of its group and
   the outputs (oh, ow) whose window covers it, with i = h + pad - oh stride. */
extern "C" __global__ void conv_backward_data_v1(const float* dy, const float* w, float* dx,
                                                 CONV_GEOM_PARAMS) {
    ConvGeom g = conv_geom(CONV_GEOM_ARGS);
    size_t idx = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (idx >= (size_t)g.N * g.C * g.H * g.W) return;
    int iw = idx % g.W, ih = (idx / g.W) % g.H;
    int c = (idx / ((size_t)g.H * g.W)) % g.C, n = idx / ((size_t)g.H * g.W * g.C);
    int grp = c / g.Cg, cl = c % g.Cg;
    int oh_lo, oh_hi, ow_lo, ow_hi;
    windows_covering(ih, g.stride, g.pad, g.kh, g.Ho, &oh_lo, &oh_hi);
    windows_covering(iw, g.stride, g.pad, g.kw, g.Wo, &ow_lo, &ow_hi);
    float acc = 0.0f;
    for (int k = grp * g.Kg; k < (grp + 1) * g.Kg; ++k)
        for (int oh = oh_lo; oh < oh_hi; ++oh)
            for (int ow = ow_lo; ow < ow_hi; ++ow) {
                int i = ih + g.pad - oh * g.stride, j = iw + g.pad - ow * g.stride;
                acc += w[(((size_t)k * g.Cg + cl) * g.kh + i) * g.kw + j] *
                       dy[(((size_t)n * g.K + k) * g.Ho + oh) * g.Wo + ow];
            }
    dx[idx] = acc;
}

/* dw (K, Cg, kh, kw) from dy (already ReLU-masked) and x.  One thread per dw element,
   summing dy[n, k, oh, ow] * x[n, c, oh stride - pad + i, ow stride - pad + j] over the
   batch and the outputs whose tap lands inside the image. */
extern "C" __global__ void conv_backward_weights_v1(const float* dy, const float* x,
                                                    float* dw, CONV_GEOM_PARAMS) {
    ConvGeom g = conv_geom(CONV_GEOM_ARGS);
    size_t idx = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (idx >= (size_t)g.K * g.Cg * g.KK) return;
    int j = idx % g.kw, i = (idx / g.kw) % g.kh;
    int cl = (idx / g.KK) % g.Cg, k = idx / ((size_t)g.KK * g.Cg);
    int c = (k / g.Kg) * g.Cg + cl;
    int oh_lo, oh_hi, ow_lo, ow_hi;
    conv_range_in_image(i, g.stride, g.pad, g.H, g.Ho, &oh_lo, &oh_hi);
    conv_range_in_image(j, g.stride, g.pad, g.W, g.Wo, &ow_lo, &ow_hi);
    float acc = 0.0f;
    for (int n = 0; n < g.N; ++n)
        for (int oh = oh_lo; oh < oh_hi; ++oh)
            for (int ow = ow_lo; ow < ow_hi; ++ow)
                acc += dy[(((size_t)n * g.K + k) * g.Ho + oh) * g.Wo + ow] *
                       x[(((size_t)n * g.C + c) * g.H + oh * g.stride - g.pad + i) * g.W +
                         ow * g.stride - g.pad + j];
    dw[idx] = acc;
}

/* ---------------------------------------------------------------------------------- */
/* Bias gradient (both versions) and split-sum                                         */
/* ---------------------------------------------------------------------------------- */

#define CBG_THREADS 256

/* db[k] = sum_{n, p} dy_eff[n, k, p], dy_eff = dy * (y > 0) if relu else dy; with relu,
   dy_eff is also written to dy_out (same shape as dy).  grid (K), block (256): the block
   of filter k strides over its N * P elements, then halves a shared array of partial sums
   until one is left (fixed order: deterministic).  Without relu, y and dy_out are not
   touched (the launcher passes dy for both). */
extern "C" __global__ void conv_bias_grad(const float* dy, const float* y, float* dy_out,
                                          float* db, int N, int K, int P, int relu) {
    __shared__ float part[CBG_THREADS];
    int k = blockIdx.x, tid = threadIdx.x;
    float s = 0.0f;
    for (size_t e = tid; e < (size_t)N * P; e += CBG_THREADS) {
        size_t i = ((e / P) * K + k) * P + e % P;
        float v = dy[i];
        if (relu) {
            if (!(y[i] > 0.0f)) v = 0.0f;
            dy_out[i] = v;
        }
        s += v;
    }
    const float total = block_reduce(part, s, 0);   /* kernels/prelude.cuh */
    if (tid == 0) db[k] = total;
}

/* out[i] = sum_{s < splits} partial[s * count + i], in order s = 0, 1, ...
   grid ceil(count / 256), block 256. */
extern "C" __global__ void conv_sum_partials(const float* partial, float* out, int count,
                                             int splits) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= count) return;
    float s = 0.0f;
    for (int z = 0; z < splits; ++z) s += partial[(size_t)z * count + i];
    out[i] = s;
}

/* ---------------------------------------------------------------------------------- */
/* v2: implicit GEMM                                                                   */
/* ---------------------------------------------------------------------------------- */

#define IG_BM 128          /* tile rows (M)                              */
#define IG_BN 128          /* tile columns (Ncol)                        */
#define IG_BK 8            /* reduction depth per step                   */
#define IG_THREADS 256
#define IG_LD (IG_BM + 4)  /* padded shared row: conflict-free stores, rows stay
                              16-byte aligned for the float4 reads        */
#define IG_SLAB (IG_BK * IG_LD)   /* floats in one shared slab                   */

/* The double-buffered shared slabs of one v2 block (2 x 2 x 8 x 132 floats = 16.5 KiB). */
#define IG_SHARED_SLABS                                   \
    __shared__ __align__(16) float As[2 * IG_SLAB];       \
    __shared__ __align__(16) float Bs[2 * IG_SLAB]

#define IG_FORWARD 0
#define IG_BACKWARD_DATA 1
#define IG_BACKWARD_WEIGHTS 2

/* Sizes of the product for a pass: out (M, Ncol) = A (M, R) @ B (R, Ncol), per group. */
__device__ __forceinline__ void ig_dims(int mode, const ConvGeom& g, int* M, int* Ncol,
                                        int* R) {
    if (mode == IG_FORWARD) {
        *M = g.Kg; *Ncol = g.N * g.P; *R = g.Cg * g.KK;
    } else if (mode == IG_BACKWARD_DATA) {
        *M = g.Cg; *Ncol = g.N * g.H * g.W; *R = g.Kg * g.KK;
    } else {
        *M = g.Kg; *Ncol = g.Cg * g.KK; *R = g.N * g.P;
    }
}

/* Every reduction index r and column index col of the three passes is a triple of
   "digits" in a mixed radix (outer, mid, inner):
     forward          r = (c, i, j)     radix (kh, kw)    col = (n, oh, ow)  radix (Ho, Wo)
     backward data    r = (k, i, j)     radix (kh, kw)    col = (n, h, w)    radix (H, W)
     backward weights r = (n, oh, ow)   radix (Ho, Wo)    col = (c, i, j)    radix (kh, kw)
   Splitting an index costs two integer divisions, so the loaders split once and then
   count (ig_digits_next): a thread's column is fixed for the whole loop, and its 4
   reduction indices in a slab are consecutive. */
struct IgDigits { int d0, d1, d2; };

__device__ __forceinline__ IgDigits ig_digits(int v, int mid, int inner) {
    IgDigits d;
    int q = v / inner;
    d.d2 = v - q * inner;
    d.d0 = q / mid;
    d.d1 = q - d.d0 * mid;
    return d;
}

__device__ __forceinline__ void ig_digits_next(IgDigits* d, int mid, int inner) {
    if (++d->d2 == inner) {
        d->d2 = 0;
        if (++d->d1 == mid) { d->d1 = 0; ++d->d0; }
    }
}

__device__ __forceinline__ void ig_r_radix(int mode, const ConvGeom& g, int* mid, int* inner) {
    if (mode == IG_BACKWARD_WEIGHTS) { *mid = g.Ho; *inner = g.Wo; }
    else { *mid = g.kh; *inner = g.kw; }
}

__device__ __forceinline__ void ig_col_radix(int mode, const ConvGeom& g, int* mid,
                                             int* inner) {
    if (mode == IG_FORWARD) { *mid = g.Ho; *inner = g.Wo; }
    else if (mode == IG_BACKWARD_DATA) { *mid = g.H; *inner = g.W; }
    else { *mid = g.kh; *inner = g.kw; }
}

/* B[r, col] of group grp from the digits of r and col (caller checks r < R, col < Ncol). */
__device__ __forceinline__ float ig_b(int mode, const ConvGeom& g, const float* B, int grp,
                                      IgDigits r, IgDigits col) {
    if (mode == IG_FORWARD)          /* im2col(x)[(c, i, j), (n, oh, ow)] */
        return conv_x_at(B, g, col.d0, grp * g.Cg + r.d0, col.d1, col.d2, r.d1, r.d2);
    if (mode == IG_BACKWARD_DATA)    /* dy seen from pixel (n, h, w) through tap (k, i, j) */
        return conv_dy_at(B, g, col.d0, grp * g.Kg + r.d0, col.d1, col.d2, r.d1, r.d2);
    /* backward weights: im2col(x)^T[(n, oh, ow), (c, i, j)] */
    return conv_x_at(B, g, r.d0, grp * g.Cg + col.d0, r.d1, r.d2, col.d1, col.d2);
}

/* A is separable: A[m, r] = A[ig_a_row(m) + ig_a_col(r)], so a thread splits its one
   reduction index per slab once for its 4 rows.
     forward          w[grp Kg + m, (c, i, j) = r]
     backward data    w[grp Kg + k, m, q],  r = (k, q)
     backward weights dy[n, grp Kg + m, p], r = (n, p) */
__device__ __forceinline__ size_t ig_a_row(int mode, const ConvGeom& g, int grp, int m) {
    if (mode == IG_FORWARD) return ((size_t)grp * g.Kg + m) * g.Cg * g.KK;
    if (mode == IG_BACKWARD_DATA) return ((size_t)grp * g.Kg * g.Cg + m) * g.KK;
    return ((size_t)grp * g.Kg + m) * g.P;
}

__device__ __forceinline__ size_t ig_a_col(int mode, const ConvGeom& g, int r) {
    if (mode == IG_FORWARD) return r;
    int span = mode == IG_BACKWARD_DATA ? g.KK : g.P;   /* the inner part q or p */
    int outer = r / span;
    size_t outer_stride = mode == IG_BACKWARD_DATA ? (size_t)g.Cg * g.KK : (size_t)g.K * g.P;
    return outer * outer_stride + (r - outer * span);
}

/* This thread's 4 elements of the A slab (rows m0.., reduction r0..) into S[r][m].
   Thread t takes reduction offset t % 8 and rows t / 8 + 32 e: the 8 threads sharing a
   row read consecutive r (mostly consecutive addresses). */
__device__ __forceinline__ void ig_fetch_a(int mode, const ConvGeom& g, const float* A,
                                           int grp, int M, int r_end, int m0, int r0, int t,
                                           float v[4]) {
    int r = r0 + t % 8;
    size_t col_off = r < r_end ? ig_a_col(mode, g, r) : 0;
    for (int e = 0; e < 4; ++e) {
        int m = m0 + t / 8 + 32 * e;
        v[e] = (m < M && r < r_end) ? A[ig_a_row(mode, g, grp, m) + col_off] : 0.0f;
    }
}

__device__ __forceinline__ void ig_stash_a(float* S, int t, const float v[4]) {
    for (int e = 0; e < 4; ++e) S[(t % 8) * IG_LD + t / 8 + 32 * e] = v[e];
}

/* This thread's 4 elements of the B slab into S[r][col]: column t % 128 (neighbouring
   threads, neighbouring pixels), whose digits `cd` the caller split once, and the 4
   consecutive reduction indices r0 + (t / 128) * 4 + e. */
__device__ __forceinline__ void ig_fetch_b(int mode, const ConvGeom& g, const float* B,
                                           int grp, int col_ok, IgDigits cd, int r_end,
                                           int r0, int t, float v[4]) {
    int r = r0 + (t / 128) * 4, mid, inner;
    ig_r_radix(mode, g, &mid, &inner);
    IgDigits rd = ig_digits(r, mid, inner);
    for (int e = 0; e < 4; ++e) {
        v[e] = (col_ok && r + e < r_end) ? ig_b(mode, g, B, grp, rd, cd) : 0.0f;
        ig_digits_next(&rd, mid, inner);
    }
}

__device__ __forceinline__ void ig_stash_b(float* S, int t, const float v[4]) {
    for (int e = 0; e < 4; ++e) S[((t / 128) * 4 + e) * IG_LD + t % 128] = v[e];
}


/* Writes one finished element out[m, col] of group grp (split slice z for backward
   weights) to its place in the output tensor. */
__device__ __forceinline__ void ig_store(int mode, const ConvGeom& g, float* out,
                                         const float* bias, int relu, int grp, int z,
                                         int m, int col, float v) {
    if (mode == IG_FORWARD) {          /* y[n, grp Kg + m, p], col = (n, p) */
        int k = grp * g.Kg + m;
        v += bias[k];
        if (relu && v < 0.0f) v = 0.0f;
        out[((size_t)(col / g.P) * g.K + k) * g.P + col % g.P] = v;
    } else if (mode == IG_BACKWARD_DATA) {  /* dx[n, grp Cg + m, pix], col = (n, pix) */
        int hw = g.H * g.W;
        out[((size_t)(col / hw) * g.C + grp * g.Cg + m) * hw + col % hw] = v;
    } else {                           /* partial dw[z, grp Kg + m, (c, i, j) = col] */
        out[((size_t)z * g.K + grp * g.Kg + m) * g.Cg * g.KK + col] = v;
    }
}

/* One 128 x 128 output tile of pass `mode`, see the header.  r_chunk: reduction length
   per split (a multiple of 8; >= R when there is one split).  As and Bs are the
   kernel's shared slabs, 2 buffers of IG_SLAB floats each (declared in the kernels:
   the emulator cannot place static shared arrays inside an inline function). */
__device__ __forceinline__ void ig_tile(int mode, const ConvGeom& g, const float* A,
                                        const float* B, float* out, const float* bias,
                                        int relu, int r_chunk, float* As, float* Bs) {
    int t = threadIdx.x, tx = t % 16, ty = t / 16;
    int grp = blockIdx.z % g.G, z = blockIdx.z / g.G;
    int M, Ncol, R;
    ig_dims(mode, g, &M, &Ncol, &R);
    int m0 = blockIdx.y * IG_BM, n0 = blockIdx.x * IG_BN;
    int r_begin = z * r_chunk;
    int r_end = r_begin + r_chunk < R ? r_begin + r_chunk : R;

    float acc[8][8];
    for (int i = 0; i < 8; ++i)
        for (int j = 0; j < 8; ++j) acc[i][j] = 0.0f;

    /* As in gemm_v3, threads whose sub-tile lies wholly outside out skip the arithmetic
       (e.g. backward data with Cg = 48 channels: 4 of 16 thread rows have work). */
    int live = (m0 + ty * 4 < M) && (n0 + tx * 4 < Ncol);

    /* The B column this thread loads never changes: split it into digits once. */
    int col = n0 + t % 128, col_ok = col < Ncol, cmid, cinner;
    ig_col_radix(mode, g, &cmid, &cinner);
    IgDigits cd = ig_digits(col, cmid, cinner);

    /* Double buffering exactly as in gemm_v3: fetch the next slab into registers while
       multiplying the current one; one barrier per step. */
    float va[4], vb[4];
    ig_fetch_a(mode, g, A, grp, M, r_end, m0, r_begin, t, va);
    ig_fetch_b(mode, g, B, grp, col_ok, cd, r_end, r_begin, t, vb);
    ig_stash_a(As, t, va);
    ig_stash_b(Bs, t, vb);
    __syncthreads();
    int buf = 0;
    for (int r0 = r_begin; r0 < r_end; r0 += IG_BK) {
        int has_next = r0 + IG_BK < r_end;
        if (has_next) {
            ig_fetch_a(mode, g, A, grp, M, r_end, m0, r0 + IG_BK, t, va);
            ig_fetch_b(mode, g, B, grp, col_ok, cd, r_end, r0 + IG_BK, t, vb);
        }
        if (live)
            slab_multiply_8x8<IG_BK, IG_LD>(As + buf * IG_SLAB, Bs + buf * IG_SLAB, ty, tx, acc);
        if (has_next) {
            ig_stash_a(As + (buf ^ 1) * IG_SLAB, t, va);
            ig_stash_b(Bs + (buf ^ 1) * IG_SLAB, t, vb);
        }
        __syncthreads();
        buf ^= 1;
    }

    for (int i = 0; i < 8; ++i) {
        int m = m0 + slab_sub(ty, i);
        if (m >= M) continue;
        for (int j = 0; j < 8; ++j) {
            int col = n0 + slab_sub(tx, j);
            if (col < Ncol) ig_store(mode, g, out, bias, relu, grp, z, m, col, acc[i][j]);
        }
    }
}

/* The three v2 kernels are capped at 128 registers (__launch_bounds__) so that two
   blocks fit on a multiprocessor; ptxas then spills a few loop-invariant values. */

/* y = conv(x, w) + b (ReLU if relu).  grid (ceil(N P / 128), ceil(Kg / 128), G),
   block 256. */
extern "C" __global__ void __launch_bounds__(IG_THREADS, 2)
    conv_forward_v2(const float* x, const float* w, const float* b, float* y,
                    CONV_GEOM_PARAMS, int relu) {
    ConvGeom g = conv_geom(CONV_GEOM_ARGS);
    IG_SHARED_SLABS;
    ig_tile(IG_FORWARD, g, w, x, y, b, relu, g.Cg * g.KK, As, Bs);
}

/* dx from dy (already ReLU-masked).  grid (ceil(N H W / 128), ceil(Cg / 128), G),
   block 256. */
extern "C" __global__ void __launch_bounds__(IG_THREADS, 2)
    conv_backward_data_v2(const float* dy, const float* w, float* dx, CONV_GEOM_PARAMS) {
    ConvGeom g = conv_geom(CONV_GEOM_ARGS);
    IG_SHARED_SLABS;
    ig_tile(IG_BACKWARD_DATA, g, w, dy, dx, dy, 0, g.Kg * g.KK, As, Bs);
}

/* Partial dw (S, K, Cg, kh, kw) over reduction chunks of r_chunk (a multiple of 8) of
   the N P outputs; S = 1 writes dw itself.  grid (ceil(Cg KK / 128), ceil(Kg / 128),
   G S), block 256. */
extern "C" __global__ void __launch_bounds__(IG_THREADS, 2)
    conv_backward_weights_v2(const float* dy, const float* x, float* dw_partial,
                             CONV_GEOM_PARAMS, int r_chunk) {
    ConvGeom g = conv_geom(CONV_GEOM_ARGS);
    IG_SHARED_SLABS;
    ig_tile(IG_BACKWARD_WEIGHTS, g, dy, x, dw_partial, dy, 0, r_chunk, As, Bs);
}
