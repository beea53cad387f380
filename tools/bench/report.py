"""What a run reports: the machine (machine_info), the JSON report (build_report,
write_json) and the human-readable table (print_table)."""
import datetime
import json
import os
import platform
import subprocess
import sys

import numpy as np

from nn.atomic import atomic_write
from tools.bench.gate import CHECK_IMAGES, TF32_TOLERANCE, TOLERANCE
from tools.bench.timers import FLUSH_BYTES, GPU_FLUSH_PASSES, cpu_flush_bytes


def machine_info(device, torch):
    info = {'platform': platform.platform(), 'processor': platform.processor() or platform.machine(),
            'cpu_count': os.cpu_count(), 'python': platform.python_version(),
            'numpy': np.__version__, 'torch': getattr(torch, '__version__', None)}
    if device.name == 'cuda':
        cp = device.xp
        props = cp.cuda.runtime.getDeviceProperties(cp.cuda.Device().id)
        name = props['name']
        info.update(device_name=name.decode() if isinstance(name, bytes) else str(name),
                    cupy=cp.__version__,
                    cuda_driver_api=cp.cuda.runtime.driverGetVersion(),
                    cuda_runtime=cp.cuda.runtime.runtimeGetVersion(),
                    nvrtc='.'.join(map(str, cp.cuda.nvrtc.getVersion())),
                    l2_cache_bytes=int(props.get('l2CacheSize', 0)))
        try:
            info['driver'] = subprocess.run(
                ['nvidia-smi', '--query-gpu=driver_version', '--format=csv,noheader'],
                capture_output=True, text=True, timeout=20).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            info['driver'] = None
    else:
        info['device_name'] = f'CPU ({info["processor"]}, {info["cpu_count"]} logical cores)'
    return info


def build_report(args, device, machine, torch, gpu, timer, batches, peaks, kernels,
                 network, notes, partial, runners=()):
    """bench.py's JSON report (see --json); partial: True in the copies written while the
    run goes on; runners: the kernel runners used, whose compiled kernels it lists."""
    return {
        'tool': 'bench.py',
        'partial': partial,
        'date': datetime.datetime.now(datetime.timezone.utc).isoformat(timespec='seconds'),
        'command': 'python bench.py ' + ' '.join(sys.argv[1:] if args.argv is None else args.argv),
        'machine': machine,
        'settings': {'device': device.name, 'batches': batches, 'repeats': args.repeats,
                     'warmup': args.warmup, 'only': args.only, 'versions': args.versions,
                     'layers': getattr(args, 'layers', False),
                     'classes': args.classes, 'seed': args.seed, 'timer': timer.name,
                     'statistic': 'median of the timed runs (peaks: best run)',
                     'cache_flush_bytes': FLUSH_BYTES if gpu else cpu_flush_bytes(),
                     'gpu_flush_passes': GPU_FLUSH_PASSES if gpu else None,
                     'check_images': CHECK_IMAGES, 'tolerance_max_rel_error': TOLERANCE,
                     'tf32': args.tf32, 'tf32_tolerance_max_rel_error': TF32_TOLERANCE,
                     'routing_tolerance': 'per layer: the tolerance in force, or one route',
                     'cupy_tf32': os.environ.get('CUPY_TF32') if gpu else None,
                     'nvidia_tf32_override': os.environ.get('NVIDIA_TF32_OVERRIDE') if gpu else None,
                     'torch_allow_tf32': False if (torch is not None and gpu) else None,
                     'torch_threads': torch.get_num_threads() if torch is not None else None,
                     'counts': 'nn/flops.py: FLOPs = 2 x MACs + bias; bytes = compulsory float32 traffic'},
        'peaks': peaks,
        'kernels': kernels,
        'network': network,
        'notes': notes,
        # What the compiler made of each kernel run so far (registers and spilled local
        # bytes per thread are known on the GPU only; NVRTC versions differ in both).
        'compiled_kernels': None if not runners else list({
            (k.file, k.name): {'file': k.file, 'name': k.name, 'registers': k.registers,
                               'local_bytes': k.local_bytes,
                               'static_shared_bytes': k.static_shared}
            for runner in runners for k in runner.loaded_kernels()}.values()),
    }


def write_json(path, report):
    """Write the report atomically (nn/atomic.py: a temporary file beside it, then a rename)."""
    def write(tmp):
        with open(tmp, 'w') as f:
            json.dump(report, f, indent=1)
    atomic_write(path, write)


def _fmt_time(s):
    return '-' if s is None else (f'{s * 1e3:9.3f}' if s >= 1e-4 else f'{s * 1e6:7.1f}us')


def print_table(report, out=None):
    """The human-readable table: one line per case, then the network (to out or stdout)."""
    out = out or sys.stdout
    peaks = report['peaks']
    fp32 = peaks['fp32_GFLOPs']
    print(f"device: {report['machine']['device_name']}   measured peaks: "
          f"{peaks['bandwidth_GBps']:.1f} GB/s copy, "
          + ('FP32 not measured' if fp32 is None else f'{fp32:.1f} GFLOP/s FP32'), file=out)
    head = (f"{'case':27} {'batch':>5} {'status':>6} {'ms':>9} {'GFLOP/s':>9} {'GB/s':>8} "
            f"{'bound':>7} {'%roof':>6} | {'vendor ms':>9} {'vendor/ours':>11}")
    print(head, file=out)
    print('-' * len(head), file=out)
    for r in report['kernels']:
        rows = [(r['name'], r)] + [(f"  v={v['version']}", v) for v in r.get('versions', [])]
        for label, x in rows:
            line = f"{label:27} {r['batch']:5d} {x['status']:>6} "
            if 'time_s' in x:
                roof = x['roofline_fraction']
                line += (f"{_fmt_time(x['time_s']):>9} {x['gflops']:9.1f} {x['gbps']:8.1f} "
                         f"{x['bound'] or '-':>7} "
                         + ('     -' if roof is None else f"{100 * roof:5.1f}%"))
            else:
                line += f"{'':9} {'':9} {'':8} {'':7} {'':6}"
            v = r.get('vendor') if x is r else None
            if v:
                vt = _fmt_time(v.get('time_s')) if 'time_s' in v else v['status']
                ratio = v.get('vendor_time_over_ours')
                line += f" | {vt:>9} {'' if ratio is None else f'{ratio:11.2f}'}"
            print(line, file=out)
            if 'error' in x:
                print(f"    {x['error']}", file=out)
    if report['kernels'] and any('vendor' in r for r in report['kernels']):
        names = sorted({r['vendor']['name'] for r in report['kernels'] if 'vendor' in r})
        print(f"vendor: {', '.join(names)}; vendor/ours > 1 means ours is faster", file=out)
    for r in report['network']:
        line = f"{r['name']:27} {r['batch']:5d} {r['status']:>6} "
        if 'time_s' in r:
            line += f"{_fmt_time(r['time_s']):>9} ms  {r['images_per_s']:9.1f} images/s"
            if 'time_over_floor' in r:
                line += f", {r['time_over_floor']:.1f}x its FP32 floor"
        t = r.get('torch')
        if t:
            line += f" | {t['name']}: "
            line += (f"{_fmt_time(t['time_s'])} ms {t['images_per_s']:.1f} images/s"
                     if 'time_s' in t else t['status'])
            if 'vendor_time_over_ours' in t:
                line += f", torch/ours {t['vendor_time_over_ours']:.2f}"
        print(line, file=out)
        for x in (r, t or {}):
            if 'error' in x:
                print(f"    {x['error']}", file=out)
    for r in report['network']:
        if 'layers' in r:
            _print_layers(r, out)
    for note in report['notes']:
        print(f'note: {note}', file=out)


def _print_layers(row, out):
    """--layers: the inference's time layer by layer, next to PyTorch's when measured."""
    layers = row['layers']
    torch = all(x.get('torch_time_s') is not None for x in layers)
    print(f"{row['name']} layer by layer (batch {row['batch']}, each layer timed in place"
          " inside whole inferences):", file=out)
    print(f"  {'layer':12} {'ms':>9}" + (f" | {'PyTorch ms':>10} {'torch/ours':>10}" if torch
                                         else ''), file=out)
    total = [sum(x['time_s'] for x in layers),
             sum(x.get('torch_time_s') or 0.0 for x in layers)]
    for name, ours, theirs in ([(x['layer'], x['time_s'], x.get('torch_time_s')) for x in layers]
                               + [('sum', *total)]):
        line = f"  {name:12} {_fmt_time(ours):>9}"
        if torch:
            line += f" | {_fmt_time(theirs):>10} {theirs / ours:10.2f}"
        print(line, file=out)
