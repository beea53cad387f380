"""One case, checked then timed: ours, each kept version of it, and the vendor's, with
GFLOP/s, GB/s and the fraction of the roofline reached."""
import functools

import numpy as np

from tools.bench.gate import TOLERANCE, gate
from tools.bench.timers import timed


def _rates(counts, seconds, peaks):
    """GFLOP/s, GB/s, the bound (roofline term that dominates) and % of that roofline."""
    gflops = counts.flops / seconds / 1e9
    gbps = counts.bytes / seconds / 1e9
    if peaks['fp32_GFLOPs'] is None:   # no matrix product could be timed (measure_peaks)
        return {'gflops': gflops, 'gbps': gbps, 'bound': None, 'roofline_fraction': None}
    t_compute = counts.flops / (peaks['fp32_GFLOPs'] * 1e9)
    t_memory = counts.bytes / (peaks['bandwidth_GBps'] * 1e9)
    bound = 'compute' if t_compute >= t_memory else 'memory'
    return {'gflops': gflops, 'gbps': gbps, 'bound': bound,
            'roofline_fraction': max(t_compute, t_memory) / seconds}


def _time_checked(case, run_fn, lib, inputs, timer, args, tolerance=TOLERANCE):
    """Gate, then time: {'status', 'max_rel_error', 'time_s', 'times_s'} (+ 'error')."""
    try:
        state_inputs = lib.convert(inputs)
        full = run_fn(state_inputs, keep=True)
        ok, err = gate(case, lambda t: run_fn(t, keep=False), lib, inputs, full, tolerance)
        out = {'status': 'ok' if ok else 'WRONG', 'max_rel_error': err}
        if ok:
            out.update(timed(timer, run_fn.timed, args))
        return out
    except Exception as exc:  # a missing launcher or a crash must not stop the run
        return {'status': 'ERROR', 'error': f'{type(exc).__name__}: {exc}'}


class _Runner:
    """Calls a subject on converted inputs; remembers the last state for timing."""

    def __init__(self, prepare, run):
        self.prepare, self.run, self.timed = prepare, run, None

    def __call__(self, lib_inputs, keep):
        state = self.prepare(lib_inputs)
        if keep:
            self.timed = functools.partial(self.run, state)
        return self.run(state)


def _checked_row(case, runner, lib, inputs, timer, args, peaks, tolerance=TOLERANCE):
    """_time_checked plus the rates when it was timed."""
    row = _time_checked(case, runner, lib, inputs, timer, args, tolerance)
    if 'time_s' in row:
        row.update(_rates(case.counts, row['time_s'], peaks))
    return row


def bench_case(case, layer, ops, lib, timer, vendor, args, batch, peaks, versions=None):
    """Check and time one case with our ops (and each kept version), then the vendor."""
    inputs = case.make(np.random.default_rng(args.seed), batch)
    row = {'name': case.name, 'layer': case.layer, 'op': case.op, 'batch': batch,
           'macs': case.counts.macs, 'flops': case.counts.flops, 'bytes': case.counts.bytes}
    ours = _Runner(lambda t: case.prepare(ops, t), lambda s: case.run(ops, s))
    row.update(_checked_row(case, ours, lib, inputs, timer, args, peaks))
    if versions:
        row['versions'] = []
        for label, vops, tolerance in versions:
            r = _Runner(lambda t, o=vops: case.prepare(o, t), lambda s, o=vops: case.run(o, s))
            row['versions'].append({'version': label, **_checked_row(
                case, r, lib, inputs, timer, args, peaks, tolerance)})
    make = vendor.runner(case, layer) if vendor is not None else None
    if make is not None:
        r = _Runner(make, lambda fn: fn())
        v = {'name': vendor.name,
             **_checked_row(case, r, vendor.lib, inputs, vendor.timer, args, peaks)}
        if 'time_s' in v and 'time_s' in row:
            v['vendor_time_over_ours'] = v['time_s'] / row['time_s']
        row['vendor'] = v
    return row
