/* Softmax over the channel axis, SoftmaxWithLoss and top-1 accuracy (Caffe's SoftmaxLayer,
 * SoftmaxWithLossLayer with normalization over the batch, AccuracyLayer with top_k = 1).
 *
 * Data layout: scores viewed as (N, C, S), C-contiguous float32: S = 1 for a classifier's
 * (N, C) scores, S = H * W for a fully convolutional (N, C, H, W) score map. The C values
 * of one (n, s) "column" are S floats apart. labels (N,) int32.
 *
 * softmax: p[c] = exp(x[c] - max_c x) / sum_c exp(x[c] - max_c x)  (max subtracted for
 *          stability, as Caffe does).
 *   v1: one thread per (n, s) column, grid-stride loop over N * S. For S > 1 neighbouring
 *       threads read neighbouring addresses (coalesced); best for the score map (C small).
 *   v2: one block per column (grid-stride over columns in blocks), the block's threads
 *       stride over C and combine their partial max and sum with shared-memory tree
 *       reductions. Best for few long rows, e.g. (N, 1000) ImageNet scores.
 *
 * softmax_loss_v1: ONE block; thread t takes rows t, t + blockDim, ...; each adds
 *   -log(max(p[n, label[n]], FLT_MIN)); a shared-memory reduction sums the block; thread 0
 *   writes loss[0] = sum / N (mean over the batch). The clamp at FLT_MIN (1.17549435e-38f)
 *   keeps the loss finite when a probability underflows to 0, as in Caffe.
 * softmax_loss_backward_v1: grid-stride over the N * C elements,
 *   d[n, c] = (p[n, c] - (c == label[n])) * scale,  scale = loss_weight / N.
 * accuracy_count_v1: ONE block; each thread finds the argmax of its rows (first maximum
 *   wins ties, i.e. the lowest index) and counts matches with the label; a shared-memory
 *   reduction gives count[0] (as a float; exact below 2^24 rows). The launcher divides by N.
 *
 * FLT_MIN comes from kernels/prelude.cuh (no <float.h> under NVRTC).
 * The one-block reductions (block_reduce, kernels/prelude.cuh) need blockDim.x a power of
 * two and blockDim.x floats of dynamic shared memory (the launcher passes both).
 */

extern "C" __global__ void softmax_v1(const float* __restrict__ x, float* __restrict__ p, int N,
                                      int C, int S)
{
    const int columns = N * S;
    for (int t = blockIdx.x * blockDim.x + threadIdx.x; t < columns; t += blockDim.x * gridDim.x) {
        const long long base = column_offset(t, C, S);
        const float* xc = x + base;
        float* pc = p + base;
        float m = xc[0];
        for (int c = 1; c < C; ++c) m = fmaxf(m, xc[c * S]);
        float sum = 0.0f;
        for (int c = 0; c < C; ++c) {
            const float e = expf(xc[c * S] - m);
            pc[c * S] = e;
            sum += e;
        }
        for (int c = 0; c < C; ++c) pc[c * S] /= sum;
    }
}

extern "C" __global__ void softmax_v2(const float* __restrict__ x, float* __restrict__ p, int N,
                                      int C, int S)
{
    EXTERN_SHARED(float, buf);
    const int columns = N * S;
    // col depends only on the block, so all threads of a block agree on the loop count.
    for (int col = blockIdx.x; col < columns; col += gridDim.x) {
        const long long base = column_offset(col, C, S);
        const float* xc = x + base;
        float* pc = p + base;
        float m = xc[0];
        for (int c = threadIdx.x; c < C; c += blockDim.x) m = fmaxf(m, xc[c * S]);
        m = block_reduce(buf, m, 1);
        float sum = 0.0f;
        for (int c = threadIdx.x; c < C; c += blockDim.x) {
            const float e = expf(xc[c * S] - m);
            pc[c * S] = e;
            sum += e;
        }
        sum = block_reduce(buf, sum, 0);
        // Each thread divides only the entries it wrote itself: no barrier needed.
        for (int c = threadIdx.x; c < C; c += blockDim.x) pc[c * S] /= sum;
    }
}

extern "C" __global__ void softmax_loss_v1(const float* __restrict__ p,
                                           const int* __restrict__ labels,
                                           float* __restrict__ loss, int N, int C)
{
    EXTERN_SHARED(float, buf);
    float acc = 0.0f;
    for (int n = threadIdx.x; n < N; n += blockDim.x)
        acc -= logf(fmaxf(p[(long long)n * C + labels[n]], FLT_MIN));
    acc = block_reduce(buf, acc, 0);
    if (threadIdx.x == 0) loss[0] = acc / (float)N;
}

extern "C" __global__ void softmax_loss_backward_v1(const float* __restrict__ p,
                                                    const int* __restrict__ labels,
                                                    float* __restrict__ d, int N, int C,
                                                    float scale)
{
    const int total = N * C;
    for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < total; i += blockDim.x * gridDim.x) {
        const float onehot = (i % C == labels[i / C]) ? 1.0f : 0.0f;
        d[i] = (p[i] - onehot) * scale;
    }
}

extern "C" __global__ void accuracy_count_v1(const float* __restrict__ scores,
                                             const int* __restrict__ labels,
                                             float* __restrict__ count, int N, int C)
{
    EXTERN_SHARED(float, buf);
    float hits = 0.0f;
    for (int n = threadIdx.x; n < N; n += blockDim.x) {
        const float* row = scores + (long long)n * C;
        int best = 0;
        for (int c = 1; c < C; ++c)
            if (row[c] > row[best]) best = c;
        if (best == labels[n]) hits += 1.0f;
    }
    hits = block_reduce(buf, hits, 0);
    if (threadIdx.x == 0) count[0] = hits;
}
