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
 *   slabs As[r][m], Bs[r][col] (the micro-kernel slab_multiply is in prelude.cuh, shared
 *   with gemm_v3).  Each pass also has a narrow kernel (_m64) whose tiles have 64 rows,
 *   4 x 8 per thread: CaffeNet's M = 48 (conv2's dx) would leave 80 of a 128-row tile's
 *   rows idle, and M = 192 (conv4, conv5) a quarter of its rows; the launcher picks the
 *   height (kernels/conv.py auto_tile_rows).  With 128-row tiles alone, 24% of the tile
 *   work of a CaffeNet training step is padding; choosing per pass leaves 9%.
 *   Grid (ceil(Ncol / 128), ceil(M / BM), G * S), BM = 128 or 64: z is
 *   (split s, group g) = (z / G, z % G).  Only backward weights uses S > 1 splits: its
 *   R = N P is long (193600 for conv1 at batch 64) while its output is small, so the R
 *   range is cut into S chunks whose partial dw go to a (S, K, Cg KK) buffer, added in a
 *   fixed order by gemm.cu's gemm_splitk_reduce (deterministic, no atomics).
 *   Loading: per step a thread loads 4 elements of each slab (2 of A's in the 64-row
 *   kernels, whose A slab is half as tall).  Both operands are
 *   separable, element = src[part(r) + part(col)] (see IgPart), so each thread computes
 *   its columns' parts once, and per step one reduction index's part, counted forward
 *   rather than divided (IgDigits); an element then costs a few adds and compares, in
 *   32-bit offsets (the launcher keeps every tensor under 2^31 elements).  The main
 *   loop's body (512 FMAs per step) went from 838 to 657 instructions (forward), 884 to
 *   669 (backward weights) and 1279 to 665 (backward data, whose old loop also held the
 *   stride > 1 code): FMAs are 77-78% of it, up from 40-61% (`python -m
 *   tools.sass_stats conv.cu`, sm_90 as CuPy compiles it; counted, not timed).
 *   With stride > 1 most of backward data's B operand is zero (between strides) and not
 *   separable, so the launcher uses the v1 gather there.
 *
 * TF32 (tf32 = 1, the launcher's version 3): the same tiles and loaders, the operands
 *   rounded to TF32 as they go into shared memory and each slab multiplied on tensor cores
 *   (slab_multiply_tf32 in prelude.cuh: mma.sync.m16n8k8, warp w computing rows
 *   (w / 4) BM/2 .. + BM/2 and columns (w % 4) 32 .. + 32 of the tile).  The main loop
 *   issues 181-192 instructions per step for the 128-row tiles, against 657-669 on CUDA
 *   cores (python -m tools.sass_stats conv.cu).  Shared rows are then padded by 8, so that
 *   a warp's fragment reads hit 32 different banks.
 *
 * Shared by all versions: conv_bias_grad, db[k] = sum over (n, oh, ow) of dy, one block
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
/* Bias gradient (both versions)                                                       */
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


/* ---------------------------------------------------------------------------------- */
/* v2: implicit GEMM                                                                   */
/* ---------------------------------------------------------------------------------- */

/* A tile has BM = 128 rows (M), or 64 ("narrow": the *_m64 kernels, for M such as 48 or
   192 that would leave much of a 128-row tile idle), and 128 columns (Ncol). */
#define IG_BN 128          /* tile columns (Ncol)                        */
#define IG_BK 8            /* reduction depth per step                   */
#define IG_THREADS 256
/* Padded shared rows.  CUDA cores (TF32 = 0): 4 more floats, so that the stores are
   conflict free and rows stay 16-byte aligned for the float4 reads.  Tensor cores
   (TF32 = 1): 8 more, so that a warp's fragment reads hit 32 banks (slab_multiply_tf32). */
#define IG_LD_A(BM, TF32) ((BM) + ((TF32) ? 8 : 4))
#define IG_LD_B(TF32) (IG_BN + ((TF32) ? 8 : 4))

/* The double-buffered shared slabs of one v2 block, sized for the larger padding:
   2 x 8 x (BM + 8) and 2 x 8 x 136 floats (17 KiB for BM = 128). */
#define IG_SHARED_SLABS(BM)                                            \
    __shared__ __align__(16) float As[2 * IG_BK * IG_LD_A(BM, 1)];     \
    __shared__ __align__(16) float Bs[2 * IG_BK * IG_LD_B(1)]

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
   Splitting an index costs two integer divisions, so the loaders split once, before the
   reduction loop, and then count (ig_digits_advance). */
struct IgDigits { int d0, d1, d2; };

__device__ __forceinline__ IgDigits ig_digits(int v, int mid, int inner) {
    IgDigits d;
    int q = v / inner;
    d.d2 = v - q * inner;
    d.d0 = q / mid;
    d.d1 = q - d.d0 * mid;
    return d;
}

/* The digits of v + step from those of v (step > 0; a few loop turns when inner < step). */
__device__ __forceinline__ void ig_digits_advance(IgDigits* d, int step, int mid, int inner) {
    d->d2 += step;
    while (d->d2 >= inner) {
        d->d2 -= inner;
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

/* The B operand is separable: with a part computed from r alone and a part from col alone,
     B[r, col] = src[r.lin + col.lin]   if 0 <= r.y + col.y < ylim and 0 <= r.x + col.x < xlim,
                 0                      otherwise (the padding),
   where (y, x) is the pixel read, as a row and column of the input image x (forward,
   backward weights: ylim = H, xlim = W) or of dy (backward data: ylim = Ho, xlim = Wo),
   and lin its flat offset.  So a thread computes each column's part once, each step's r
   part once, and an element costs three adds, two compares and a load.  Offsets are int:
   the launcher checks that every tensor has fewer than 2^31 elements.
     forward          r (c, i, j):     y = i,        x = j,        lin = c H W + i W + j
                      col (n, oh, ow): y = oh s - pad, x = ow s - pad,
                                       lin = (n C + grp Cg) H W + y W + x
     backward data    r (k, i, j):     y = -i,       x = -j,       lin = k P - i Wo - j
     (stride 1)       col (n, h, w):   y = h + pad,  x = w + pad,
                                       lin = (n K + grp Kg) P + y Wo + x
     backward weights r (n, oh, ow):   y = oh s,     x = ow s,     lin = n C H W + y W + x
                      col (c, i, j):   y = i - pad,  x = j - pad,
                                       lin = (grp Cg + c) H W + y W + x
   Backward data at stride > 1 is not separable (dy exists only every s-th pixel); the
   launcher sends it to v1, and the v2 kernel computes it element by element (ig_b_strided),
   slow but correct. */
struct IgPart { int lin, y, x; };

#define IG_OFF_IMAGE (-(1 << 30))   /* a column part's y for columns past Ncol: never inside */

__device__ __forceinline__ IgPart ig_col_part(int mode, const ConvGeom& g, int grp, int col,
                                              int Ncol) {
    IgPart p;
    if (col >= Ncol) { p.lin = 0; p.y = IG_OFF_IMAGE; p.x = 0; return p; }
    int mid, inner;
    ig_col_radix(mode, g, &mid, &inner);
    IgDigits d = ig_digits(col, mid, inner);
    if (mode == IG_FORWARD) {
        p.y = d.d1 * g.stride - g.pad;
        p.x = d.d2 * g.stride - g.pad;
        p.lin = (d.d0 * g.C + grp * g.Cg) * g.H * g.W + p.y * g.W + p.x;
    } else if (mode == IG_BACKWARD_DATA) {
        p.y = d.d1 + g.pad;
        p.x = d.d2 + g.pad;
        p.lin = (d.d0 * g.K + grp * g.Kg) * g.P + p.y * g.Wo + p.x;
    } else {
        p.y = d.d1 - g.pad;
        p.x = d.d2 - g.pad;
        p.lin = (grp * g.Cg + d.d0) * g.H * g.W + p.y * g.W + p.x;
    }
    return p;
}

__device__ __forceinline__ IgPart ig_r_part(int mode, const ConvGeom& g, IgDigits d) {
    IgPart p;
    if (mode == IG_FORWARD) {
        p.y = d.d1; p.x = d.d2;
        p.lin = d.d0 * g.H * g.W + p.y * g.W + p.x;
    } else if (mode == IG_BACKWARD_DATA) {
        p.y = -d.d1; p.x = -d.d2;
        p.lin = d.d0 * g.P + p.y * g.Wo + p.x;
    } else {
        p.y = d.d1 * g.stride; p.x = d.d2 * g.stride;
        p.lin = d.d0 * g.C * g.H * g.W + p.y * g.W + p.x;
    }
    return p;
}

/* Backward data's B at stride > 1, from the digits of r = (k, i, j) and col = (n, h, w). */
__device__ __forceinline__ float ig_b_strided(const ConvGeom& g, const float* dy, int grp,
                                              IgDigits r, int col) {
    IgDigits c = ig_digits(col, g.H, g.W);
    return conv_dy_at(dy, g, c.d0, grp * g.Kg + r.d0, c.d1, c.d2, r.d1, r.d2);
}

/* A is separable too: A[m, r] = A[row(m) + column(r)], where r = (outer, inner) splits at
   `span` and column(r) = outer * ostride + inner:
     forward          w[grp Kg + m, r]            row (grp Kg + m) Cg KK   one span (R)
     backward data    w[grp Kg + k, m, q]         row (grp Kg Cg + m) KK   r = (k, q), span KK,
                                                                           ostride Cg KK
     backward weights dy[n, grp Kg + m, p]        row (grp Kg + m) P       r = (n, p), span P,
                                                                           ostride K P
   ig_a_layout gives row(m) for the thread's first row and the step between rows m, m+1. */
__device__ __forceinline__ void ig_a_layout(int mode, const ConvGeom& g, int grp, int m,
                                            int* row, int* row_step, int* span,
                                            int* ostride) {
    if (mode == IG_FORWARD) {
        *row_step = g.Cg * g.KK;
        *row = (grp * g.Kg + m) * *row_step;
        *span = 0x7fffffff; *ostride = 0;   /* r never wraps: column(r) = r */
    } else if (mode == IG_BACKWARD_DATA) {
        *row_step = g.KK;
        *row = (grp * g.Kg * g.Cg + m) * g.KK;
        *span = g.KK; *ostride = g.Cg * g.KK;
    } else {
        *row_step = g.P;
        *row = (grp * g.Kg + m) * g.P;
        *span = g.P; *ostride = g.K * g.P;
    }
}

/* What a thread needs to load its share of every step's slabs (8 reduction indices
   r0 .. r0 + 7), set up once by ig_loader_init and advanced by ig_fetch:
     A (BM x 8): thread t loads reduction index r0 + t % 8 of the rows t / 8 + 32 e
       (e < BM / 32): the 8 threads of a row read consecutive addresses.
     B (8 x 128): warp w = t / 32 loads row r0 + w, its lane l the columns l + 32 e: r is
       the same across a warp (one r part per step, no divergence) and neighbouring lanes
       read neighbouring pixels. */
struct IgLoader {
    int a_row, a_row_step, a_span, a_ostride;  /* A's layout, see ig_a_layout           */
    int a_rows;                                /* how many of its rows lie inside M     */
    int a_r, a_outer, a_inner;                 /* reduction index, split at the span    */
    IgPart cp[4];                              /* B: parts of the lane's 4 columns       */
    int b_r, rmid, rinner;                     /* B: this warp's reduction index ...    */
    IgDigits rd;                               /* ... and its digits                    */
    int ylim, xlim;
};

template <int BM>
__device__ __forceinline__ void ig_loader_init(IgLoader* L, int mode, const ConvGeom& g,
                                               int grp, int M, int Ncol, int m0, int n0,
                                               int r_begin) {
    int t = threadIdx.x, lane = t % 32;
    ig_a_layout(mode, g, grp, m0 + t / 8, &L->a_row, &L->a_row_step, &L->a_span,
                &L->a_ostride);
    int rows = (M - (m0 + t / 8) + 31) / 32;
    L->a_rows = rows < 0 ? 0 : (rows > BM / 32 ? BM / 32 : rows);
    L->a_r = r_begin + t % 8;
    L->a_outer = L->a_r / L->a_span;
    L->a_inner = L->a_r - L->a_outer * L->a_span;
#pragma unroll
    for (int e = 0; e < 4; ++e) L->cp[e] = ig_col_part(mode, g, grp, n0 + lane + 32 * e, Ncol);
    ig_r_radix(mode, g, &L->rmid, &L->rinner);
    L->b_r = r_begin + t / 32;
    L->rd = ig_digits(L->b_r, L->rmid, L->rinner);
    L->ylim = mode == IG_BACKWARD_DATA ? g.Ho : g.H;
    L->xlim = mode == IG_BACKWARD_DATA ? g.Wo : g.W;
}

/* This thread's 4 elements of the current step's A slab (va) and B slab (vb), zero past
   r_end or outside the operands; then advance to the next step.  strided: backward data at
   stride > 1 (ig_b_strided); a constant at every call, so the common path carries none of
   its code. */
template <int BM>
__device__ __forceinline__ void ig_fetch(IgLoader* L, int mode, int strided,
                                         const ConvGeom& g,
                                         const float* A, const float* B, int grp, int Ncol,
                                         int n0, int r_end, float va[BM / 32], float vb[4]) {
    int a_col = L->a_outer * L->a_ostride + L->a_inner, a_ok = L->a_r < r_end;
#pragma unroll
    for (int e = 0; e < BM / 32; ++e)
        va[e] = (a_ok && e < L->a_rows) ? A[L->a_row + e * 32 * L->a_row_step + a_col] : 0.0f;
    L->a_r += IG_BK;
    L->a_inner += IG_BK;
    while (L->a_inner >= L->a_span) { L->a_inner -= L->a_span; ++L->a_outer; }

    IgPart rp = ig_r_part(mode, g, L->rd);
    int b_ok = L->b_r < r_end, lane = threadIdx.x % 32;
#pragma unroll
    for (int e = 0; e < 4; ++e) {
        if (strided) {
            int col = n0 + lane + 32 * e;
            vb[e] = (b_ok && col < Ncol) ? ig_b_strided(g, B, grp, L->rd, col) : 0.0f;
        } else {
            int y = rp.y + L->cp[e].y, x = rp.x + L->cp[e].x;
            vb[e] = (b_ok && (unsigned)y < (unsigned)L->ylim && (unsigned)x < (unsigned)L->xlim)
                    ? B[rp.lin + L->cp[e].lin] : 0.0f;
        }
    }
    L->b_r += IG_BK;
    ig_digits_advance(&L->rd, IG_BK, L->rmid, L->rinner);
}

/* Store a thread's fetched elements into the shared slabs, rounded to TF32 for the tensor
   cores (once per element here, rather than once per use in every fragment). */
template <int BM, int TF32>
__device__ __forceinline__ void ig_stash_a(float* S, int t, const float v[BM / 32]) {
    for (int e = 0; e < BM / 32; ++e)
        S[(t % 8) * IG_LD_A(BM, TF32) + t / 8 + 32 * e] = TF32 ? tf32_round(v[e]) : v[e];
}

template <int TF32>
__device__ __forceinline__ void ig_stash_b(float* S, int t, const float v[4]) {
    for (int e = 0; e < 4; ++e)
        S[(t / 32) * IG_LD_B(TF32) + t % 32 + 32 * e] = TF32 ? tf32_round(v[e]) : v[e];
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


/* One BM x 128 output tile of pass `mode`, see the header.  r_chunk: reduction length
   per split (a multiple of 8; >= R when there is one split).  As and Bs are the
   kernel's shared slabs, 2 buffers each (IG_SHARED_SLABS, declared in the kernels: the
   emulator cannot place static shared arrays inside an inline function).  STRIDED:
   backward data at stride > 1 (see ig_fetch).  TF32: the products on tensor cores
   (slab_multiply_tf32) instead of CUDA cores (slab_multiply); the accumulators then hold
   other elements of the tile (mma_acc_row / mma_acc_col instead of slab_sub). */
template <int BM, int STRIDED, int TF32>
__device__ __forceinline__ void ig_tile(int mode, const ConvGeom& g, const float* A,
                                        const float* B, float* out, const float* bias,
                                        int relu, int r_chunk, float* As, float* Bs) {
    const int LDA = IG_LD_A(BM, TF32), LDB = IG_LD_B(TF32);
    int t = threadIdx.x, tx = t % 16, ty = t / 16;
    int grp = blockIdx.z % g.G, z = blockIdx.z / g.G;
    int M, Ncol, R;
    ig_dims(mode, g, &M, &Ncol, &R);
    int m0 = blockIdx.y * BM, n0 = blockIdx.x * IG_BN;
    int r_begin = z * r_chunk;
    int r_end = r_begin + r_chunk < R ? r_begin + r_chunk : R;

    float acc[BM / 16][8];   /* CUDA cores: 8 x 8 sub-tile (BM = 128) or 4 x 8 (64) */
    for (int i = 0; i < BM / 16; ++i)
        for (int j = 0; j < 8; ++j) acc[i][j] = 0.0f;

    /* As in gemm_v3, threads whose sub-tile lies wholly outside out skip the arithmetic
       (e.g. backward data with Cg = 48 channels on a 128-row tile: 12 of 16 thread rows
       have work, and half the accumulators of those).  Not on tensor cores: a warp's
       mma needs all its threads. */
    int live = TF32 || ((m0 + ty * 4 < M) && (n0 + tx * 4 < Ncol));

    IgLoader L;
    ig_loader_init<BM>(&L, mode, g, grp, M, Ncol, m0, n0, r_begin);

    /* Double buffering exactly as in gemm_v3: fetch the next slab into registers while
       multiplying the current one; one barrier per step. */
    float va[BM / 32], vb[4];
    ig_fetch<BM>(&L, mode, STRIDED, g, A, B, grp, Ncol, n0, r_end, va, vb);
    ig_stash_a<BM, TF32>(As, t, va);
    ig_stash_b<TF32>(Bs, t, vb);
    __syncthreads();
    int buf = 0;
    for (int r0 = r_begin; r0 < r_end; r0 += IG_BK) {
        int has_next = r0 + IG_BK < r_end;
        if (has_next) ig_fetch<BM>(&L, mode, STRIDED, g, A, B, grp, Ncol, n0, r_end, va, vb);
        const float* as = As + buf * IG_BK * LDA;
        const float* bs = Bs + buf * IG_BK * LDB;
        if (TF32)
            slab_multiply_tf32<LDA, LDB, BM / 32>(as, bs, acc);
        else if (live)
            slab_multiply<IG_BK, LDB, BM / 64, LDA>(as, bs, ty, tx, acc);
        if (has_next) {
            ig_stash_a<BM, TF32>(As + (buf ^ 1) * IG_BK * LDA, t, va);
            ig_stash_b<TF32>(Bs + (buf ^ 1) * IG_BK * LDB, t, vb);
        }
        __syncthreads();
        buf ^= 1;
    }

    for (int i = 0; i < BM / 16; ++i) {
        int m = m0 + (TF32 ? mma_acc_row<BM / 32>(i) : slab_sub(ty, i));
        if (m >= M) continue;
        for (int j = 0; j < 8; ++j) {
            int col = n0 + (TF32 ? mma_acc_col(j) : slab_sub(tx, j));
            if (col < Ncol) ig_store(mode, g, out, bias, relu, grp, z, m, col, acc[i][j]);
        }
    }
}

/* Pass `mode` with tiles of BM rows, on CUDA cores (tf32 = 0) or tensor cores (1), and
   backward data at stride > 1 through its own loader: each combination is its own inlined
   copy of the tile code, so a run's loop carries none of the others' instructions. */
template <int BM>
__device__ __forceinline__ void ig_pass(int mode, const ConvGeom& g, const float* A,
                                        const float* B, float* out, const float* bias,
                                        int relu, int r_chunk, int tf32, float* As,
                                        float* Bs) {
    if (mode == IG_BACKWARD_DATA && g.stride > 1) {
        if (tf32) ig_tile<BM, 1, 1>(mode, g, A, B, out, bias, relu, r_chunk, As, Bs);
        else ig_tile<BM, 1, 0>(mode, g, A, B, out, bias, relu, r_chunk, As, Bs);
    } else {
        if (tf32) ig_tile<BM, 0, 1>(mode, g, A, B, out, bias, relu, r_chunk, As, Bs);
        else ig_tile<BM, 0, 0>(mode, g, A, B, out, bias, relu, r_chunk, As, Bs);
    }
}

/* The 128-row kernels are capped at 128 registers (__launch_bounds__) so that two blocks
   fit on a multiprocessor, the 64-row ones at 85 so that three do; neither spills (for
   sm_90: python -m tools.sass_stats conv.cu).  Each pass has
   a 128-row and a 64-row (_m64) kernel with the same arguments; the launcher picks the
   one that leaves fewer tile rows idle.  Grid (ceil(Ncol / 128), ceil(M / BM), G [* S]),
   block 256. */

/* y = conv(x, w) + b (ReLU if relu): M = Kg, Ncol = N P. */
extern "C" __global__ void __launch_bounds__(IG_THREADS, 2)
    conv_forward_v2(const float* x, const float* w, const float* b, float* y,
                    CONV_GEOM_PARAMS, int relu, int tf32) {
    IG_SHARED_SLABS(128);
    ig_pass<128>(IG_FORWARD, conv_geom(CONV_GEOM_ARGS), w, x, y, b, relu, C / G * kh * kw,
                 tf32, As, Bs);
}

extern "C" __global__ void __launch_bounds__(IG_THREADS, 3)
    conv_forward_v2_m64(const float* x, const float* w, const float* b, float* y,
                        CONV_GEOM_PARAMS, int relu, int tf32) {
    IG_SHARED_SLABS(64);
    ig_pass<64>(IG_FORWARD, conv_geom(CONV_GEOM_ARGS), w, x, y, b, relu, C / G * kh * kw,
                tf32, As, Bs);
}

/* dx from dy (already ReLU-masked): M = Cg, Ncol = N H W. */
extern "C" __global__ void __launch_bounds__(IG_THREADS, 2)
    conv_backward_data_v2(const float* dy, const float* w, float* dx, CONV_GEOM_PARAMS,
                          int tf32) {
    IG_SHARED_SLABS(128);
    ig_pass<128>(IG_BACKWARD_DATA, conv_geom(CONV_GEOM_ARGS), w, dy, dx, dy, 0, K / G * kh * kw,
                 tf32, As, Bs);
}

extern "C" __global__ void __launch_bounds__(IG_THREADS, 3)
    conv_backward_data_v2_m64(const float* dy, const float* w, float* dx, CONV_GEOM_PARAMS,
                              int tf32) {
    IG_SHARED_SLABS(64);
    ig_pass<64>(IG_BACKWARD_DATA, conv_geom(CONV_GEOM_ARGS), w, dy, dx, dy, 0, K / G * kh * kw,
                tf32, As, Bs);
}

/* Partial dw (S, K, Cg, kh, kw) over reduction chunks of r_chunk (a multiple of 8) of
   the N P outputs; S = 1 writes dw itself: M = Kg, Ncol = Cg KK, grid z = G S. */
extern "C" __global__ void __launch_bounds__(IG_THREADS, 2)
    conv_backward_weights_v2(const float* dy, const float* x, float* dw_partial,
                             CONV_GEOM_PARAMS, int r_chunk, int tf32) {
    IG_SHARED_SLABS(128);
    ig_pass<128>(IG_BACKWARD_WEIGHTS, conv_geom(CONV_GEOM_ARGS), dy, x, dw_partial, dy, 0,
                 r_chunk, tf32, As, Bs);
}

extern "C" __global__ void __launch_bounds__(IG_THREADS, 3)
    conv_backward_weights_v2_m64(const float* dy, const float* x, float* dw_partial,
                                 CONV_GEOM_PARAMS, int r_chunk, int tf32) {
    IG_SHARED_SLABS(64);
    ig_pass<64>(IG_BACKWARD_WEIGHTS, conv_geom(CONV_GEOM_ARGS), dy, x, dw_partial, dy, 0,
                r_chunk, tf32, As, Bs);
}
