"""Timing: the CPU and GPU timers (the caches flushed before every timed run), the
statistics of their runs, and the machine's own limits measured with them (peaks)."""
import os
import statistics
import time

import numpy as np

FLUSH_BYTES = 256 << 20  # written between GPU runs: several times any GPU's L2 cache
# The GPU flush is written this many times: about 0.2 ms of GPU work on an H200, queued
# before the start event, while the host queues the timed launches behind it. Otherwise the
# GPU would reach the start event and then wait on Python (the launchers' checks, tens of
# microseconds a launch), and that wait would count as kernel time in the small cases.
GPU_FLUSH_PASSES = 4
CPU_SETTLE_S = 0.02      # idle time before each CPU run (see CpuTimer)


def cpu_flush_bytes():
    """Bytes to write to flush the CPU caches: 4x the last-level cache (Linux sysfs),
    at least 32 MiB, at most FLUSH_BYTES."""
    biggest = 0
    folder = '/sys/devices/system/cpu/cpu0/cache'
    entries = os.listdir(folder) if os.path.isdir(folder) else []
    for entry in entries:
        try:
            with open(os.path.join(folder, entry, 'size')) as f:
                text = f.read().strip()
            scale = {'K': 1 << 10, 'M': 1 << 20}.get(text[-1:], 1)
            biggest = max(biggest, int(text.rstrip('KM')) * scale)
        except (OSError, ValueError):
            continue  # not a cache folder (uevent), or an unreadable size
    return int(min(max(4 * biggest, 32 << 20), FLUSH_BYTES))


class _Timer:
    """The measuring loop shared by CpuTimer and GpuTimer, which supply flush() (evict the
    caches) and time_once(fn) (run fn once, return its seconds)."""

    def measure(self, fn, warmup, repeats, flush=True):
        """Run fn warmup times, then time it repeats times, flushing the caches before each
        timed run when `flush`; returns the list of seconds."""
        for _ in range(warmup):
            fn()
        times = []
        for _ in range(repeats):
            if flush:
                self.flush()
            times.append(self.time_once(fn))
        return times


class CpuTimer(_Timer):
    """Wall-clock time of a host function (the CPU path and PyTorch CPU), with the CPU
    caches flushed before every run, as on the GPU, and then CPU_SETTLE_S of idle time:
    PyTorch's OpenMP threads keep spinning for a few milliseconds after its work, and a
    run started at once shares the cores with them (measured on 2 cores: our conv1 took
    32.3 ms right after PyTorch's conv1 and the flush, 28.9 after our own; with 20 ms of
    idle time in between, 29.3). PyTorch is not slowed by ours (OpenBLAS's threads sleep
    at once, nn/__init__.py)."""
    name = 'perf_counter, caches flushed, 20 ms idle before each run'

    _flush_buf = None  # one buffer shared by every CpuTimer

    def __init__(self):
        if CpuTimer._flush_buf is None:
            CpuTimer._flush_buf = np.empty(cpu_flush_bytes() // 4, dtype=np.float32)
        self.flush_buf = CpuTimer._flush_buf

    def flush(self):
        self.flush_buf.fill(0)  # evicts what the last run left in the caches
        time.sleep(CPU_SETTLE_S)

    def time_once(self, fn):
        start = time.perf_counter()
        fn()
        return time.perf_counter() - start


class GpuTimer(_Timer):
    """CUDA-event time of GPU work, with the L2 cache flushed before every run.

    `lib` is 'cupy' or 'torch': the events, the flush buffer and the timed work must be on
    the same library's current stream, so each library gets its own timer.
    """

    def __init__(self, lib, module):
        self.lib, self.m = lib, module
        self.name = f'CUDA events ({lib}), L2 flushed'
        if lib == 'cupy':
            self.flush_buf = module.empty(FLUSH_BYTES // 4, dtype=module.float32)
        else:
            self.flush_buf = module.empty(FLUSH_BYTES // 4, dtype=module.float32, device='cuda')

    def _event(self):
        if self.lib == 'cupy':
            return self.m.cuda.Event()
        return self.m.cuda.Event(enable_timing=True)

    def flush(self):
        # Writing a buffer larger than L2 evicts what the previous run left in it; the
        # repeats keep the GPU busy while the timed launches are queued (GPU_FLUSH_PASSES).
        for _ in range(GPU_FLUSH_PASSES):
            if self.lib == 'cupy':
                self.flush_buf.fill(0)
            else:
                self.flush_buf.zero_()

    def time_once(self, fn):
        start, end = self._event(), self._event()
        start.record()
        fn()
        end.record()
        end.synchronize()
        ms = (self.m.cuda.get_elapsed_time(start, end) if self.lib == 'cupy'
              else start.elapsed_time(end))
        return ms / 1e3


def torch_timer(torch, on_gpu):
    """The timer for PyTorch's runs: its CUDA events on the GPU, the CPU clock otherwise."""
    return GpuTimer('torch', torch) if on_gpu else CpuTimer()


def summary(times, images=None):
    """{'time_s': median, 'times_s': all runs} (+ 'images_per_s' for `images` per run)."""
    out = {'time_s': statistics.median(times), 'times_s': times}
    if images:
        out['images_per_s'] = images / out['time_s']
    return out


def timed(timer, fn, args, images=None):
    """Time fn with `timer` after args.warmup runs: see summary."""
    return summary(timer.measure(fn, args.warmup, args.repeats), images)


# Sizes of the peak measurements: (copy floats, square matmul side, runs). The CPU copy is
# 4x the last-level cache; tests shrink these to stay fast.
GPU_PEAK_SIZES = ((1 << 30) // 4, 8192, 10)
CPU_PEAK_SIZES = (None, 2048, 5)


def measure_peaks(device, timer, torch=None):
    """The machine's own limits, measured now: copy bandwidth and FP32 matmul rate.

    Bandwidth: a large copy (read + write counted). Compute: the best FP32 matrix product
    on offer: CuPy's cuBLAS with TF32 off on the GPU; on the CPU the faster of NumPy's BLAS
    and PyTorch's (when installed). The best run counts: a peak is what the machine can
    do, not what it usually does.
    """
    xp = device.xp
    gpu = device.name == 'cuda'
    n_copy, n_mm, runs = GPU_PEAK_SIZES if gpu else CPU_PEAK_SIZES
    n_copy = n_copy or cpu_flush_bytes() // 4
    src = xp.ones(n_copy, dtype=xp.float32)
    dst = xp.empty_like(src)
    t_copy = min(timer.measure(lambda: xp.copyto(dst, src), 1, runs, flush=False))
    del src, dst
    a_host = np.random.default_rng(0).standard_normal((n_mm, n_mm), dtype=np.float32)
    a = xp.asarray(a_host)
    c = xp.empty_like(a)
    products = {f'{xp.__name__}.matmul': lambda: xp.matmul(a, a, out=c)}
    if torch is not None and not gpu:
        ta, tc = torch.from_numpy(a_host), torch.empty(n_mm, n_mm)
        products['torch.matmul'] = lambda: torch.matmul(ta, ta, out=tc)
    best, failed = {}, []
    for name, fn in products.items():
        try:   # our kernels need no cuBLAS: a broken one must not cost the whole run
            best[name] = min(timer.measure(fn, 1, runs, flush=False))
        except Exception as exc:
            failed.append(f'{name} failed ({type(exc).__name__}: {exc})')
    peaks = {'bandwidth_GBps': 2 * n_copy * 4 / t_copy / 1e9,
             'bandwidth_how': f'{xp.__name__}.copyto of {n_copy * 4 >> 20} MiB, read + '
                              f'write, best of {runs}'}
    tried = ', '.join([f'{n} {2 * n_mm ** 3 / t / 1e9:.1f} GFLOP/s' for n, t in best.items()]
                      + failed)
    if not best:
        return dict(peaks, fp32_GFLOPs=None, fp32_how=f'not measured: {tried}')
    fastest = min(best, key=best.get)
    what = ' (cuBLAS, CUPY_TF32=' + os.environ.get('CUPY_TF32', '') + ')' if gpu else ''
    return dict(peaks, fp32_GFLOPs=2 * n_mm ** 3 / best[fastest] / 1e9,
                fp32_how=f'{fastest} {n_mm}x{n_mm} float32{what}, best of {runs}; tried '
                         f'{tried}')
