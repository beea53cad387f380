/* Dropout forward and backward with a counter-based hash instead of a stored random mask.
 *
 * Element i (the flat index into the C-contiguous array) is kept when
 *     hash32(seed, i) > threshold,   threshold = uint32(floor(ratio * 4294967295.0)),
 * with the hash of docs/design.md, all on wrapping uint32 arithmetic:
 *     h = i * 0x9E3779B1 + seed * 0x85EBCA77
 *     h ^= h >> 16; h *= 0x85EBCA6B; h ^= h >> 13; h *= 0xC2B2AE35; h ^= h >> 16
 * The NumPy reference computes the same function, so masks are bit-identical on every
 * device. Because the mask is a pure function of (seed, i), backward recomputes it instead
 * of reading a stored mask (no extra memory traffic for a mask array).
 *
 * Each element is multiplied by its mask value, scale = 1 / (1 - ratio) where kept and 0
 * where dropped, with scale rounded to float32 by the launcher: the same single multiply
 * as the NumPy reference (x * mask), so outputs are bit-identical too (even -0 and NaN).
 *
 * Work split: 1-D grid-stride loop over the n elements (see relu.cu), one element per step.
 */

__device__ __forceinline__ unsigned int dropout_hash(unsigned int seed, unsigned int i)
{
    unsigned int h = i * 0x9E3779B1u + seed * 0x85EBCA77u;
    h ^= h >> 16;
    h *= 0x85EBCA6Bu;
    h ^= h >> 13;
    h *= 0xC2B2AE35u;
    h ^= h >> 16;
    return h;
}

/* y = x * mask, mask = scale where kept, 0 where dropped. Also used for backward (x := dy). */
extern "C" __global__ void dropout_apply_v1(const float* __restrict__ x, float* __restrict__ y,
                                            int n, unsigned int seed, unsigned int threshold,
                                            float scale)
{
    for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < n; i += blockDim.x * gridDim.x)
        y[i] = x[i] * (dropout_hash(seed, (unsigned int)i) > threshold ? scale : 0.0f);
}
