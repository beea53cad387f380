"""The kernel runner and the CPU kernel emulator, on tiny kernels written by the tests.

Every good kernel runs under the three thread orders of the emulator (and on the GPU with
`pytest -m gpu`); the self-tests show that the emulator catches the usual kernel bugs: a
missing __syncthreads(), reading shared memory before writing it, a barrier not all threads
reach, a failing device assert, a bad pointer; and that bad launches are refused.
"""
import ctypes
import os
import textwrap
import types

import numpy as np
import pytest

from kernels.runner import (KernelCompileError, KernelLaunchError, EmuRunner, check_args,
                            get_runner, parse_signatures, project_kernel_files, read_text,
                            resolve_source)
from tests.kernel_testing import EMU_ORDERS_WITH_RANDOM, to_host

ORDERS = EMU_ORDERS_WITH_RANDOM

GOOD_KERNELS = r'''
// Toy kernels for tests/test_emulator.py.
extern "C" __global__ void vec_add(const float* __restrict__ a, const float* b,
                                   float* out, int n)
{
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) out[i] = a[i] + b[i];
}

// Tree reduction over a block of 128 threads: out[block] = sum of its slice of x.
extern "C" __global__ void block_sum(const float* x, float* out, int n)
{
    __shared__ float buf[128];
    int t = threadIdx.x;
    int i = blockIdx.x * blockDim.x + t;
    buf[t] = i < n ? x[i] : 0.0f;
    __syncthreads();
    for (int s = blockDim.x / 2; s > 0; s >>= 1) {
        if (t < s) buf[t] += buf[t + s];
        __syncthreads();
    }
    if (t == 0) out[blockIdx.x] = buf[0];
}

// Reverses each block's slice through dynamic shared memory (two types in one file).
extern "C" __global__ void reverse_blocks(const float* x, float* y, int n)
{
    EXTERN_SHARED(float, tile);
    int t = threadIdx.x, i = blockIdx.x * blockDim.x + t;
    tile[t] = i < n ? x[i] : -1.0f;
    __syncthreads();
    int j = blockIdx.x * blockDim.x + (blockDim.x - 1 - t);
    if (j < n) y[j] = tile[t];
}

extern "C" __global__ void square_ints(const int* x, int* y, int n)
{
    EXTERN_SHARED(int, tile);
    int t = threadIdx.x, i = blockIdx.x * blockDim.x + t;
    tile[t] = i < n ? x[i] : 0;
    __syncthreads();
    if (i < n) y[i] = tile[t] * tile[t];
}

// Each thread writes its own coordinates: 8 ints per thread.
extern "C" __global__ void indices(int* out)
{
    unsigned int bid = blockIdx.x + gridDim.x * (blockIdx.y + gridDim.y * blockIdx.z);
    unsigned int tid = threadIdx.x + blockDim.x * (threadIdx.y + blockDim.y * threadIdx.z);
    int* o = out + 8 * (bid * blockDim.x * blockDim.y * blockDim.z + tid);
    o[0] = blockIdx.x; o[1] = blockIdx.y; o[2] = blockIdx.z;
    o[3] = threadIdx.x; o[4] = threadIdx.y; o[5] = threadIdx.z;
    o[6] = blockDim.x * 100 + blockDim.y * 10 + blockDim.z;
    o[7] = gridDim.x * 100 + gridDim.y * 10 + gridDim.z;
}

// Histogram, float sum and maximum through atomics.
extern "C" __global__ void atomics(const int* labels, const float* v, int* hist,
                                   float* total, int* biggest, unsigned int* count, int n)
{
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    atomicAdd(&hist[labels[i]], 1);
    atomicAdd(total, v[i]);
    atomicMax(biggest, labels[i] * 1000 + (i % 1000));
    atomicAdd(count, 1u);
}

// Records in which order the threads of a block ran (a ticket per thread).
extern "C" __global__ void tickets(int* counter, int* ticket)
{
    ticket[threadIdx.x] = atomicAdd(counter, 1);
}

// Writes through one pointer, then (after the barrier) reads through another: given two
// views of one buffer, it must read what was written.
extern "C" __global__ void write_then_read(float* w, const float* r, float* out)
{
    int t = threadIdx.x;
    w[t] = (float)t;
    __syncthreads();
    out[t] = r[blockDim.x - 1 - t];
}

// Records in which order the blocks of a 3D grid ran (a ticket per block, thread 0).
extern "C" __global__ void block_tickets(int* counter, int* ticket)
{
    int b = (blockIdx.z * gridDim.y + blockIdx.y) * gridDim.x + blockIdx.x;
    if (threadIdx.x == 0) ticket[b] = atomicAdd(counter, 1);
}

// Copies four floats a thread with one 16-byte load and store (x and y must be aligned).
extern "C" __global__ void copy_float4(const float* x, float* y)
{
    int t = threadIdx.x;
    *(float4*)(y + 4 * t) = *(const float4*)(x + 4 * t);
}

// Block b writes elements b, b + gridDim.x, ... of y[i * stride]: with a stride of a page or
// more, each block writes many pages apart. clash: both blocks also write y[0] (a race).
extern "C" __global__ void strided_write(float* y, int stride, int n, int clash)
{
    for (int i = blockIdx.x + gridDim.x * threadIdx.x; i < n; i += gridDim.x * blockDim.x)
        y[(long long)i * stride] = 1.0f + i;
    if (clash && threadIdx.x == 0) y[0] = 10.0f + blockIdx.x;
}

// Like tickets, over two rounds and per block: ticket[(2 * block + round) * blockDim.x + t]
// is the place of thread t among its block's threads before (round 0) and after (round 1)
// the barrier; counter has one element per block.
extern "C" __global__ void tickets_two_rounds(int* counter, int* ticket)
{
    int* mine = ticket + 2 * blockIdx.x * blockDim.x;
    mine[threadIdx.x] = atomicAdd(&counter[blockIdx.x], 1);
    __syncthreads();
    mine[blockDim.x + threadIdx.x] = atomicAdd(&counter[blockIdx.x], 1) - (int)blockDim.x;
}

// Reverses the float4s of x through dynamic shared memory: 16-byte loads and stores there
// too (x and y must be aligned; shared_mem at least 16 bytes a thread).
extern "C" __global__ void reverse_float4_shared(const float* x, float* y)
{
    EXTERN_SHARED(float4, tile);
    int t = threadIdx.x;
    tile[t] = ((const float4*)x)[t];
    __syncthreads();
    ((float4*)y)[t] = tile[blockDim.x - 1 - t];
}

// Every block sets y[0] to 1: whichever block writes last, the same value is left.
extern "C" __global__ void every_block_sets_one(float* y)
{
    if (threadIdx.x == 0) y[0] = 1.0f;
}

// A parameter type the runner does not support.
extern "C" __global__ void takes_double(double* x) { x[0] = 1.0; }
'''

BUGGY_KERNELS = r'''
// The tree reduction with the barrier inside the loop forgotten.
extern "C" __global__ void sum_no_sync(const float* x, float* out)
{
    __shared__ float buf[128];
    int t = threadIdx.x;
    buf[t] = x[blockIdx.x * blockDim.x + t];
    __syncthreads();
    for (int s = blockDim.x / 2; s > 0; s >>= 1) {
        if (t < s) buf[t] += buf[t + s];
    }
    if (t == 0) out[blockIdx.x] = buf[0];
}

// Shift by one through shared memory, barrier forgotten.
extern "C" __global__ void shift_no_sync(const float* x, float* y)
{
    __shared__ float buf[64];
    int t = threadIdx.x;
    buf[t] = x[t];
    y[t] = t > 0 ? buf[t - 1] : 0.0f;
}

// Reads the whole tile but writes only the first `written` entries.
extern "C" __global__ void partial_tile(const float* x, float* y, int* yi, int written)
{
    __shared__ float tile[32];
    __shared__ int itile[32];
    int t = threadIdx.x;
    if (t < written) { tile[t] = x[t]; itile[t] = 7; }
    __syncthreads();
    y[blockIdx.x * blockDim.x + t] = tile[t];
    yi[blockIdx.x * blockDim.x + t] = itile[t];
}

// Reads dynamic shared memory nobody wrote.
extern "C" __global__ void peek_dynamic(float* y)
{
    EXTERN_SHARED(float, tile);
    y[threadIdx.x] = tile[threadIdx.x];
}

extern "C" __global__ void barrier_in_branch(float* y)
{
    if (threadIdx.x < 16) __syncthreads();
    y[threadIdx.x] = 1.0f;
}

extern "C" __global__ void early_return(float* y, int n)
{
    if (threadIdx.x >= n) return;
    __syncthreads();
    y[threadIdx.x] = 1.0f;
}

extern "C" __global__ void two_barriers(float* y)
{
    if (threadIdx.x % 2) {
        __syncthreads();
    } else {
        __syncthreads();
    }
    y[threadIdx.x] = 2.0f;
}

extern "C" __global__ void checked(const float* x, int n)
{
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) assert(x[i] >= 0.0f);
}

// y[i] *= 2 for i <= n: one past the end, read, computed on and written back.
extern "C" __global__ void double_one_past(float* y, int n)
{
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i <= n) y[i] *= 2.0f;
}

// y[i] = x[i + shift] for i < n: with shift 1 the last thread reads one past x's end.
extern "C" __global__ void read_shifted(const float* x, float* y, int n, int shift)
{
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) y[i] = x[i + shift];
}

// y[i + shift] = 1 for i < n: with shift -1 thread 0 writes just before y's start.
extern "C" __global__ void write_shifted(float* y, int n, int shift)
{
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) y[i + shift] = 1.0f;
}

// Writes its input through a cast-away const: on a GPU the caller's x would change.
extern "C" __global__ void write_const(const float* x, float* y)
{
    ((float*)x)[threadIdx.x] = 7.0f;
    y[threadIdx.x] = 1.0f;
}

extern "C" __global__ void null_write(float* y)
{
    float* p = y + (threadIdx.x == 3 ? -(1L << 40) : 0);
    *p = 1.0f;
}

// Locals of 68,000 bytes: more than a fiber's 64 KiB stack.
extern "C" __global__ void big_locals(float* y)
{
    volatile float local[17000];
    for (int i = 0; i < 17000; i += 1000) local[i] = (float)i;
    y[threadIdx.x] = local[16000];
}

// A running sum that assumes block b - 1 has finished before block b starts: no GPU
// promises that (it runs blocks in any order, many at once).
extern "C" __global__ void sum_from_previous_block(const float* x, float* y)
{
    int b = blockIdx.x;
    if (threadIdx.x == 0) y[b] = (b > 0 ? y[b - 1] : 0.0f) + x[b];
}

// A dot product split over blocks, each adding its part to out[0] without an atomic:
// right when blocks run one after another, a lost update on a GPU.
extern "C" __global__ void dot_racy(const float* a, const float* b, float* out, int n)
{
    __shared__ float part[32];
    int t = threadIdx.x, i = blockIdx.x * blockDim.x + t;
    part[t] = i < n ? a[i] * b[i] : 0.0f;
    __syncthreads();
    if (t == 0) {
        float s = 0.0f;
        for (int k = 0; k < 32; ++k) s += part[k];
        out[0] += s;
    }
}

// Every block writes its own index to y[k]: the last block to run wins.
extern "C" __global__ void last_block_wins(float* y, int k)
{
    if (threadIdx.x == 0) y[k] = (float)(blockIdx.x + 10 * blockIdx.y);
}

extern "C" __global__ void big_static(float* y)
{
    __shared__ float big[4096];  // 16 KiB
    big[threadIdx.x] = 1.0f;
    __syncthreads();
    y[threadIdx.x] = big[threadIdx.x];
}

// Two barriers on line 500 of two files (as a __device__ helper in an included header and
// the kernel could be): even threads wait at one, odd threads at the other. Keep it last:
// the #line directives renumber everything after them.
extern "C" __global__ void barriers_in_two_files(float* y)
{
    if (threadIdx.x % 2) {
#line 500 "first.cuh"
        __syncthreads();
    } else {
#line 500 "second.cuh"
        __syncthreads();
    }
    y[threadIdx.x] = 3.0f;
}
'''


def _line_of(source, text):
    """1-based line number of the first line of `source` containing `text`."""
    return next(i for i, line in enumerate(source.splitlines(), 1) if text in line)


@pytest.fixture(scope='module')
def sources(tmp_path_factory):
    """Paths of the toy kernel files (written once per test module)."""
    d = tmp_path_factory.mktemp('toy_kernels')
    paths = {}
    for name, text in (('good.cu', GOOD_KERNELS), ('buggy.cu', BUGGY_KERNELS)):
        paths[name] = str(d / name)
        with open(paths[name], 'w') as f:
            f.write(text)
    return paths


def _runner(backend):
    if backend == 'cuda':
        return get_runner('cuda')
    return EmuRunner(order=backend, seed=12345)


@pytest.fixture(params=[*ORDERS, pytest.param('cuda', marks=pytest.mark.gpu)])
def runner(request):
    """An emulator under each thread order, and the GPU (pytest -m gpu)."""
    return _runner(request.param)


# ---------------------------------------------------------------------------------------
# Good kernels give the right values under every order.

def test_vector_add(runner, sources):
    rng = np.random.default_rng(1)
    n = 1001
    a, b = rng.standard_normal(n).astype(np.float32), rng.standard_normal(n).astype(np.float32)
    xp = runner.xp
    out = xp.full(n, np.nan, dtype=np.float32)
    runner.kernel(sources['good.cu'], 'vec_add')((n + 127) // 128, 128,
                                                 (xp.asarray(a), xp.asarray(b), out, np.int32(n)))
    np.testing.assert_array_equal(to_host(out), a + b)


def test_block_reduction(runner, sources):
    rng = np.random.default_rng(2)
    n = 1001
    x = rng.uniform(0.5, 1.5, n).astype(np.float32)
    blocks = (n + 127) // 128
    xp = runner.xp
    out = xp.zeros(blocks, dtype=np.float32)
    runner.kernel(sources['good.cu'], 'block_sum')(blocks, 128, (xp.asarray(x), out, np.int32(n)))
    expected = np.add.reduceat(x.astype(np.float64), np.arange(0, n, 128))
    np.testing.assert_allclose(to_host(out), expected, rtol=1e-5)


def test_dynamic_shared_memory(runner, sources):
    rng = np.random.default_rng(3)
    n, block = 203, 64
    blocks = (n + block - 1) // block
    x = rng.standard_normal(blocks * block).astype(np.float32)[:n]
    xp = runner.xp
    y = xp.zeros(n, dtype=np.float32)
    kernel = runner.kernel(sources['good.cu'], 'reverse_blocks')
    kernel(blocks, block, (xp.asarray(x), y, np.int32(n)), shared_mem=block * 4)
    padded = np.concatenate([x, np.full(blocks * block - n, -1.0, np.float32)])
    expected = padded.reshape(blocks, block)[:, ::-1].reshape(-1)[:n]
    np.testing.assert_array_equal(to_host(y), expected)

    xi = rng.integers(-1000, 1000, n).astype(np.int32)
    yi = xp.zeros(n, dtype=np.int32)
    kernel = runner.kernel(sources['good.cu'], 'square_ints')
    kernel(blocks, block, (xp.asarray(xi), yi, np.int32(n)), shared_mem=block * 4)
    np.testing.assert_array_equal(to_host(yi), xi * xi)


@pytest.mark.parametrize('grid, block', [((3, 2, 2), (5, 3, 2)), ((7,), (3, 5)), (2, 9)])
def test_grid_and_block_indices(runner, sources, grid, block):
    g = (grid if isinstance(grid, tuple) else (grid,)) + (1, 1)
    b = (block if isinstance(block, tuple) else (block,)) + (1, 1)
    g, b = g[:3], b[:3]
    out = runner.xp.full(8 * np.prod(g) * np.prod(b), -7, dtype=np.int32)
    runner.kernel(sources['good.cu'], 'indices')(grid, block, (out,))
    # Expected coordinates, blocks and threads both x-fastest.
    bz, by, bx, tz, ty, tx = np.meshgrid(*(np.arange(d) for d in (g[2], g[1], g[0],
                                                                   b[2], b[1], b[0])),
                                         indexing='ij')
    expected = np.stack([bx, by, bz, tx, ty, tz,
                         np.full_like(bx, b[0] * 100 + b[1] * 10 + b[2]),
                         np.full_like(bx, g[0] * 100 + g[1] * 10 + g[2])], axis=-1)
    np.testing.assert_array_equal(to_host(out), expected.reshape(-1))


def test_atomics(runner, sources):
    rng = np.random.default_rng(4)
    n = 777
    labels = rng.integers(0, 5, n).astype(np.int32)
    v = rng.uniform(0.5, 1.0, n).astype(np.float32)
    xp = runner.xp
    hist = xp.zeros(5, dtype=np.int32)
    total = xp.zeros(1, dtype=np.float32)
    biggest = xp.full(1, -1, dtype=np.int32)
    count = xp.zeros(1, dtype=np.uint32)
    runner.kernel(sources['good.cu'], 'atomics')(
        (n + 63) // 64, 64, (xp.asarray(labels), xp.asarray(v), hist, total, biggest, count,
                             np.int32(n)))
    np.testing.assert_array_equal(to_host(hist), np.bincount(labels, minlength=5))
    np.testing.assert_allclose(to_host(total)[0], v.astype(np.float64).sum(), rtol=1e-5)
    assert to_host(biggest)[0] == (labels * 1000 + np.arange(n) % 1000).max()
    assert to_host(count)[0] == n


# ---------------------------------------------------------------------------------------
# The emulator's thread orders and strictness.

def _tickets(runner, sources, threads=50):
    counter = np.zeros(1, np.int32)
    ticket = np.full(threads, -1, np.int32)
    runner.kernel(sources['good.cu'], 'tickets')(1, threads, (counter, ticket))
    return ticket


def _assert_orders(tickets_of, count):
    """tickets_of(runner) -> the place of each of `count` threads (or blocks) in the order
    they ran: forward runs them 0, 1, ...; reverse backwards; random in a permutation of
    its own, the same for the same seed and another for another seed."""
    forward = tickets_of(EmuRunner(order='forward'))
    reverse = tickets_of(EmuRunner(order='reverse'))
    random1 = tickets_of(EmuRunner(order='random', seed=5))
    random2 = tickets_of(EmuRunner(order='random', seed=5))
    random3 = tickets_of(EmuRunner(order='random', seed=6))
    np.testing.assert_array_equal(forward, np.arange(count))
    np.testing.assert_array_equal(reverse, np.arange(count)[::-1])
    assert sorted(random1) == list(range(count))
    assert not np.array_equal(random1, forward) and not np.array_equal(random1, reverse)
    np.testing.assert_array_equal(random1, random2)  # seeded: reproducible
    assert not np.array_equal(random1, random3)


def test_thread_orders(sources):
    _assert_orders(lambda runner: _tickets(runner, sources), 50)



def _two_round_tickets(runner, sources, blocks=3, threads=50):
    """tickets_two_rounds as [block, round, thread]: each thread's place in its block's
    order before and after the barrier."""
    counter = np.zeros(blocks, np.int32)
    ticket = np.full(blocks * 2 * threads, -1, np.int32)
    runner.kernel(sources['good.cu'], 'tickets_two_rounds')(blocks, threads, (counter, ticket))
    return ticket.reshape(blocks, 2, threads)


def test_random_thread_order_is_new_at_every_barrier_and_block(sources):
    """Random order draws a new order of the threads after every barrier and for every
    block (one fixed random order would hide a forgotten barrier between two steps that
    it happens to run in a good order); forward and reverse keep theirs."""
    forward = _two_round_tickets(EmuRunner(order='forward'), sources)
    reverse = _two_round_tickets(EmuRunner(order='reverse'), sources)
    np.testing.assert_array_equal(forward, np.broadcast_to(np.arange(50), (3, 2, 50)))
    np.testing.assert_array_equal(reverse, np.broadcast_to(np.arange(50)[::-1], (3, 2, 50)))
    random = _two_round_tickets(EmuRunner(order='random', seed=5), sources)
    orders = {tuple(random[b, r]) for b in range(3) for r in range(2)}
    assert all(sorted(o) == list(range(50)) for o in orders)
    assert len(orders) == 6     # every round of every block in an order of its own


def test_each_launch_of_a_runner_gets_its_own_random_order(sources):
    """One runner launching a kernel again draws new random orders (the kernel tests
    launch many times from one runner: all in one order would test one order), and a
    runner with the same seed repeats the sequence."""
    runner = EmuRunner(order='random', seed=5)
    first, second = _tickets(runner, sources), _tickets(runner, sources)
    assert not np.array_equal(first, second)
    again = EmuRunner(order='random', seed=5)
    np.testing.assert_array_equal(_tickets(again, sources), first)
    np.testing.assert_array_equal(_tickets(again, sources), second)


def _block_tickets(runner, sources, grid=(3, 2, 2)):
    counter = np.zeros(1, np.int32)
    ticket = np.full(int(np.prod(grid)), -1, np.int32)
    runner.kernel(sources['good.cu'], 'block_tickets')(grid, 5, (counter, ticket))
    return ticket


def test_block_orders(sources):
    """Blocks run in the runner's order too, by their linear index x + X * (y + Y * z)."""
    _assert_orders(lambda runner: _block_tickets(runner, sources), 12)



def test_random_orders_move_every_thread_and_block(sources):
    """Over seeds, no thread and no block keeps its place in the random order (a shuffle
    that never moves the last one would let a kernel that needs its last thread or block
    to run last pass)."""
    threads = np.array([_tickets(EmuRunner(order='random', seed=s), sources)
                        for s in range(20)])
    blocks = np.array([_block_tickets(EmuRunner(order='random', seed=s), sources)
                       for s in range(20)])
    for places in (threads, blocks):
        assert all(len(set(column)) > 1 for column in places.T)


def test_block_depending_on_an_earlier_block_is_caught(sources):
    """A kernel that reads another block's output works when blocks run in index order
    (as the emulator once always ran them) and fails under reverse and random order."""
    x = np.random.default_rng(9).uniform(0.5, 1.5, 9).astype(np.float32)
    expected = np.cumsum(x, dtype=np.float32)
    results = {}
    for order in ORDERS:
        y = np.zeros(9, np.float32)
        EmuRunner(order=order, seed=2).kernel(sources['buggy.cu'],
                                              'sum_from_previous_block')(9, 4, (x, y))
        results[order] = np.allclose(y, expected, rtol=1e-6)
    assert results == {'forward': True, 'reverse': False, 'random': False}


@pytest.mark.parametrize('order', ORDERS)
def test_two_blocks_writing_one_element_is_a_race(sources, order):
    """out[0] += part from every block gives the right sum when blocks run one after
    another; on a GPU the updates race. The emulator reports the two blocks and the
    element, under every order."""
    rng = np.random.default_rng(11)
    a, b = rng.standard_normal(70).astype(np.float32), rng.standard_normal(70).astype(np.float32)
    out = np.zeros(1, np.float32)
    kernel = EmuRunner(order=order).kernel(sources['buggy.cu'], 'dot_racy')
    kernel(1, 32, (a, b, out, np.int32(70)))            # one block: no race
    with pytest.raises(KernelLaunchError, match=r"race between blocks in kernel dot_racy: "
                                                r"blocks \(\d,0,0\) and \(\d,0,0\) both "
                                                r"wrote element 0 of the array of argument 2 "
                                                r"'out' \(float\*\)"):
        kernel(3, 32, (a, b, out, np.int32(70)))


def test_race_report_names_the_element_and_the_blocks(sources):
    """The element counts from the start of the array as the kernel sees it (here a view
    that starts 3 floats into its buffer); the blocks are named by their 2D index."""
    buf = np.full(5000, -1.0, np.float32)
    kernel = EmuRunner(order='forward').kernel(sources['buggy.cu'], 'last_block_wins')
    with pytest.raises(KernelLaunchError, match=r"blocks \(0,0,0\) and \(1,0,0\) both wrote "
                                                r"element 1234 of the array of argument 0 'y'"):
        kernel((2, 2), 8, (buf[3:], np.int32(1234)))
    buf[:] = 0.0     # now block (0,0,0) writes the 0 already there: no change, not seen
    with pytest.raises(KernelLaunchError, match=r"blocks \(1,0,0\) and \(0,1,0\) both wrote"):
        kernel((2, 2), 8, (buf[3:], np.int32(1234)))



def test_blocks_writing_one_past_the_end_is_reported_as_out_of_bounds(sources):
    """Two blocks that both write y[n], in the padding just after y, did something worse
    than race: the report says they wrote past the end of y (the race check leaves the
    padding to the check after the launch)."""
    buf = np.zeros(12, np.float32)
    y = buf[(-buf.ctypes.data % 16) // 4:][:5]        # 20 bytes from a 16-byte boundary:
    kernel = EmuRunner().kernel(sources['buggy.cu'], 'last_block_wins')   # y[5] is padding
    with pytest.raises(KernelLaunchError, match=r"kernel last_block_wins: wrote past the end "
                                                r"of the array of argument 0 'y' \(float\*\)"):
        kernel(2, 8, (y, np.int32(5)))


def test_atomics_and_equal_values_from_several_blocks_are_no_race(sources):
    """An atomic counter updated by every block (block_tickets), and an element that
    every block sets to the value it already holds, leave the same result in any order."""
    assert sorted(_block_tickets(EmuRunner(order='random', seed=4), sources)) == list(range(12))
    y = np.zeros(3, np.float32)     # the first block to run changes y[0], the others not
    EmuRunner(order='random', seed=4).kernel(sources['good.cu'], 'every_block_sets_one')(
        (2, 3), 8, (y,))
    np.testing.assert_array_equal(y, [1.0, 0.0, 0.0])


def _libc_mapping_hog(free):
    """Use up all but about `free` of the process's memory mappings (vm.max_map_count):
    every other page of one anonymous mapping read-only, so each page is a mapping of its
    own (no memory is touched). Returns a function that gives them back; None when the
    limit cannot be read or is too high to use up quickly."""
    try:
        with open('/proc/sys/vm/max_map_count') as f:
            limit = int(f.read())
        with open('/proc/self/maps') as f:
            used = len(f.readlines())
    except (OSError, ValueError):
        return None
    pages = limit - used - free
    if not 0 < pages <= 300_000:
        return None
    libc = ctypes.CDLL(None, use_errno=True)
    libc.mmap.restype = ctypes.c_void_p
    libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int,
                          ctypes.c_int, ctypes.c_long]
    libc.mprotect.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
    page = os.sysconf('SC_PAGE_SIZE')
    size = (pages + 1) * page
    base = libc.mmap(None, size, 3, 0x22, -1, 0)      # PROT_READ | WRITE, PRIVATE | ANONYMOUS
    if base in (None, ctypes.c_void_p(-1).value):
        return None
    for k in range(1, pages + 1, 2):
        libc.mprotect(base + k * page, page, 1)        # PROT_READ
    return lambda: libc.munmap(base, size)


def test_race_check_survives_running_out_of_memory_mappings(sources):
    """While a block runs, each page it has written is writable between read-only ones: a
    mapping of its own, and a process has at most vm.max_map_count (65530) of them. A block
    that writes thousands of pages apart (a column of a big matrix) must still run, and
    races must still be found, instead of an 'invalid memory access' at the page where
    mprotect gave up."""
    kernel = EmuRunner(order='forward').kernel(sources['good.cu'], 'strided_write')
    kernel(2, 64, (np.zeros(4, np.float32), np.int32(1), np.int32(4), np.int32(0)))  # stacks
    stride, n = 2048, 1600              # 2 pages apart: 800 far-apart pages in each block
    y = np.zeros(stride * n, np.float32)
    release = _libc_mapping_hog(free=400)
    if release is None:
        pytest.skip('vm.max_map_count unknown or too high to use up here')
    try:
        kernel(2, 64, (y, np.int32(stride), np.int32(n), np.int32(0)))
        y2 = np.zeros_like(y)
        with pytest.raises(KernelLaunchError, match=r"race between blocks .* element 0 "):
            kernel(2, 64, (y2, np.int32(stride), np.int32(n), np.int32(1)))
    finally:
        release()
    expected = np.zeros_like(y)
    expected[::stride] = 1.0 + np.arange(n)
    np.testing.assert_array_equal(y, expected)


def test_misaligned_float4_access_is_caught(sources):
    """A float4 load or store needs a 16-byte aligned address on a GPU ('misaligned
    address'); the emulator keeps each array's address modulo 16 and faults too."""
    kernel = EmuRunner().kernel(sources['good.cu'], 'copy_float4')
    buf = np.random.default_rng(10).standard_normal(40).astype(np.float32)
    start = (-buf.ctypes.data % 16) // 4            # the first 16-byte aligned element
    x, y = buf[start:start + 16], np.zeros(16, np.float32)
    kernel(1, 4, (x, y))
    np.testing.assert_array_equal(y, x)
    with pytest.raises(KernelLaunchError, match=r"misaligned vector access .* in kernel "
                                                r"copy_float4, block \(0,0,0\)"):
        kernel(1, 4, (buf[start + 1:start + 17], y))


def test_emulator_arrays_from_empty_are_poisoned(sources):
    """runner.xp.empty gives what uninitialised GPU memory may hold, never NumPy's fresh
    zeros: a launch that leaves part of its output unwritten shows NaN there."""
    xp = EmuRunner().xp
    assert xp.ndarray is np.ndarray and xp.float32 is np.float32 and xp.random is np.random
    assert np.isnan(xp.empty((3, 5), np.float32)).all()
    np.testing.assert_array_equal(xp.empty_like(np.zeros(4, np.int32)), -1)
    np.testing.assert_array_equal(xp.empty(2, np.uint32), 2**32 - 1)
    np.testing.assert_array_equal(xp.zeros(3, np.float32), 0.0)     # the rest is NumPy's
    a = np.arange(100, dtype=np.float32)
    out = xp.empty(100, np.float32)
    EmuRunner().kernel(sources['good.cu'], 'vec_add')(1, 64, (a, a, out, np.int32(64)))
    np.testing.assert_array_equal(out[:64], 2 * a[:64])
    assert np.isnan(out[64:]).all()      # one block of 64 threads left these unwritten


def test_order_from_environment(monkeypatch):
    monkeypatch.setenv('CAFFENET_EMU_ORDER', 'random:77')
    r = EmuRunner()
    assert (r.order, r.seed) == ('random', 77)
    monkeypatch.setenv('CAFFENET_EMU_ORDER', 'reverse')
    assert EmuRunner().order == 'reverse'
    monkeypatch.setenv('CAFFENET_EMU_ORDER', 'sideways')
    with pytest.raises(ValueError, match='order'):
        EmuRunner()


def test_missing_syncthreads_in_reduction_gives_wrong_sums(sources):
    x = np.random.default_rng(6).uniform(0.5, 1.5, 3 * 128).astype(np.float32)
    expected = x.reshape(3, 128).astype(np.float64).sum(axis=1)
    results = {}
    for order in ORDERS:
        out = np.zeros(3, np.float32)
        EmuRunner(order=order, seed=1).kernel(sources['buggy.cu'], 'sum_no_sync')(3, 128, (x, out))
        results[order] = np.allclose(out, expected, rtol=1e-5)
    # Forward order runs thread 0 to the end before thread 64 adds its part: wrong.
    assert not results['forward'] and not results['random']


def test_missing_syncthreads_caught_by_reverse_order(sources):
    x = np.random.default_rng(7).standard_normal(64).astype(np.float32)
    expected = np.concatenate([[0.0], x[:-1]]).astype(np.float32)
    y = np.zeros(64, np.float32)
    EmuRunner(order='forward').kernel(sources['buggy.cu'], 'shift_no_sync')(1, 64, (x, y))
    np.testing.assert_array_equal(y, expected)  # happens to work in forward order...
    EmuRunner(order='reverse').kernel(sources['buggy.cu'], 'shift_no_sync')(1, 64, (x, y))
    assert np.isnan(y[1:]).all()  # ...but reverse order reads the poisoned shared memory


@pytest.mark.parametrize('order', ORDERS)
def test_uninitialised_shared_memory_is_poisoned(sources, order):
    x = np.random.default_rng(8).standard_normal(32).astype(np.float32)
    y = np.zeros(2 * 32, np.float32)
    yi = np.zeros(2 * 32, np.int32)
    kernel = EmuRunner(order=order).kernel(sources['buggy.cu'], 'partial_tile')
    kernel(2, 32, (x, y, yi, np.int32(32)))  # first a launch that writes everything
    np.testing.assert_array_equal(y, np.tile(x, 2))
    kernel(2, 32, (x, y, yi, np.int32(20)))
    # Both blocks: the unwritten entries are NaN / -1, never left-overs of earlier blocks.
    y, yi = y.reshape(2, 32), yi.reshape(2, 32)
    np.testing.assert_array_equal(y[:, :20], np.tile(x[:20], (2, 1)))
    assert np.isnan(y[:, 20:]).all()
    assert (yi[:, :20] == 7).all() and (yi[:, 20:] == -1).all()


def test_dynamic_shared_memory_is_poisoned(sources):
    y = np.zeros(8, np.float32)
    EmuRunner().kernel(sources['buggy.cu'], 'peek_dynamic')(1, 8, (y,), shared_mem=32)
    assert y.view(np.uint32).tolist() == [0xFFFFFFFF] * 8  # NaN bit pattern


def test_dynamic_shared_memory_past_shared_mem_faults(sources):
    """A launch with too few shared_mem bytes reads past its dynamic shared memory: a
    fault naming it, even after a launch with more bytes (no left-overs to read)."""
    kernel = EmuRunner().kernel(sources['buggy.cu'], 'peek_dynamic')
    y = np.zeros(8, np.float32)
    kernel(1, 8, (y,), shared_mem=64)  # more than enough
    for shared_mem in (16, 0):  # 4 floats for 8 threads, then none
        with pytest.raises(KernelLaunchError, match=r"past the end of the launch's shared_mem "
                                                    r"bytes\) in kernel peek_dynamic"):
            kernel(1, 8, (y,), shared_mem=shared_mem)
    kernel(1, 8, (y,), shared_mem=32)  # exactly enough: still works
    assert y.view(np.uint32).tolist() == [0xFFFFFFFF] * 8



def _aligned16(values):
    """A float32 copy of `values` that starts at a 16-byte aligned address."""
    values = np.asarray(values, np.float32)
    buf = np.empty(values.size + 4, np.float32)
    a = buf[(-buf.ctypes.data % 16) // 4:][:values.size]
    a[:] = values
    return a


@pytest.mark.parametrize('extra', [0, 4, 8, 12])
def test_dynamic_shared_memory_is_16_byte_aligned(runner, sources, extra):
    """Dynamic shared memory starts at a multiple of 16 bytes whatever shared_mem is (as on
    a GPU), so float4 tiles work there; only its end sits at the guard page."""
    x = _aligned16(np.random.default_rng(12).standard_normal(32))
    xp = runner.xp
    y = xp.asarray(_aligned16(np.zeros(32)))
    runner.kernel(sources['good.cu'], 'reverse_float4_shared')(
        1, 8, (xp.asarray(x), y), shared_mem=16 * 8 + extra)
    np.testing.assert_array_equal(to_host(y), x.reshape(8, 4)[::-1].reshape(-1))


@pytest.mark.parametrize('kernel, args, message', [
    ('barrier_in_branch', (), r'divergent barrier .*barrier_in_branch.*has already returned'),
    ('early_return', (np.int32(20),), r'divergent barrier .*early_return.*already returned'),
    ('two_barriers', (), r'divergent barrier .*two_barriers.*buggy.cu:\d+ .*buggy.cu:\d+'),
])
@pytest.mark.parametrize('order', ORDERS)
def test_divergent_barrier_raises(sources, kernel, args, message, order):
    y = np.zeros(32, np.float32)
    with pytest.raises(KernelLaunchError, match=message):
        EmuRunner(order=order).kernel(sources['buggy.cu'], kernel)(1, 32, (y, *args))



def test_barriers_on_one_line_of_two_files_diverge(sources):
    """A barrier is its file and line: __syncthreads() on line 500 of two files are two
    barriers (say one in a helper from a header, one in the kernel)."""
    y = np.zeros(32, np.float32)
    with pytest.raises(KernelLaunchError, match=r"divergent barrier .*barriers_in_two_files.*"
                                                r"second.cuh:500 but .*first.cuh:500"):
        EmuRunner().kernel(sources['buggy.cu'], 'barriers_in_two_files')(1, 32, (y,))


def test_full_block_passes_early_return_kernel(sources):
    y = np.zeros(32, np.float32)
    EmuRunner().kernel(sources['buggy.cu'], 'early_return')(1, 32, (y, np.int32(32)))
    np.testing.assert_array_equal(y, np.ones(32))


def test_failed_assert_names_kernel_file_line_block_thread(sources):
    x = np.random.default_rng(9).uniform(0.1, 1.0, 300).astype(np.float32)
    x[200] = -1.0  # block 1, thread 72 with blocks of 128
    line = _line_of(BUGGY_KERNELS, 'assert(x[i]')
    kernel = EmuRunner().kernel(sources['buggy.cu'], 'checked')
    with pytest.raises(KernelLaunchError) as info:
        kernel(3, 128, (x, np.int32(300)))
    text = str(info.value)
    assert 'checked' in text and f'buggy.cu:{line}' in text
    assert 'block (1,0,0)' in text and 'thread (72,0,0)' in text
    kernel(3, 128, (np.abs(x), np.int32(300)))  # the emulator still works afterwards


def test_invalid_memory_access_raises_instead_of_crashing(sources):
    y = np.zeros(8, np.float32)
    with pytest.raises(KernelLaunchError, match=r'invalid memory access .*null_write.*'
                                                r'thread \(3,0,0\)'):
        EmuRunner().kernel(sources['buggy.cu'], 'null_write')(1, 8, (y,))
    x = np.ones(5, np.float32)
    out = np.zeros(1, np.float32)
    EmuRunner().kernel(sources['good.cu'], 'block_sum')(1, 128, (x, out, np.int32(5)))
    assert out[0] == 5.0
    # A stack overflow says so (the fiber stacks are small; a GPU's are not).
    with pytest.raises(KernelLaunchError, match=r"below the thread's stack: .*more than "
                                                r"the emulator's 64 KiB per thread.* in "
                                                r"kernel big_locals, .*thread \(0,0,0\)"):
        EmuRunner(order='forward').kernel(sources['buggy.cu'], 'big_locals')(1, 2, (y,))


@pytest.mark.parametrize('n', [1, 37, 1024, 1025])
def test_reading_one_past_an_array_is_caught(sources, n):
    """An off-by-one read past an array's end, which a GPU would usually let through
    (reading a neighbour's bytes): it faults naming the argument where the array ends on
    a 16-byte boundary, and reads NaN from the poisoned alignment padding otherwise."""
    kernel = EmuRunner().kernel(sources['buggy.cu'], 'read_shifted')
    x = np.arange(n, dtype=np.float32)
    y = np.zeros(n, np.float32)
    blocks = (n + 127) // 128
    if x.nbytes % 16 == 0:
        with pytest.raises(KernelLaunchError, match=r"bytes past the end of the array of "
                                                    r"argument 0 'x' \(const float\*\)"):
            kernel(blocks, 128, (x, y, np.int32(n), np.int32(1)))
    else:
        kernel(blocks, 128, (x, y, np.int32(n), np.int32(1)))
        assert np.isnan(y[n - 1])   # the poisoned padding, not x's neighbour
    kernel(blocks, 128, (x, y, np.int32(n - 1), np.int32(1)))   # up to the last element: fine
    np.testing.assert_array_equal(y[:n - 1], x[1:])


@pytest.mark.parametrize('n', [2, 38, 1025])
def test_writing_one_past_an_array_is_caught(sources, n):
    """The same for a write: a fault, or (inside the alignment padding) an error after
    the launch; the other arrays are unchanged by the launch's copies."""
    kernel = EmuRunner().kernel(sources['buggy.cu'], 'read_shifted')
    x = np.arange(n, dtype=np.float32)
    y = np.zeros(n - 1, np.float32)          # one short: thread n-1 writes past its end
    with pytest.raises(KernelLaunchError, match=r"past the end of the array of argument 1 "
                                                r"'y' \(float\*\)"):
        kernel((n + 127) // 128, 128, (x, y, np.int32(n), np.int32(0)))
    np.testing.assert_array_equal(x, np.arange(n, dtype=np.float32))



def test_writing_just_before_an_array_is_caught(sources):
    """A write to y[-1] lands in the poisoned padding before the array (a GPU would change
    a neighbour's bytes): reported after the launch, naming the argument."""
    y = np.zeros(8, np.float32)
    kernel = EmuRunner().kernel(sources['buggy.cu'], 'write_shifted')
    with pytest.raises(KernelLaunchError, match=r"kernel write_shifted: wrote before the start "
                                                r"of the array of argument 0 'y' \(float\*\)"):
        kernel(1, 8, (y, np.int32(8), np.int32(-1)))
    kernel(1, 8, (y, np.int32(8), np.int32(0)))     # in bounds: fine
    np.testing.assert_array_equal(y, np.ones(8))


def test_reading_far_before_an_array_faults_naming_it(sources):
    """A read more than a page before a small array's start goes past its padding into the
    guard page below it: a fault that says 'before the start' of which argument."""
    kernel = EmuRunner().kernel(sources['buggy.cu'], 'read_shifted')
    x, y = np.ones(8, np.float32), np.zeros(8, np.float32)
    shift = -(os.sysconf('SC_PAGE_SIZE') + 256) // 4     # the padding is less than a page
    with pytest.raises(KernelLaunchError, match=r"bytes before the start of the array of "
                                                r"argument 0 'x' \(const float\*\)\) in "
                                                r"kernel read_shifted"):
        kernel(1, 8, (x, y, np.int32(8), np.int32(shift)))


@pytest.mark.parametrize('x_first', [True, False])
def test_fault_names_the_array_it_hit(sources, x_first):
    """The fault past an array's end names that array whichever of the launch's arrays it
    is in memory (here two views of one buffer, x below y or above it)."""
    buf = np.zeros(4 * 1024 + 4, np.float32)
    buf = buf[(-buf.ctypes.data % 16) // 4:]          # from a 16-byte boundary: x's end,
    low, high = buf[:1024], buf[2048:3072]            # 4096 bytes on, is the guard page
    x, y = (low, high) if x_first else (high, low)
    x[:] = np.arange(1024)
    kernel = EmuRunner().kernel(sources['buggy.cu'], 'read_shifted')
    with pytest.raises(KernelLaunchError, match=r"0 bytes past the end of the array of "
                                                r"argument 0 'x' \(const float\*\)\)"):
        kernel(8, 128, (x, y, np.int32(1024), np.int32(1)))


@pytest.mark.parametrize('n', [5, 8])
def test_read_modify_write_one_past_an_array_is_caught(sources, n):
    """y[n] *= 2 one past the end: a fault (n = 8 ends on a 16-byte boundary), or, inside
    the alignment padding, a write of the quieted NaN that the after-launch check sees."""
    y = np.arange(1, n + 1, dtype=np.float32)
    with pytest.raises(KernelLaunchError, match=r"past the end of the array of argument 0 "
                                                r"'y' \(float\*\)"):
        EmuRunner().kernel(sources['buggy.cu'], 'double_one_past')(1, 32, (y, np.int32(n)))


def test_writing_a_const_argument_is_caught(sources):
    x, y = np.zeros(8, np.float32), np.zeros(8, np.float32)
    with pytest.raises(KernelLaunchError, match=r"kernel write_const wrote to the array of "
                                                r"argument 0 'x' \(const float\*\), which "
                                                r"it declares const"):
        EmuRunner().kernel(sources['buggy.cu'], 'write_const')(1, 8, (x, y))


def test_views_of_one_buffer_share_memory_in_a_launch(runner, sources):
    """Arrays that overlap are one buffer to the kernel (the emulator's guarded copies
    must not split them): a write through one view is read through the other."""
    xp = runner.xp
    buf = xp.zeros(64, dtype=np.float32)
    out = xp.full(64, np.nan, dtype=np.float32)
    runner.kernel(sources['good.cu'], 'write_then_read')(1, 64, (buf, buf[:], out))
    np.testing.assert_array_equal(to_host(out), np.arange(63, -1, -1, dtype=np.float32))
    np.testing.assert_array_equal(to_host(buf), np.arange(64, dtype=np.float32))


def test_ucontext_fallback_gives_same_results(sources):
    r = EmuRunner(order='random', seed=3, context='ucontext')
    x = np.random.default_rng(10).uniform(0.5, 1.5, 300).astype(np.float32)
    out = np.zeros(3, np.float32)
    r.kernel(sources['good.cu'], 'block_sum')(3, 128, (x, out, np.int32(300)))
    np.testing.assert_allclose(out, np.add.reduceat(x.astype(np.float64), [0, 128, 256]),
                               rtol=1e-5)
    with pytest.raises(KernelLaunchError, match='divergent barrier'):
        r.kernel(sources['buggy.cu'], 'barrier_in_branch')(1, 32, (np.zeros(32, np.float32),))
    with pytest.raises(KernelLaunchError, match='race between blocks'):   # (the write faults)
        r.kernel(sources['buggy.cu'], 'dot_racy')(3, 32, (x, x, out, np.int32(70)))


# ---------------------------------------------------------------------------------------
# Launch checks (the same code runs before a GPU launch).

def _vec_args(n=10):
    a = np.ones(n, np.float32)
    return a, a.copy(), np.zeros(n, np.float32), np.int32(n)


@pytest.mark.parametrize('change, message', [
    (lambda a: (a[0].astype(np.float64), *a[1:]), r"argument 0 'a' \(const float\*\): expected "
                                                  r"dtype float32, got float64"),
    (lambda a: (a[0], np.ones(20, np.float32)[::2], *a[2:]),
     r"argument 1 'b' .*not C-contiguous"),
    (lambda a: (*a[:3], 10), r"argument 3 'n' \(int\): expected np.int32, got builtins.int; "
                             r"wrap Python numbers: np.int32\(10\)"),
    (lambda a: (*a[:3], np.int64(10)), r"argument 3 'n' \(int\): expected np.int32, got "
                                       r"numpy.int64"),
    (lambda a: (*a[:3], np.float32(10)), r"argument 3 .*expected np.int32, got numpy.float32"),
    (lambda a: (a[0], a[1], [0.0] * 10, a[3]), r"argument 2 'out' .*expected a numpy array"),
    (lambda a: a[:3], r'takes 4 arguments \(const float\* a, const float\* b, float\* out, '
                      r'int n\), got 3'),
    (lambda a: (*a, np.int32(1)), r'takes 4 arguments'),
    (lambda a: (a[0].astype('>f4'), *a[1:]), r"argument 0 'a' .*expected dtype float32, got >f4"),
    (lambda a: (np.frombuffer(bytearray(44), np.float32, count=10, offset=1), *a[1:]),
     r"argument 0 'a' .*does not start at a multiple of its 4-byte elements"),
])
def test_bad_arguments_are_refused(sources, change, message):
    kernel = EmuRunner().kernel(sources['good.cu'], 'vec_add')
    with pytest.raises(KernelLaunchError, match='kernel vec_add: ' + message):
        kernel(1, 16, change(_vec_args()))


class _DeviceArray:
    """Stands for a cupy.ndarray: CuPy's `flags` has c_contiguous, f_contiguous and owndata,
    but no `writeable` (tests cannot create real CuPy arrays without a GPU)."""

    def __init__(self, shape, dtype, c_contiguous=True):
        self.shape, self.dtype = shape, np.dtype(dtype)
        self.flags = types.SimpleNamespace(c_contiguous=c_contiguous, f_contiguous=False,
                                           owndata=True)


def test_launch_checks_accept_cupy_arrays():
    """check_args is what CupyRunner runs before every GPU launch."""
    params = parse_signatures(GOOD_KERNELS)['vec_add']
    a, b, out = (_DeviceArray((10,), np.float32) for _ in range(3))
    check_args('vec_add', params, (a, b, out, np.int32(10)), _DeviceArray, 'cupy')
    with pytest.raises(KernelLaunchError, match="'out' .*not C-contiguous"):
        check_args('vec_add', params, (a, b, _DeviceArray((10,), np.float32, False),
                                       np.int32(10)), _DeviceArray, 'cupy')
    with pytest.raises(KernelLaunchError, match=r"'b' .*expected a cupy array"):
        check_args('vec_add', params, (a, np.ones(10, np.float32), out, np.int32(10)),
                   _DeviceArray, 'cupy')


def test_cupy_runner_without_gpu_is_a_clear_error():
    from nn.device import cuda_available
    if cuda_available():
        pytest.skip('this machine has a GPU')
    try:
        import cupy  # noqa: F401
    except Exception:
        pytest.skip('CuPy is not installed')
    with pytest.raises((RuntimeError, ImportError), match='GPU|NVRTC'):
        get_runner('cuda')


def test_nvrtc_fallback_prefers_cupys_cuda_version(tmp_path, monkeypatch):
    """Without a CUDA toolkit, load_nvrtc tries NVIDIA's pip wheels: CUDA 12's folder
    (nvidia/cuda_nvrtc/lib) and CUDA 13's (nvidia/cu13/lib), CuPy's own major version
    first, each file once."""
    cupy = pytest.importorskip('cupy')
    from kernels import runner
    libs = {}
    for folder, so in (('cuda_nvrtc', 'libnvrtc.so.12'), ('cu13', 'libnvrtc.so.13')):
        path = tmp_path / 'nvidia' / folder / 'lib' / so
        path.parent.mkdir(parents=True)
        path.write_bytes(b'')
        libs[so] = str(path)
    monkeypatch.setattr('sys.path', [str(tmp_path), str(tmp_path)])
    for version, first in ((12090, 'libnvrtc.so.12'), (13000, 'libnvrtc.so.13')):
        monkeypatch.setattr(cupy.cuda.runtime, 'runtimeGetVersion', lambda v=version: v)
        found = runner._nvrtc_wheel_libraries()
        assert sorted(found) == sorted(libs.values()) and found[0] == libs[first]


def test_read_only_output_is_refused(sources):
    a, b, out, n = _vec_args()
    out.flags.writeable = False
    with pytest.raises(KernelLaunchError, match="'out'.*read-only"):
        EmuRunner().kernel(sources['good.cu'], 'vec_add')(1, 16, (a, b, out, n))
    a.flags.writeable = False  # fine for a const pointer
    out.flags.writeable = True
    EmuRunner().kernel(sources['good.cu'], 'vec_add')(1, 16, (a, b, out, n))
    np.testing.assert_array_equal(out, 2 * np.ones(10))


@pytest.mark.parametrize('grid, block, shared, message', [
    (1, 1025, 0, r'block.x = 1025 is outside 1..1024'),
    (1, (32, 32, 2), 0, r'2048 threads'),
    (1, (1, 1, 65), 0, r'block.z = 65 is outside 1..64'),
    (0, 32, 0, r'grid.x = 0'),
    ((1, 65536), 32, 0, r'grid.y = 65536'),
    ((1, 2, 3, 4), 32, 0, r'tuple of 1 to 3'),
    (1.0, 32, 0, r'grid must be an int'),
    (1, 32, 48 * 1024 + 4, r'0 static \+ 49156 dynamic .* exceeds 49152'),
    (1, 32, -4, r'shared_mem must be a non-negative int'),
])
def test_bad_launch_configuration_is_refused(sources, grid, block, shared, message):
    kernel = EmuRunner().kernel(sources['good.cu'], 'vec_add')
    with pytest.raises(KernelLaunchError, match='kernel vec_add: .*' + message):
        kernel(grid, block, _vec_args(), shared_mem=shared)



def test_largest_block_runs_and_the_runtime_refuses_more(sources):
    """A block of 1024 threads (CUDA's limit) runs; the runtime refuses a larger one by
    itself, even when called without the launch checks (it has 1024 fibers)."""
    from kernels import emulator
    a, b, out, n = _vec_args(2048)
    EmuRunner().kernel(sources['good.cu'], 'vec_add')(2, 1024, (a, b, out, n))
    np.testing.assert_array_equal(out, np.full(2048, 2.0))
    path, display = resolve_source(sources['good.cu'])
    module = emulator.load_module(path, display)
    with pytest.raises(KernelLaunchError, match=r'vec_add: 1025 threads per block '
                                                r'\(1..1024 allowed\)'):
        module.launch('vec_add', module.params('vec_add'), (1, 1, 1), (1025, 1, 1),
                      (a, b, out, n), 0, 'forward', 0)


def test_static_plus_dynamic_shared_memory_limit(sources):
    kernel = EmuRunner().kernel(sources['buggy.cu'], 'big_static')
    assert kernel.kernel.static_shared == 4096 * 4
    y = np.zeros(32, np.float32)
    kernel(1, 32, (y,), shared_mem=32 * 1024)  # 16 + 32 KiB: allowed
    np.testing.assert_array_equal(y, np.ones(32))
    with pytest.raises(KernelLaunchError, match=r'big_static: shared memory 16384 static \+ '
                                                r'32772 dynamic'):
        kernel(1, 32, (y,), shared_mem=32 * 1024 + 4)


def test_cache_hit_loads_without_objdump(sources, tmp_path, monkeypatch):
    """A library found in the cache (a new process: nothing loaded yet) takes its static
    shared sizes from the <hash>.json beside it instead of running objdump again."""
    from kernels import emulator
    path, display = resolve_source(sources['buggy.cu'])
    cache = str(tmp_path)
    first = emulator.load_module(path, display, cache_dir=cache)
    assert first.static_shared('big_static') == 4096 * 4
    (lib,), (meta,) = tmp_path.glob('*.so'), tmp_path.glob('*.json')
    assert meta.stem == lib.stem
    meta.write_text('{')       # unreadable: recomputed and rewritten
    monkeypatch.setattr(emulator, '_modules', {})
    assert emulator.load_module(path, display, cache_dir=cache).static_shared(
        'big_static') == 4096 * 4

    def no_objdump(*args):
        raise AssertionError('objdump ran on a cache hit')
    monkeypatch.setattr(emulator, '_modules', {})
    monkeypatch.setattr(emulator, '_static_shared_by_kernel', no_objdump)
    again = emulator.load_module(path, display, cache_dir=cache)
    assert again is not first
    assert {k: again.static_shared(k) for k in again.kernels} == \
        {k: first.static_shared(k) for k in first.kernels}


def test_the_cache_keeps_compilers_apart(sources, tmp_path, monkeypatch):
    """A compiler wrapper (CXX, say one adding -g for gdb) gets its own libraries: it
    reports the same --version as the compiler it calls."""
    import os
    from kernels import emulator
    path, display = resolve_source(sources['good.cu'])
    cache = tmp_path / 'cache'
    cache.mkdir()
    emulator.load_module(path, display, cache_dir=str(cache))
    wrapper = tmp_path / 'g++-debug'
    wrapper.write_text(f'#!/bin/sh\nexec {emulator.CXX} "$@" -g\n')
    os.chmod(wrapper, 0o755)
    monkeypatch.setattr(emulator, 'CXX', str(wrapper))
    monkeypatch.setattr(emulator, '_compiler_id', None)
    monkeypatch.setattr(emulator, '_modules', {})
    emulator.load_module(path, display, cache_dir=str(cache))
    assert len(list(cache.glob('*.so'))) == 2


def test_unknown_kernel_and_unsupported_parameter(sources):
    r = EmuRunner()
    with pytest.raises(KernelLaunchError, match=r"'vec_sub' not found in .*good.cu.*vec_add"):
        r.kernel(sources['good.cu'], 'vec_sub')
    with pytest.raises(KernelLaunchError, match=r'takes_double: argument 0 .*supports only'):
        r.kernel(sources['good.cu'], 'takes_double')(1, 1, (np.zeros(1),))
    with pytest.raises(FileNotFoundError, match='no_such_file.cu'):
        r.kernel('no_such_file.cu', 'x')
    with pytest.raises(ValueError, match="'cuda' or 'emu'"):
        get_runner('opencl')


# ---------------------------------------------------------------------------------------
# Compile errors and signatures.

@pytest.mark.parametrize('backend', ['asm', 'ucontext',
                                     pytest.param('cuda', marks=pytest.mark.gpu)])
def test_compile_error_names_file_and_line(tmp_path, backend):
    path = tmp_path / 'broken.cu'
    path.write_text('extern "C" __global__ void broken(float* y)\n{\n'
                    '    y[threadIdx.x] = undefined_name;\n}\n')
    runner = get_runner('cuda') if backend == 'cuda' else EmuRunner(context=backend)
    with pytest.raises(KernelCompileError) as info:
        runner.kernel(str(path), 'broken')
    assert info.value.file.endswith('broken.cu') and info.value.line == 3
    assert 'broken.cu:3' in str(info.value) and 'undefined_name' in str(info.value)


def test_signature_parser_reads_macros_and_names():
    src = textwrap.dedent('''
        #define GEOM int N, \\
                     int C
        /* extern "C" __global__ void commented_out(float* z) */
        extern "C" __global__ void k(const float* __restrict__ x, float* y, GEOM,
                                     unsigned int seed, float scale, const int* idx,
                                     unsigned* u, int half) {}
        extern "C" __global__ void __launch_bounds__(256) none(void) {}
        extern "C" __global__ void odd(double* d, float** pp) {}
    ''')
    sigs = parse_signatures(src)
    assert list(sigs) == ['k', 'none', 'odd']
    assert [(p.code, p.name) for p in sigs['k']] == [
        ('ptr const float32', 'x'), ('ptr float32', 'y'), ('int32', 'N'), ('int32', 'C'),
        ('uint32', 'seed'), ('float32', 'scale'), ('ptr const int32', 'idx'),
        ('ptr uint32', 'u'), ('int32', 'half')]
    assert sigs['none'] == []
    assert [p.code for p in sigs['odd']] == ['unsupported', 'unsupported']


@pytest.mark.parametrize('name', project_kernel_files())
def test_parser_agrees_with_compiler_on_project_kernels(name):
    """The GPU path reads signatures with parse_signatures; the emulator asks the compiler."""
    from kernels import emulator
    path, display = resolve_source(name)
    module = emulator.load_module(path, display)
    parsed = parse_signatures(read_text(path))
    assert sorted(parsed) == sorted(module.kernels)
    for kernel in module.kernels:
        assert [(p.code, p.name) for p in parsed[kernel]] == \
            [(p.code, p.name) for p in module.params(kernel)], kernel
