/* SGD with momentum and weight decay, in place (Caffe's SGDSolver, one parameter blob).
 *
 *   history = momentum * history + lr * (grad * grad_scale + weight_decay * param)
 *   param  -= history
 *
 * lr and weight_decay already include the blob's lr_mult / decay_mult, grad_scale is
 * 1 / iter_size (Caffe's Normalize step). The operations are done in Caffe's order:
 * scale the gradient, add the decay term (Regularize), then the momentum update
 * (ComputeUpdateValue) and the subtraction (Update).
 *
 * Data layout: param, grad and history are flat float32 arrays of the same n elements.
 *
 * Work split: 1-D grid-stride loop over the elements (see relu.cu).
 *   v1: one element per step.
 *   v2: four elements per step with float4 loads/stores; all pointers must be 16-byte
 *       aligned (the launcher checks); the n % 4 tail is done by the first threads.
 */

__device__ __forceinline__ void sgd_step(float& p, float g, float& h, float lr, float momentum,
                                         float weight_decay, float grad_scale)
{
    const float d = g * grad_scale + weight_decay * p;
    h = momentum * h + lr * d;
    p = p - h;
}

extern "C" __global__ void sgd_update_v1(float* __restrict__ param, const float* __restrict__ grad,
                                         float* __restrict__ history, int n, float lr,
                                         float momentum, float weight_decay, float grad_scale)
{
    for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < n; i += blockDim.x * gridDim.x) {
        float p = param[i], h = history[i];
        sgd_step(p, grad[i], h, lr, momentum, weight_decay, grad_scale);
        param[i] = p;
        history[i] = h;
    }
}

extern "C" __global__ void sgd_update_v2(float* __restrict__ param, const float* __restrict__ grad,
                                         float* __restrict__ history, int n, float lr,
                                         float momentum, float weight_decay, float grad_scale)
{
    const int tid = blockIdx.x * blockDim.x + threadIdx.x;
    const int stride = blockDim.x * gridDim.x;
    const int n4 = n / 4;
    float4* p4 = reinterpret_cast<float4*>(param);
    const float4* g4 = reinterpret_cast<const float4*>(grad);
    float4* h4 = reinterpret_cast<float4*>(history);
    for (int i = tid; i < n4; i += stride) {
        float4 p = p4[i], h = h4[i];
        const float4 g = g4[i];
        sgd_step(p.x, g.x, h.x, lr, momentum, weight_decay, grad_scale);
        sgd_step(p.y, g.y, h.y, lr, momentum, weight_decay, grad_scale);
        sgd_step(p.z, g.z, h.z, lr, momentum, weight_decay, grad_scale);
        sgd_step(p.w, g.w, h.w, lr, momentum, weight_decay, grad_scale);
        p4[i] = p;
        h4[i] = h;
    }
    const int i = 4 * n4 + tid;
    if (i < n) {
        float p = param[i], h = history[i];
        sgd_step(p, grad[i], h, lr, momentum, weight_decay, grad_scale);
        param[i] = p;
        history[i] = h;
    }
}
