/* MAX pooling forward and backward, exactly Caffe's PoolingLayer (MAX, square kernel).
 *
 * Data layout: x (N, C, H, W) and y (N, C, Ho, Wo), C-contiguous float32. Every (n, c) pair
 * is an independent "plane"; planes = N * C. argmax (N, C, Ho, Wo) int32 holds, for each
 * output, the flat index h * W + w of the chosen input inside its own plane.
 *
 * Caffe's rules (the launcher computes Ho, Wo):
 *   Ho = ceil((H + 2*pad - kernel) / stride) + 1, minus 1 if pad > 0 and the last window
 *   would start at or beyond H + pad; pad < kernel.
 *   The window of output (ho, wo) covers rows [ho*stride - pad, ho*stride - pad + kernel)
 *   clipped to [0, H), same for columns; padding is never a candidate.
 *   Ties: the first maximum in row-major order wins (strict '>' while scanning).
 *   A window wholly outside the image (stride > kernel, pad = 0) gives -FLT_MAX, argmax -1.
 *
 * Forward:
 *   v1: one thread per output element, grid-stride loop over planes * Ho * Wo; neighbouring
 *       threads compute neighbouring outputs of a row (coalesced writes; the reads of
 *       overlapping windows are shared through the cache).
 *   v2: one block per (plane, tile of blockDim.y x blockDim.x outputs): one thread per
 *       output of the tile, whose size the launcher alone sets (kernels/pool.py TILE_W,
 *       TILE_H). The block first copies the input patch its windows
 *       cover into shared memory (each input read once from global memory instead of up to
 *       (kernel/stride)^2 times), synchronises, then each thread scans its window in shared
 *       memory. The patch is (blockDim.y-1)*stride + kernel rows by
 *       (blockDim.x-1)*stride + kernel columns (dynamic shared memory, launcher sizes it).
 *       gridDim = (tiles across, tiles down, min(planes, 65535)); blocks loop over planes
 *       in steps of gridDim.z.
 *
 * Backward (no atomics, deterministic): one thread per INPUT element. Windows overlap when
 * stride < kernel, so an input can be the argmax of several outputs; the thread gathers
 * dy over exactly the outputs whose window contains it:
 *   ho in [ (h + pad < kernel) ? 0 : (h + pad - kernel) / stride + 1,
 *           min((h + pad) / stride + 1, Ho) )
 * and adds dy where argmax equals its own index (the same range Caffe's GPU code uses).
 */

/* Scan one clipped window of a plane stored with row pitch `pitch`; (h0, w0) is the
 * window's clipped start and (h1, w1) its clipped end (exclusive), all in the coordinates
 * of `plane`. Returns the maximum and writes its position (row-major first maximum).
 * Like Caffe, the running maximum starts at -FLT_MAX with no position (*best_h = -1): a
 * window that lies entirely outside the image (possible with stride > kernel, pad = 0, where
 * the ceil rule adds a last window starting at H) yields -FLT_MAX and argmax -1, and so
 * receives no gradient. */
__device__ __forceinline__ float window_max(const float* plane, int pitch, int h0, int h1,
                                            int w0, int w1, int* best_h, int* best_w)
{
    float m = -FLT_MAX;
    int bh = -1, bw = -1;
    for (int h = h0; h < h1; ++h)
        for (int w = w0; w < w1; ++w) {
            const float v = plane[h * pitch + w];
            if (v > m) { m = v; bh = h; bw = w; }
        }
    *best_h = bh;
    *best_w = bw;
    return m;
}

extern "C" __global__ void max_pool_forward_v1(const float* __restrict__ x, float* __restrict__ y,
                                               int* __restrict__ argmax, int planes, int H,
                                               int W, int Ho, int Wo, int kernel, int stride,
                                               int pad)
{
    const int total = planes * Ho * Wo;
    for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < total; i += blockDim.x * gridDim.x) {
        int p, ho, wo;
        unravel3(i, Ho, Wo, &p, &ho, &wo);
        const int hs = ho * stride - pad, ws = wo * stride - pad;
        const int he = min(hs + kernel, H), we = min(ws + kernel, W);
        int bh, bw;
        y[i] = window_max(x + (long long)p * H * W, W, max(hs, 0), he, max(ws, 0), we, &bh, &bw);
        argmax[i] = bh < 0 ? -1 : bh * W + bw;
    }
}

extern "C" __global__ void max_pool_forward_v2(const float* __restrict__ x, float* __restrict__ y,
                                               int* __restrict__ argmax, int planes, int H,
                                               int W, int Ho, int Wo, int kernel, int stride,
                                               int pad)
{
    EXTERN_SHARED(float, patch);
    const int tile_h = blockDim.y, tile_w = blockDim.x;   // one thread per output of the tile
    const int ho0 = blockIdx.y * tile_h;            // first output row/col of this tile
    const int wo0 = blockIdx.x * tile_w;
    const int ph = (tile_h - 1) * stride + kernel;  // patch size
    const int pw = (tile_w - 1) * stride + kernel;
    const int h_org = ho0 * stride - pad;           // image row of patch row 0 (may be < 0)
    const int w_org = wo0 * stride - pad;
    const int tid = threadIdx.y * blockDim.x + threadIdx.x;
    const int nthreads = blockDim.x * blockDim.y;

    // Planes are strided over gridDim.z (which is capped at 65535); p depends only on the
    // block, so every thread of the block runs the same iterations and reaches each barrier.
    for (int p = blockIdx.z; p < planes; p += gridDim.z) {
        const float* plane = x + (long long)p * H * W;

        // Cooperative copy of the in-image part of the patch (the rest is never read).
        for (int j = tid; j < ph * pw; j += nthreads) {
            const int r = j / pw, c = j % pw;
            const int h = h_org + r, w = w_org + c;
            if (h >= 0 && h < H && w >= 0 && w < W) patch[j] = plane[h * W + w];
        }
        __syncthreads();

        const int ho = ho0 + threadIdx.y, wo = wo0 + threadIdx.x;
        if (ho < Ho && wo < Wo) {
            const int hs = ho * stride - pad, ws = wo * stride - pad;
            const int he = min(hs + kernel, H), we = min(ws + kernel, W);
            int bh, bw;   // in patch coordinates
            const float m = window_max(patch, pw, max(hs, 0) - h_org, he - h_org,
                                       max(ws, 0) - w_org, we - w_org, &bh, &bw);
            const int o = (p * Ho + ho) * Wo + wo;
            y[o] = m;
            argmax[o] = bh < 0 ? -1 : (bh + h_org) * W + (bw + w_org);
        }
        __syncthreads();   // everyone is done reading the patch before the next plane's copy
    }
}

extern "C" __global__ void max_pool_backward_v1(const float* __restrict__ dy,
                                                const int* __restrict__ argmax,
                                                float* __restrict__ dx, int planes, int H,
                                                int W, int Ho, int Wo, int kernel, int stride,
                                                int pad)
{
    const int total = planes * H * W;
    for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < total; i += blockDim.x * gridDim.x) {
        int p, h, w;
        unravel3(i, H, W, &p, &h, &w);
        int ph0, ph1, pw0, pw1;   // the windows that contain (h, w): kernels/prelude.cuh
        windows_covering(h, stride, pad, kernel, Ho, &ph0, &ph1);
        windows_covering(w, stride, pad, kernel, Wo, &pw0, &pw1);
        const int self = h * W + w;
        const int* am = argmax + (long long)p * Ho * Wo;
        const float* g = dy + (long long)p * Ho * Wo;
        float sum = 0.0f;
        for (int ph = ph0; ph < ph1; ++ph)
            for (int pw = pw0; pw < pw1; ++pw)
                if (am[ph * Wo + pw] == self) sum += g[ph * Wo + pw];
        dx[i] = sum;
    }
}
