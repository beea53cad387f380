/* ReLU forward and backward (Caffe's ReLULayer with negative_slope = 0).
 *
 * Data layout: the layer is elementwise, so the tensors (any shape, C-contiguous float32)
 * are treated as flat arrays of n elements.
 *
 * Work split: a 1-D grid of 1-D blocks walks the array with a grid-stride loop (thread t of
 * the whole grid handles elements t, t + T, t + 2T, ... where T = gridDim.x * blockDim.x),
 * so any n works with a capped grid size and neighbouring threads touch neighbouring
 * addresses (coalesced loads and stores).
 *
 *   v1: one float per step.
 *   v2: four floats per step through float4 loads/stores (16-byte transactions, fewer
 *       instructions per byte). Needs every pointer 16-byte aligned (the launcher checks);
 *       the n % 4 leftover elements at the end are done one by one by the first threads.
 *
 * Backward uses the forward OUTPUT y: dx = dy where y > 0, else 0. y > 0 exactly where
 * x > 0, so this is Caffe's gradient (0 at x = 0), and fused layers need only keep y.
 */

__device__ __forceinline__ float relu_value(float v) { return v > 0.0f ? v : 0.0f; }

__device__ __forceinline__ float relu_grad(float dy, float y) { return y > 0.0f ? dy : 0.0f; }

extern "C" __global__ void relu_forward_v1(const float* __restrict__ x, float* __restrict__ y,
                                           int n)
{
    for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < n; i += blockDim.x * gridDim.x)
        y[i] = relu_value(x[i]);
}

extern "C" __global__ void relu_backward_v1(const float* __restrict__ dy,
                                            const float* __restrict__ y,
                                            float* __restrict__ dx, int n)
{
    for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < n; i += blockDim.x * gridDim.x)
        dx[i] = relu_grad(dy[i], y[i]);
}

extern "C" __global__ void relu_forward_v2(const float* __restrict__ x, float* __restrict__ y,
                                           int n)
{
    const int tid = blockIdx.x * blockDim.x + threadIdx.x;
    const int stride = blockDim.x * gridDim.x;
    const int n4 = n / 4;
    const float4* x4 = reinterpret_cast<const float4*>(x);
    float4* y4 = reinterpret_cast<float4*>(y);
    for (int i = tid; i < n4; i += stride) {
        float4 v = x4[i];
        v.x = relu_value(v.x); v.y = relu_value(v.y);
        v.z = relu_value(v.z); v.w = relu_value(v.w);
        y4[i] = v;
    }
    // The tail (at most 3 elements) that does not fill a float4.
    const int i = 4 * n4 + tid;
    if (i < n) y[i] = relu_value(x[i]);
}

extern "C" __global__ void relu_backward_v2(const float* __restrict__ dy,
                                            const float* __restrict__ y,
                                            float* __restrict__ dx, int n)
{
    const int tid = blockIdx.x * blockDim.x + threadIdx.x;
    const int stride = blockDim.x * gridDim.x;
    const int n4 = n / 4;
    const float4* dy4 = reinterpret_cast<const float4*>(dy);
    const float4* y4 = reinterpret_cast<const float4*>(y);
    float4* dx4 = reinterpret_cast<float4*>(dx);
    for (int i = tid; i < n4; i += stride) {
        const float4 g = dy4[i];
        const float4 v = y4[i];
        float4 r;
        r.x = relu_grad(g.x, v.x); r.y = relu_grad(g.y, v.y);
        r.z = relu_grad(g.z, v.z); r.w = relu_grad(g.w, v.w);
        dx4[i] = r;
    }
    const int i = 4 * n4 + tid;
    if (i < n) dx[i] = relu_grad(dy[i], y[i]);
}
