#!/usr/bin/env python
"""How fast are the hand-written kernels? Time every layer of CaffeNet, honestly.

    python bench.py                          # GPU if there is one, else the CPU path
    python bench.py --device cpu --batch 16  # the NumPy reference, next to PyTorch CPU
    python bench.py --only conv2 --versions  # one layer, every kept kernel version
    python bench.py --json results.json      # every figure, device and settings

For every kernel at CaffeNet's real layer shapes (forward and backward of conv1..conv5,
fc6..fc8, pooling, LRN, ReLU, dropout, softmax-loss, and the SGD update) it reports the
median time over repeated runs after warm-up, GFLOP/s and GB/s from the counts in
nn/flops.py, the fraction of the machine's roofline measured in the same run (a large copy
for bandwidth, the best FP32 matrix product for compute), and the same operation through
the library a user would otherwise pick (cuBLAS via CuPy, cuDNN via PyTorch, or PyTorch's
CPU build), with the ratio. Then the whole network: training step and inference
images/s, and batch-1 latency, next to PyTorch running the identical network.

Every result is checked against the NumPy reference in float64 before it is timed; a
result that disagrees is reported as WRONG and not timed. See docs/benchmarks.md.
"""
import argparse
import os
import sys

import nn  # first, before NumPy: see nn/__init__.py (OpenBLAS threads)
from nn import flops
from nn.atomic import check_writable
from tools.bench import BenchError
from tools.bench.cases import build_cases, check_only, select
from tools.bench.devices import open_device, subject_ops
from tools.bench.gate import TF32_TOLERANCE, TOLERANCE
from tools.bench.network import bench_network, with_floor
from tools.bench.one_case import bench_case
from tools.bench.report import build_report, machine_info, print_table, write_json
from tools.bench.timers import measure_peaks
from tools.bench.vendors import cublas_vendor, import_torch, torch_vendor
from tools.bench.versions import kernel_versions

GPU_BATCHES = (256, 1)
CPU_BATCH = 16


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--device', choices=('auto', 'cpu', 'cuda', 'emu'), default='auto',
                   help='cuda: our kernels on the GPU; cpu: the NumPy reference path; '
                        'auto (default): cuda when a GPU is usable, else cpu; emu: the '
                        'kernels on the CPU emulator, to check the kernel path on small '
                        'layers (its times mean nothing)')
    p.add_argument('--batch', '--batch-size', type=int, nargs='+', default=None,
                   help=f'batch sizes (default {GPU_BATCHES[0]} and {GPU_BATCHES[1]} on the GPU, '
                        f'{CPU_BATCH} on the CPU); the network is timed at the largest, '
                        'plus batch-1 latency')
    p.add_argument('--repeats', type=int, default=None,
                   help='timed runs per case, the median is reported (default 20 GPU, 3 CPU)')
    p.add_argument('--warmup', type=int, default=None,
                   help='untimed runs first (default 3 GPU, 2 CPU)')
    p.add_argument('--only', default=None,
                   help="time only these (comma-separated): a layer 'conv3', a case "
                        "'conv3.backward_data', 'sgd', 'kernels' for every kernel case, or "
                        "'net' for the whole network")
    p.add_argument('--versions', action='store_true',
                   help="also time every kept version of each kernel (GPU: the launchers' "
                        'version=; CPU: the convolution algorithms of the stride-1 '
                        'layers, im2col, the DFT and, for conv3-conv5, Winograd)')
    p.add_argument('--json', default=None, metavar='FILE', help='write every figure to FILE')
    p.add_argument('--classes', type=int, default=1000,
                   help='classes of the last layer (default 1000, ImageNet CaffeNet)')
    p.add_argument('--no-torch', action='store_true', help='skip the PyTorch comparisons')
    p.add_argument('--tf32', action='store_true',
                   help='also time the whole network with its convolutions and fully '
                        'connected layers on tensor cores in TF32 (cuda, or emu to check '
                        'it), checked within a TF32 tolerance; the kernels\' TF32 '
                        'versions are in --versions')
    p.add_argument('--layers', action='store_true',
                   help="with the network: also time each layer inside whole inferences "
                        "(in place: caches as the layer before left them), next to PyTorch's")
    p.add_argument('--seed', type=int, default=0, help='seed of the random inputs')
    args = p.parse_args(argv)
    for name in ('batch', 'repeats', 'warmup', 'classes'):
        v = getattr(args, name)
        values = v if isinstance(v, list) else [v]
        least = 0 if name == 'warmup' else 1
        if v is not None and any(x < least for x in values):
            p.error(f'--{name} must be at least {least}, got {v}')
    return args


def run(args):
    """Run the benchmark described by parsed `args`; returns the report dict."""
    check_only(args.only, args.classes)
    if args.json:   # now, rather than after the run
        try:
            check_writable(args.json)
        except OSError as exc:
            raise BenchError(f'--json {args.json}: {exc}') from None
    if args.device in ('cuda', 'auto'):
        # True FP32 everywhere, set before CuPy or PyTorch loads a CUDA library: CuPy's
        # matmul (CUPY_TF32), and every NVIDIA library (cuBLAS, cuDNN) by their override.
        os.environ['CUPY_TF32'] = '0'
        os.environ['NVIDIA_TF32_OVERRIDE'] = '0'
    device, timer, lib = open_device(args.device)
    if args.tf32 and device.runner is None:
        raise BenchError('--tf32 needs the kernels: --device cuda (or emu to check the TF32 '
                         'path on the CPU emulator)')
    gpu = device.name == 'cuda'
    batches = args.batch or (list(GPU_BATCHES) if gpu else [CPU_BATCH])
    args.repeats = args.repeats or (20 if gpu else 3)
    # Two on the CPU: the NumPy path's first two training steps grow the heap to its peak
    # (page faults, about 1.0-1.1 s instead of 0.6; nn/memory.py keeps it from then on).
    args.warmup = (3 if gpu else 2) if args.warmup is None else args.warmup
    torch, torch_why = import_torch(args.no_torch, device.name)

    notes = []
    if device.name == 'cpu':
        notes.append('CPU path (NumPy reference) timed; GPU figures need a GPU: '
                      'run `python bench.py --device cuda` on a machine with an NVIDIA GPU')
        notes.append('the CPU path computes 3x3 stride-1 convolutions (conv3-conv5) by '
                     "Winograd's F(2x2, 3x3), with 2.25x fewer multiplications, and conv2's "
                     'forward in a batch through the DFT (nn/dft_conv.py); their GFLOP/s and '
                     "%roof count the direct convolution's work, so they can pass the FP32 "
                     'peak')
    if torch_why:
        notes.append(f'no PyTorch comparison: {torch_why}')
    if args.versions and device.runner is None:
        notes.append("--versions on the CPU path: the reference's convolution algorithms "
                     '(im2col, the DFT, and Winograd for 3x3) for the stride-1 layers; '
                     'nothing else has two')
    if device.name == 'emu':
        notes.append('emu: the CUDA kernels run on the CPU emulator; the checks hold, the '
                     'times say nothing about a GPU')

    layers = flops.caffenet_layers(num_classes=args.classes)
    by_name = {l.name: l for l in layers}
    only = args.only
    words = [w.strip() for w in only.split(',') if w.strip()] if only else []
    want_net = not only or 'net' in words
    all_kernels = not only or 'kernels' in words
    kernel_only = None if all_kernels else ','.join(w for w in words if w != 'net')
    run_kernels = all_kernels or bool(kernel_only)

    peaks = measure_peaks(device, timer, torch)
    vendors = []
    if gpu:
        vendors.append(cublas_vendor(device.xp))
    if torch is not None:
        vendors.append(torch_vendor(torch, device.name))
    ops = subject_ops(device)

    kernels, network = [], []

    machine = machine_info(device, torch)   # once: it may run nvidia-smi
    runners = [device.runner] if device.runner is not None else []   # (TF32 adds its own)

    def report(partial):
        """The whole report so far; partial=True while cases are still to come."""
        return build_report(args, device, machine, torch, gpu, timer, batches, peaks,
                            kernels, network, notes, partial, runners)

    def save_partial():
        """Write what is measured so far: a run cut off by a time limit keeps it."""
        if args.json:
            write_json(args.json, report(partial=True))
            args.partial_written = True   # (Ctrl-C then points to it; an older file, not)

    todo = [(batch, case) for batch in (batches if run_kernels else [])
            for case in select(build_cases(layers, batch, sgd=batch == batches[0]),
                               kernel_only)]
    for done, (batch, case) in enumerate(todo, 1):
        vendor = next((v for v in vendors if v.runner(case, None)), None)
        versions = None
        if args.versions:
            try:
                versions = kernel_versions(device, case, by_name.get(case.layer))
            except ImportError as exc:
                notes.append(f'{case.name}: no versions to compare: {exc}')
            if versions == [] and device.runner is not None:
                notes.append(f'{case.name}: its launcher takes no version=')
        kernels.append(bench_case(case, by_name.get(case.layer), ops, lib, timer, vendor,
                                  args, batch, peaks, versions))
        if gpu:
            device.xp.get_default_memory_pool().free_all_blocks()
        _progress(f'{done}/{len(todo)} {case.name} (batch {batch})', kernels[-1])
        save_partial()

    if want_net:
        nets = [('net', lambda: device.with_ops(ops), torch, TOLERANCE, '')]
        if args.tf32:   # the same network on tensor cores; PyTorch is compared in FP32 only
            def tf32_device():
                tf32 = open_device(device.name, tf32=True)[0]
                runners.append(tf32.runner)
                return tf32.with_ops(subject_ops(tf32))
            nets.append(('net (TF32)', tf32_device, None, TF32_TOLERANCE, ' (TF32)'))
        for name, sub_device, net_torch, tolerance, label in nets:
            try:
                network.extend(with_floor(bench_network(
                    device, sub_device(), timer, net_torch, args, max(batches), tolerance,
                    label), peaks))
            except Exception as exc:  # keep the kernel figures; say what broke
                network.append({'name': name, 'batch': max(batches), 'status': 'ERROR',
                                'error': f'{type(exc).__name__}: {exc}'})
            save_partial()   # the FP32 figures survive a time limit hit in the TF32 run
        if args.tf32:
            notes.extend(_tf32_speedups(network))

    wrong = [r['name'] for r in kernels + network
             if r['status'] != 'ok' or r.get('vendor', {}).get('status', 'ok') != 'ok']
    if wrong:
        notes.append('not timed (WRONG or ERROR): ' + ', '.join(wrong))
    return report(partial=False)


def _tf32_speedups(network):
    """Notes giving each network figure's FP32 time over its TF32 time (the issue's
    target: the TF32 training step at most half the FP32 one)."""
    times = {r['name']: r['time_s'] for r in network if 'time_s' in r}
    return [f'TF32: {name} FP32/TF32 time = {times[name] / times[name + " (TF32)"]:.2f}'
            for name in times if name + ' (TF32)' in times]


def _progress(what, row):
    """One line on stderr per finished case, so a long run shows where it is."""
    time = f", {row['time_s'] * 1e3:.3f} ms" if 'time_s' in row else ''
    print(f"bench.py: {what}: {row['status']}{time}", file=sys.stderr, flush=True)


def main(argv=None):
    """Command-line entry point; returns the exit status: 0, 1 when any of our results is
    WRONG or ERROR, 2 when the benchmark cannot run as asked."""
    args = parse_args(argv)
    args.argv = argv
    try:
        report = run(args)
    except BenchError as exc:
        print(f'bench.py: {exc}', file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        saved = (f'; the figures measured so far are in {args.json} ("partial": true)'
                 if getattr(args, 'partial_written', False) else '')
        print(f'bench.py: interrupted{saved}', file=sys.stderr)
        return 130
    if args.json:  # first: the figures survive a closed pipe on the table
        write_json(args.json, report)
    print_table(report)
    if args.json:
        print(f'wrote {args.json}')
    return 1 if _ours_failed(report) else 0


def _ours_failed(report):
    """Whether any of our results (a kernel case, a kept version of it, the network) was
    WRONG or ERROR. A vendor's failure is reported, but it is not ours."""
    rows = report['kernels'] + report['network']
    rows += [v for r in report['kernels'] for v in r.get('versions', [])]
    return any(r['status'] != 'ok' for r in rows)


if __name__ == '__main__':
    sys.exit(main())
