/* Local response normalisation across channels, exactly Caffe's LRNLayer (ACROSS_CHANNELS).
 *
 * Data layout: x, y, scale (N, C, H, W), C-contiguous float32. An (n, h, w) "column" is the
 * C values x[n, :, h, w], which are S = H * W floats apart in memory.
 *
 *   scale[c] = k + alpha_over_n * sum_{c' = c - half .. c + half, clipped to [0, C)} x[c']^2
 *   y[c]     = x[c] * scale[c]^(-beta)
 *   dx[c]    = dy[c] * scale[c]^(-beta)
 *              - ratio * x[c] * sum_{c' in window(c)} dy[c'] * y[c'] / scale[c']
 * with half = (local_size - 1) / 2 (local_size is odd, as Caffe requires, so the window is
 * symmetric and the backward window equals the forward one), alpha_over_n =
 * alpha / local_size and ratio = 2 * alpha * beta / local_size. Forward stores scale for
 * backward.
 *
 * Work split:
 *   v1: one thread per element (grid-stride loop over N*C*H*W), each summing its own
 *       window: simple, local_size loads per output.
 *   v2: one thread per (n, h, w) column (grid-stride loop over N*H*W), sliding the window
 *       down the channels: add the channel entering the window, subtract the one leaving
 *       it (Caffe's own GPU strategy). Neighbouring threads take neighbouring w, so every
 *       access is coalesced, and each input is read twice instead of local_size times.
 */

extern "C" __global__ void lrn_forward_v1(const float* __restrict__ x, float* __restrict__ y,
                                          float* __restrict__ scale, int N, int C, int S,
                                          int half, float alpha_over_n, float beta, float k)
{
    const int total = N * C * S;
    for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < total; i += blockDim.x * gridDim.x) {
        int n, c, s;
        unravel3(i, C, S, &n, &c, &s);
        const float* col = x + (long long)n * C * S + s;
        const int c0 = max(c - half, 0), c1 = min(c + half, C - 1);
        float sum = 0.0f;
        for (int j = c0; j <= c1; ++j) sum += col[j * S] * col[j * S];
        const float sc = k + alpha_over_n * sum;
        scale[i] = sc;
        y[i] = x[i] * powf(sc, -beta);
    }
}

extern "C" __global__ void lrn_backward_v1(const float* __restrict__ dy,
                                           const float* __restrict__ x,
                                           const float* __restrict__ y,
                                           const float* __restrict__ scale,
                                           float* __restrict__ dx, int N, int C, int S,
                                           int half, float beta, float ratio)
{
    const int total = N * C * S;
    for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < total; i += blockDim.x * gridDim.x) {
        int n, c, s;
        unravel3(i, C, S, &n, &c, &s);
        const long long base = (long long)n * C * S + s;
        const int c0 = max(c - half, 0), c1 = min(c + half, C - 1);
        float sum = 0.0f;
        for (int j = c0; j <= c1; ++j) {
            const long long o = base + (long long)j * S;
            sum += dy[o] * y[o] / scale[o];
        }
        dx[i] = dy[i] * powf(scale[i], -beta) - ratio * x[i] * sum;
    }
}

extern "C" __global__ void lrn_forward_v2(const float* __restrict__ x, float* __restrict__ y,
                                          float* __restrict__ scale, int N, int C, int S,
                                          int half, float alpha_over_n, float beta, float k)
{
    const int columns = N * S;
    for (int t = blockIdx.x * blockDim.x + threadIdx.x; t < columns; t += blockDim.x * gridDim.x) {
        const long long base = column_offset(t, C, S);
        const float* xc = x + base;
        float* yc = y + base;
        float* sc = scale + base;
        // Prime the window with channels 0 .. half-1; then step `head` through the channels:
        // channel `head` enters, channel head - 2*half - 1 leaves, and output c = head - half
        // is complete. Heads beyond C only let channels leave (the window's clipped tail).
        float sum = 0.0f;
        int head = 0;
        for (; head < half && head < C; ++head) sum += xc[head * S] * xc[head * S];
        for (; head < C + half; ++head) {
            if (head < C) sum += xc[head * S] * xc[head * S];
            const int leave = head - 2 * half - 1;
            if (leave >= 0) sum -= xc[leave * S] * xc[leave * S];
            const int c = head - half;
            if (c >= 0) {
                const float s_c = k + alpha_over_n * sum;
                sc[c * S] = s_c;
                yc[c * S] = xc[c * S] * powf(s_c, -beta);
            }
        }
    }
}

extern "C" __global__ void lrn_backward_v2(const float* __restrict__ dy,
                                           const float* __restrict__ x,
                                           const float* __restrict__ y,
                                           const float* __restrict__ scale,
                                           float* __restrict__ dx, int N, int C, int S,
                                           int half, float beta, float ratio)
{
    const int columns = N * S;
    for (int t = blockIdx.x * blockDim.x + threadIdx.x; t < columns; t += blockDim.x * gridDim.x) {
        const long long base = column_offset(t, C, S);
        const float* dyc = dy + base;
        const float* xc = x + base;
        const float* yc = y + base;
        const float* sc = scale + base;
        float* dxc = dx + base;
        // Same sliding window as lrn_forward_v2, over the terms dy * y / scale.
        float sum = 0.0f;
        int head = 0;
        for (; head < half && head < C; ++head) sum += dyc[head * S] * yc[head * S] / sc[head * S];
        for (; head < C + half; ++head) {
            if (head < C) sum += dyc[head * S] * yc[head * S] / sc[head * S];
            const int leave = head - 2 * half - 1;
            if (leave >= 0) sum -= dyc[leave * S] * yc[leave * S] / sc[leave * S];
            const int c = head - half;
            if (c >= 0)
                dxc[c * S] = dyc[c * S] * powf(sc[c * S], -beta) - ratio * xc[c * S] * sum;
        }
    }
}
