"""The benchmark (bench.py, tools/bench/) on the CPU: tiny configurations, the JSON it
writes, and the correctness gate.

The gate is what makes the benchmark honest, so the tests inject wrong results (a layer
that is off in one element of the last image, a network whose LRN is wrong) and check
that the report says WRONG and times nothing. What bench.py's run() calls is patched on
`bench`, where run() looks it up; everything else on its tools/bench module.
"""
import json
from types import SimpleNamespace

import numpy as np
import pytest

import bench
from nn import flops
from tools.bench import devices
from tools.bench.cases import build_cases
from tools.bench.devices import open_device, reference_ops
from tools.bench.gate import TF32_TOLERANCE, TOLERANCE, check_rows, max_rel_error
from tools.bench.network import (_fresh_params, bench_network, layer_times, torch_caffenet,
                                 torch_layer_owner)
from tools.bench.one_case import _rates, bench_case
from tools.bench.report import machine_info, print_table, write_json
from tools.bench.timers import GPU_FLUSH_PASSES, CpuTimer, measure_peaks
from tools.bench.vendors import import_torch
from tools.bench.versions import kernel_versions


@pytest.fixture(autouse=True)
def small_peaks(monkeypatch):
    """Smaller peak measurements: the figures are not checked, the time is CI's."""
    monkeypatch.setattr('tools.bench.timers.CPU_PEAK_SIZES', (4 << 20, 256, 2))


def _run(tmp_path, *argv):
    path = tmp_path / 'out.json'
    rc = bench.main(['--device', 'cpu', '--repeats', '1', '--warmup', '0', '--no-torch',
                     '--json', str(path), *argv])
    return rc, json.loads(path.read_text())


def _broken(op_name, corrupt):
    """A subject_ops replacement whose `op_name` output is passed through `corrupt`."""
    real = devices.subject_ops

    def subject_ops(device):
        ops = real(device)
        fn = getattr(ops, op_name)

        def wrong(*args, **kwargs):
            out = fn(*args, **kwargs)
            if isinstance(out, tuple):
                return (corrupt(out[0]),) + out[1:]
            return corrupt(out)
        setattr(ops, op_name, wrong)
        return ops
    return subject_ops


def test_cpu_layer_json(tmp_path):
    rc, report = _run(tmp_path, '--batch', '3', '--only', 'conv3')
    assert rc == 0
    assert report['settings']['device'] == 'cpu'
    assert report['settings']['batches'] == [3]
    assert report['settings']['repeats'] == 1
    assert report['settings']['tolerance_max_rel_error'] == TOLERANCE
    assert report['machine']['device_name'].startswith('CPU')
    assert report['peaks']['bandwidth_GBps'] > 0 and report['peaks']['fp32_GFLOPs'] > 0
    assert report['network'] == []  # --only conv3: no whole-network figures
    assert any('GPU figures need a GPU' in n for n in report['notes'])
    rows = {r['name']: r for r in report['kernels']}
    assert set(rows) == {'conv3.forward', 'conv3.backward_data', 'conv3.backward_weights'}
    conv3 = next(l for l in flops.caffenet_layers() if l.name == 'conv3')
    counts = flops.layer_counts(conv3, 3)
    for pass_ in ('forward', 'backward_data', 'backward_weights'):
        assert rows[f'conv3.{pass_}']['flops'] == counts[pass_].flops
        assert rows[f'conv3.{pass_}']['macs'] == counts['forward'].macs
    for r in rows.values():
        assert r['status'] == 'ok' and r['max_rel_error'] <= TOLERANCE
        assert r['time_s'] > 0 and len(r['times_s']) == 1
        assert r['gflops'] == pytest.approx(r['flops'] / r['time_s'] / 1e9)
        assert r['gbps'] == pytest.approx(r['bytes'] / r['time_s'] / 1e9)
        assert 0 < r['roofline_fraction']


def test_json_is_rewritten_after_every_case(tmp_path, monkeypatch, capsys):
    """A run cut off by a time limit (the GPU check's) must leave what it measured: the
    JSON is written, marked partial, after each case, and a progress line goes to stderr."""
    snapshots = []
    real = write_json

    def spy(path, report):
        snapshots.append((report['partial'], [r['name'] for r in report['kernels']]))
        real(path, report)
    monkeypatch.setattr(bench, 'write_json', spy)
    rc, report = _run(tmp_path, '--batch', '2', '--only', 'relu5,pool5')
    assert rc == 0 and report['partial'] is False
    names = [r['name'] for r in report['kernels']]
    assert len(names) == 4
    assert snapshots[:-1] == [(True, names[:i]) for i in range(1, 5)]
    assert snapshots[-1] == (False, names)
    err = capsys.readouterr().err
    assert f'bench.py: 1/4 {names[0]} (batch 2): ok, ' in err
    assert f'bench.py: 4/4 {names[3]} (batch 2): ok, ' in err


def test_only_kernels_times_every_kernel_case_and_no_network(tmp_path, monkeypatch):
    real = build_cases
    monkeypatch.setattr(bench, 'build_cases', lambda *a, **k: [
        c for c in real(*a, **k) if c.layer in ('relu5', 'pool5')])
    rc, report = _run(tmp_path, '--batch', '2', '--only', 'kernels')
    assert rc == 0 and report['network'] == []
    assert sorted(r['name'] for r in report['kernels']) == [
        'pool5.backward', 'pool5.forward', 'relu5.backward', 'relu5.forward']


def test_wrong_layer_is_reported_not_timed(tmp_path, monkeypatch, capsys):
    # Off by a little in the last element only (the last image): the check rows must
    # include the end of the batch, not just its start.
    def corrupt(y):
        y = y.copy()
        y.reshape(-1)[-1] += np.float32(0.01) * np.abs(y).max()
        return y
    monkeypatch.setattr(bench, 'subject_ops', _broken('relu_forward', corrupt))
    rc, report = _run(tmp_path, '--batch', '3', '--only', 'relu7,fc8.gemm_backward_data')
    assert rc == 1
    rows = {r['name']: r for r in report['kernels']}
    assert rows['relu7.forward']['status'] == 'WRONG'
    assert rows['relu7.forward']['max_rel_error'] > TOLERANCE
    assert 'time_s' not in rows['relu7.forward']
    assert rows['relu7.backward']['status'] == 'ok'  # its cache is the true y
    assert rows['fc8.gemm_backward_data']['status'] == 'ok'
    assert 'WRONG' in capsys.readouterr().out
    assert any('relu7.forward' in n for n in report['notes'])


def test_wrong_batch_reduction_is_reported(tmp_path, monkeypatch):
    # A weight gradient that drops the last image (a classic tiling bug) is WRONG.
    def subject_ops(device):
        ops = reference_ops()
        real = ops.matmul
        ops.matmul = lambda a, b, trans_a=False, trans_b=False: (
            real(a[:-1], b[:-1], trans_a, trans_b) if trans_a else real(a, b, trans_a, trans_b))
        return ops
    monkeypatch.setattr(bench, 'subject_ops', subject_ops)
    rc, report = _run(tmp_path, '--batch', '2', '--only', 'fc8.gemm_backward_weights,fc8.gemm_forward')
    rows = {r['name']: r for r in report['kernels']}
    assert rows['fc8.gemm_backward_weights']['status'] == 'WRONG'
    assert rows['fc8.gemm_forward']['status'] == 'ok'
    assert rc == 1


def test_whole_network_cpu(tmp_path, capsys):
    # (--batch-size: the spelling train.py and predict.py use)
    rc, report = _run(tmp_path, '--batch-size', '1', '--only', 'net', '--classes', '3')
    assert rc == 0
    assert 'x its FP32 floor' in capsys.readouterr().out
    assert report['kernels'] == []
    rows = {r['name']: r for r in report['network']}
    assert set(rows) == {'net.inference', 'net.training_step'}  # batch 1: latency = inference
    layers = flops.caffenet_layers(num_classes=3)
    for name, train in (('net.inference', False), ('net.training_step', True)):
        r = rows[name]
        assert r['status'] == 'ok' and r['max_rel_error'] <= TOLERANCE
        routes = r['routes_differing']   # {layer: [changed, decisions]}
        assert sorted(routes) == ['conv1', 'conv2', 'conv3', 'conv4', 'conv5', 'fc6', 'fc7',
                                  'pool1', 'pool2', 'pool5']
        assert all(changed <= max(1, TOLERANCE * n) for changed, n in routes.values())
        assert r['images_per_s'] == pytest.approx(1 / r['time_s'])
        assert r['gflops'] == pytest.approx(r['flops'] / r['time_s'] / 1e9)
        assert r['flops'] == flops.network_counts(layers, 1, train=train).flops
        floor = r['flops'] / (report['peaks']['fp32_GFLOPs'] * 1e9)
        assert r['floor_s'] == pytest.approx(floor)
        assert r['time_over_floor'] == pytest.approx(r['time_s'] / floor)


def test_network_layer_by_layer(tmp_path, capsys):
    rc, report = _run(tmp_path, '--batch', '1', '--only', 'net', '--classes', '3', '--layers')
    assert rc == 0 and report['settings']['layers'] is True
    out = capsys.readouterr().out
    assert 'net.inference layer by layer (batch 1' in out
    inference = report['network'][0]
    assert inference['name'] == 'net.inference'
    names = [x['layer'] for x in inference['layers']]
    assert names == ['conv1', 'pool1', 'norm1', 'conv2', 'pool2', 'norm2', 'conv3', 'conv4',
                     'conv5', 'pool5', 'fc6', 'fc7', 'fc8', 'softmax']   # no dropout at test
    assert all(x['time_s'] > 0 and 'torch_time_s' not in x for x in inference['layers'])
    assert 'layers' not in report['network'][1]   # the training step has no breakdown


def test_layer_times_sum_a_layers_parts_and_skip_the_warmup():
    class CountingTimer:   # each call "takes" 1, 2, 3, ... seconds, in call order
        def __init__(self):
            self.calls = self.flushes = 0

        def flush(self):    # once before each inference, not between its layers
            self.flushes += 1

        def time_once(self, fn):
            fn()
            self.calls += 1
            return float(self.calls)

    order = []

    def run_a(clock):     # layer 'x' clocked twice per inference (as PyTorch's conv + ReLU)
        order.append('a')
        assert clock('x', lambda: 5) == 5
        clock('y', lambda: None)
        clock('x', lambda: None)

    def run_b(clock):
        order.append('b')
        clock('y', lambda: None)

    ta, tb = CountingTimer(), CountingTimer()
    args = SimpleNamespace(warmup=1, repeats=3)
    a, b = layer_times([(run_a, ta), (run_b, tb)], args)
    assert order == ['a', 'b'] * 4            # alternately, the warm-up first
    # run_a's calls: warm-up 1, 2, 3; then (4, 5, 6), (7, 8, 9), (10, 11, 12)
    assert list(a) == ['x', 'y']
    assert a == {'x': 7 + 9, 'y': 8}          # medians of 10/16/22 and 5/8/11
    assert b == {'y': 3}                      # run_b's calls 2, 3, 4 after the warm-up 1
    assert ta.flushes == tb.flushes == 4


def test_torch_modules_belong_to_their_layers():
    spec = [{'name': 'conv1'}, {'name': 'fc6'}, {'name': 'fc8_twitter'}]
    owner = [torch_layer_owner(n, spec) for n in
             ('conv1', 'conv1_relu', 'fc6_flatten', 'fc6', 'fc8_twitter')]
    assert owner == ['conv1', 'conv1', 'fc6', 'fc6', 'fc8_twitter']


def test_wrong_network_is_reported(tmp_path, monkeypatch):
    monkeypatch.setattr(bench, 'subject_ops', _broken('lrn_forward', lambda y: y * np.float32(1.001)))
    rc, report = _run(tmp_path, '--batch', '1', '--only', 'net', '--classes', '3')
    assert rc == 1
    assert all(r['status'] == 'WRONG' and 'time_s' not in r for r in report['network'])


def test_network_routing_its_gradient_wrongly_is_reported(monkeypatch, capsys):
    """The reference's backward takes the subject's pooling argmaxes (so that near-ties
    decided differently do not count as errors). A pool5 that sends the gradient of the
    last window of every plane (1 in 36 of its windows, 0.03% of all the network's
    routes) to the plane's first pixel then matches the gradients, and is WRONG by its
    routes: they are counted per layer."""
    args = bench.parse_args(['--device', 'cpu', '--repeats', '1', '--warmup', '0',
                             '--no-torch', '--classes', '3'])
    device, timer, _ = open_device('cpu')
    ops = devices.subject_ops(device)
    real_pool = ops.max_pool_forward

    def pool5_misroutes_its_last_window(*a, **kw):
        y, cache = real_pool(*a, **kw)
        if cache is not None and kw.get('layer') == 'pool5':
            cache['argmax'][:, :, -1, -1] = 0
        return y, cache
    ops.max_pool_forward = pool5_misroutes_its_last_window
    rows = bench_network(device, device.with_ops(ops), timer, None, args, 1)
    for r in rows:
        changed, n = r['routes_differing']['pool5']
        assert r['status'] == 'WRONG' and n == 36 * changed
        assert r['max_rel_error'] <= TOLERANCE   # the gradients agree
    print_table({'peaks': {'fp32_GFLOPs': None, 'bandwidth_GBps': 1.0},
                 'machine': {'device_name': 'cpu'}, 'kernels': [], 'network': rows,
                 'notes': []})
    assert "ReLU/pooling routes differing: pool5 " in capsys.readouterr().out


def test_gate_helpers():
    assert max_rel_error(np.array([1.0, 2.0]), np.array([1.0, 4.0])) == pytest.approx(0.5)
    assert max_rel_error(np.ones(3), np.ones(4)) == float('inf')
    nan = max_rel_error(np.array([np.nan]), np.array([1.0]))
    assert not nan <= TOLERANCE  # a NaN result can never pass
    assert check_rows(1) == [0]
    assert check_rows(256) == [0, 255]


def test_case_list_covers_the_issue():
    names = {c.name for c in build_cases(flops.caffenet_layers(), 2)}
    for layer in ('conv1', 'conv2', 'conv3', 'conv4', 'conv5', 'fc6', 'fc7', 'fc8',
                  'pool1', 'pool2', 'pool5', 'norm1', 'norm2', 'relu1', 'relu7', 'drop6',
                  'drop7', 'loss'):
        backward = ({f'{layer}.backward_data', f'{layer}.backward_weights'}
                    if layer.startswith('conv') else {f'{layer}.backward'})
        assert {f'{layer}.forward'} | backward <= names
    for fc in ('fc6', 'fc7', 'fc8'):
        assert {f'{fc}.gemm_forward', f'{fc}.gemm_backward_data',
                f'{fc}.gemm_backward_weights'} <= names
    assert 'sgd.fc6' in names
    assert 'sgd.fc6' not in {c.name for c in build_cases(flops.caffenet_layers(), 2, sgd=False)}


def test_bad_arguments(capsys, tmp_path, monkeypatch):
    # every name of --only must name something (one typo among good names is not skipped)
    for only, named in (('conv9', "'conv9'"), ('relu7,nonsense', "'nonsense'"),
                        (' , ', 'empty')):
        assert bench.main(['--device', 'cpu', '--only', only, '--no-torch']) == 2
        err = capsys.readouterr().err
        assert f"--only {only!r}: {named}: names no case" in err
        assert 'conv3.backward_data' in err
    # --json that cannot be written is refused before any figure is measured
    monkeypatch.setattr(bench, 'measure_peaks', lambda *a: pytest.fail('measured first'))
    blocker = tmp_path / 'file'
    blocker.write_text('')
    for path, why in ((blocker / 'r.json', 'cannot write into'), (tmp_path, 'is a folder')):
        assert bench.main(['--device', 'cpu', '--only', 'fc8', '--json', str(path)]) == 2
        err = capsys.readouterr().err
        assert f'--json {path}: ' in err and why in err
    for argv in (['--batch', '0'], ['--classes', '0'], ['--warmup', '-1']):
        with pytest.raises(SystemExit):
            bench.main(argv)
        assert 'must be at least' in capsys.readouterr().err


def test_ctrl_c_says_where_the_figures_are(tmp_path, monkeypatch, capsys):
    real = bench_case
    calls = []

    def interrupted_after_one(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(*args, **kwargs)
    monkeypatch.setattr(bench, 'bench_case', interrupted_after_one)
    path = tmp_path / 'out.json'
    assert bench.main(['--device', 'cpu', '--repeats', '1', '--warmup', '0', '--no-torch',
                       '--batch', '1', '--only', 'relu7,fc8', '--json', str(path)]) == 130
    assert capsys.readouterr().err.endswith(
        f'bench.py: interrupted; the figures measured so far are in {path} ("partial": '
        'true)\n')
    report = json.loads(path.read_text())
    assert report['partial'] is True and len(report['kernels']) == 1
    # interrupted before any figure: an older file there is not presented as this run's
    path.write_text('{"partial": false}')
    calls.clear()
    monkeypatch.setattr(bench, 'bench_case', lambda *a, **k: (_ for _ in ()).throw(
        KeyboardInterrupt))
    assert bench.main(['--device', 'cpu', '--repeats', '1', '--warmup', '0', '--no-torch',
                       '--batch', '1', '--only', 'relu7', '--json', str(path)]) == 130
    assert capsys.readouterr().err == 'bench.py: interrupted\n'


def test_cuda_without_gpu_says_so(capsys):
    from nn.device import cuda_available
    if cuda_available():
        pytest.skip('this machine has a GPU')
    assert bench.main(['--device', 'cuda']) == 2
    err = capsys.readouterr().err
    assert err.startswith('bench.py: --device cuda: ') and 'needs an NVIDIA GPU' in err
    assert err.count('--device cpu') == 1


def test_versions_bind_the_launchers():
    # Without a GPU, the emulator's runner stands in: only the binding is checked here.
    from nn.device import get_device
    device = get_device('emu')
    cases = {c.name: c for c in build_cases(flops.caffenet_layers(), 1)}
    versions = kernel_versions(device, cases['conv2.backward_weights'])
    assert [v for v, _, _ in versions] == [
        '1', '2', '2, 128-row tiles', '2, 64-row tiles',
        '3 (TF32)', '3 (TF32), 128-row tiles', '3 (TF32), 64-row tiles']
    # The backward follows its forward (version and tile height are in the cache).
    assert [ops.conv_forward.keywords for _, ops, _ in versions] == [
        {'version': 1}, {'version': 2}, {'version': 2, 'tile_rows': 128},
        {'version': 2, 'tile_rows': 64}, {'version': 3}, {'version': 3, 'tile_rows': 128},
        {'version': 3, 'tile_rows': 64}]
    assert [t for _, _, t in versions] == [TOLERANCE] * 4 + [TF32_TOLERANCE] * 3
    versions = kernel_versions(device, cases['fc6.gemm_forward'])
    assert [v for v, _, _ in versions] == ['1', '2', '3', '4 (TF32)']
    # A GPU without TF32 tensor cores (before sm_80) is not offered the TF32 versions,
    # which its launchers would refuse (and the run would then fail)
    old_gpu = SimpleNamespace(runner=SimpleNamespace(compute_capability=75), ops=device.ops)
    assert [v for v, _, _ in kernel_versions(old_gpu, cases['fc6.gemm_forward'])] == [
        '1', '2', '3']
    layers = {l.name: l for l in flops.caffenet_layers()}
    cpu = get_device('cpu')
    assert kernel_versions(cpu, cases['conv1.forward'], layers['conv1']) == []
    assert kernel_versions(cpu, cases['fc6.forward'], layers['fc6']) == []
    versions = kernel_versions(cpu, cases['conv2.forward'], layers['conv2'])
    assert [v for v, _, _ in versions] == ['im2col', 'dft']
    versions = kernel_versions(cpu, cases['conv4.backward_data'], layers['conv4'])
    assert [v for v, _, _ in versions] == ['im2col', 'winograd', 'dft']
    assert [ops.conv_forward.keywords for _, ops, _ in versions] == [
        {'algorithm': 'im2col'}, {'algorithm': 'winograd'}, {'algorithm': 'dft'}]


def test_cpu_versions_are_the_convolution_algorithms(tmp_path):
    rc, report = _run(tmp_path, '--batch', '1', '--only', 'conv5,conv1', '--versions')
    assert rc == 0
    rows = {r['name']: r for r in report['kernels']}
    assert [v['version'] for v in rows['conv5.backward_data']['versions']] == [
        'im2col', 'winograd', 'dft']
    assert all(v['status'] == 'ok' and v['time_s'] > 0 for v in rows['conv5.forward']['versions'])
    assert 'versions' not in rows['conv1.forward']   # only one algorithm applies


def test_a_wrong_version_fails_the_run(tmp_path, monkeypatch, capsys):
    real = kernel_versions

    def versions_one_wrong(device, case, layer=None):
        out = real(device, case, layer)
        label, ops, tolerance = out[-1]
        fn = ops.conv_forward
        ops.conv_forward = lambda *a, **k: (lambda y, c: (y * 1.01, c))(*fn(*a, **k))
        return out[:-1] + [(label, ops, tolerance)]
    monkeypatch.setattr(bench, 'kernel_versions', versions_one_wrong)
    rc, report = _run(tmp_path, '--batch', '1', '--only', 'conv5.forward', '--versions')
    (row,) = report['kernels']
    assert row['status'] == 'ok'                                   # the default is right
    assert [v['status'] for v in row['versions']] == ['ok', 'ok', 'WRONG']  # dft, broken
    assert rc == 1


def test_emulated_kernel_path(tmp_path):
    # The GPU code path (kernel ops, versions, gate) on the emulator, on small layers.
    rc, report = _run(tmp_path, '--device', 'emu', '--batch', '1', '--only', 'relu7,loss',
                      '--versions')
    assert rc == 0
    rows = {r['name']: r for r in report['kernels']}
    assert rows['relu7.forward']['status'] == 'ok'
    assert [v['version'] for v in rows['relu7.forward']['versions']] == ['1', '2']
    assert all(v['status'] == 'ok' for r in rows.values() for v in r['versions'])
    # The kernels run are listed; registers and spills are known on a GPU only.
    compiled = {k['name']: k for k in report['compiled_kernels']}
    assert {'relu_forward_v1', 'relu_forward_v2', 'softmax_loss_v1'} <= set(compiled)
    assert all(k['registers'] is None and k['local_bytes'] is None for k in compiled.values())


def test_torch_comparison_when_installed(tmp_path):
    torch = pytest.importorskip('torch')
    path = tmp_path / 'out.json'
    rc = bench.main(['--device', 'cpu', '--repeats', '1', '--warmup', '0', '--batch', '2',
                     '--only', 'norm2,pool5,conv5,loss,fc8.gemm_backward_weights', '--json', str(path)])
    report = json.loads(path.read_text())
    assert rc == 0
    for r in report['kernels']:
        v = r['vendor']
        assert v['name'].startswith('PyTorch CPU') and v['status'] == 'ok', (r['name'], v)
        assert v['vendor_time_over_ours'] == pytest.approx(v['time_s'] / r['time_s'])
    assert report['settings']['torch_threads'] == torch.get_num_threads()


def test_torch_caffenet_is_identical():
    torch = pytest.importorskip('torch')
    from nn.caffenet import CaffeNet
    net = CaffeNet(num_classes=5, device='cpu', dtype=np.float64)
    params = _fresh_params(net, 3)
    net.load_params(params, strict=True)
    x = np.random.default_rng(4).standard_normal((1, 3, 227, 227)) * 30
    model = torch_caffenet(torch, net.spec, params, 'cpu').eval()
    with torch.no_grad():
        got = model(torch.from_numpy(x.astype(np.float32))).numpy()
    assert max_rel_error(got, net.forward(x)) <= TOLERANCE


def test_whole_network_with_torch(tmp_path):
    pytest.importorskip('torch')
    path = tmp_path / 'out.json'
    rc = bench.main(['--device', 'cpu', '--repeats', '2', '--warmup', '0', '--batch', '1',
                     '--only', 'net', '--classes', '4', '--layers', '--json', str(path)])
    assert rc == 0
    network = json.loads(path.read_text())['network']
    for r in network:
        t = r['torch']
        assert t['status'] == 'ok' and t['max_rel_error'] <= TOLERANCE
        assert len(t['times_s']) == len(r['times_s']) == 2  # timed run for run, alternately
        assert t['vendor_time_over_ours'] == pytest.approx(t['time_s'] / r['time_s'])
    layers = network[0]['layers']   # every layer of ours has PyTorch's time beside it
    assert len(layers) == 14 and all(x['torch_time_s'] > 0 for x in layers)


# ---- failures that must not cost a scarce GPU run its other figures ----------------------

def test_network_crash_keeps_the_kernel_figures(tmp_path, monkeypatch, capsys):
    def crash(*args, **kwargs):
        raise RuntimeError('boom')
    monkeypatch.setattr(bench, 'bench_network', crash)
    calls = []
    real_machine_info = machine_info
    monkeypatch.setattr(bench, 'machine_info', lambda *a: calls.append(1) or real_machine_info(*a))
    rc, report = _run(tmp_path, '--batch', '2', '--only', 'relu5,net')
    assert rc == 1
    assert [r['status'] for r in report['kernels']] == ['ok', 'ok']
    assert report['network'] == [{'name': 'net', 'batch': 2, 'status': 'ERROR',
                                  'error': 'RuntimeError: boom'}]
    assert 'RuntimeError: boom' in capsys.readouterr().out
    assert len(calls) == 1   # machine_info once per run, not once per JSON write


def test_table_prints_pytorchs_network_error(capsys):
    report = {'machine': {'device_name': 'test'}, 'kernels': [], 'notes': [],
              'peaks': {'bandwidth_GBps': 1.0, 'fp32_GFLOPs': None},
              'network': [{'name': 'net.inference', 'batch': 2, 'status': 'ok',
                           'time_s': 0.5, 'images_per_s': 4.0,
                           'torch': {'name': 'PyTorch', 'status': 'ERROR',
                                     'error': 'RuntimeError: cuDNN failed'}}]}
    print_table(report)
    out = capsys.readouterr().out
    assert 'FP32 not measured' in out and '| PyTorch: ERROR' in out
    assert '    RuntimeError: cuDNN failed' in out


def test_peaks_without_a_matrix_product():
    """A failing matmul (a broken cuBLAS) leaves the FP32 peak unmeasured, not the run."""
    def matmul(*args, **kwargs):
        raise RuntimeError('no cuBLAS')
    xp = SimpleNamespace(__name__='nomatmul', float32=np.float32, ones=np.ones,
                         empty_like=np.empty_like, copyto=np.copyto, asarray=np.asarray,
                         matmul=matmul)
    peaks = measure_peaks(SimpleNamespace(name='cpu', xp=xp), CpuTimer())
    assert peaks['bandwidth_GBps'] > 0 and peaks['fp32_GFLOPs'] is None
    assert 'nomatmul.matmul failed (RuntimeError: no cuBLAS)' in peaks['fp32_how']
    rates = _rates(flops.Counts(10, 20, 40), 1e-3, peaks)
    assert rates['bound'] is None and rates['roofline_fraction'] is None
    assert rates['gflops'] == pytest.approx(20 / 1e-3 / 1e9)


def test_torch_that_fails_to_import_is_skipped_with_the_reason(monkeypatch):
    import builtins
    real_import = builtins.__import__

    def fake_import(name, *args, **kwargs):
        if name == 'torch':
            raise OSError('libcudnn.so.9: cannot open shared object file')
        return real_import(name, *args, **kwargs)
    monkeypatch.setattr(builtins, '__import__', fake_import)
    torch, why = import_torch(False, 'cuda')
    assert torch is None
    assert why == 'PyTorch failed to import (OSError: libcudnn.so.9: cannot open shared object file)'


# ---- the TF32 (tensor-core) versions ------------------------------------------------------

def test_emulated_tf32_versions_are_checked_within_their_tolerance(tmp_path):
    rc, report = _run(tmp_path, '--device', 'emu', '--batch', '1', '--only', 'fc8',
                      '--versions', '--classes', '2')
    assert rc == 0 and report['settings']['tf32'] is False
    for row in report['kernels']:
        by_label = {v['version']: v for v in row['versions']}
        assert by_label['3']['max_rel_error'] <= TOLERANCE
        tf32 = by_label['4 (TF32)']
        # Rounded operands: a real, reported error, inside the TF32 tolerance.
        assert tf32['status'] == 'ok', row['name']
        assert TOLERANCE < tf32['max_rel_error'] <= TF32_TOLERANCE, row['name']


def test_tf32_needs_the_kernels(capsys):
    assert bench.main(['--device', 'cpu', '--tf32', '--only', 'net', '--no-torch']) == 2
    assert '--tf32 needs the kernels' in capsys.readouterr().err


def test_tf32_speedup_notes():
    network = [{'name': 'net.training_step', 'time_s': 0.3},
               {'name': 'net.training_step (TF32)', 'time_s': 0.1},
               {'name': 'net.inference', 'time_s': 0.2},
               {'name': 'net.inference (TF32)', 'status': 'WRONG'}]
    assert bench._tf32_speedups(network) == ['TF32: net.training_step FP32/TF32 time = 3.00']


def test_network_gate_checks_gradients_at_its_own_tolerance():
    """A network whose scores are off by 3e-4 (inside a TF32 tolerance of 1e-2) and whose
    fc6 weight gradient is off by 10% is WRONG: the gradients are checked whenever the
    forward passes the tolerance in force, not only the FP32 one."""
    args = bench.parse_args(['--device', 'cpu', '--repeats', '1', '--warmup', '0',
                             '--no-torch'])
    device, timer, _ = open_device('cpu')
    ops = devices.subject_ops(device)
    real_fc_forward, real_fc_backward = ops.inner_product_forward, ops.inner_product_backward

    def fc_forward(x, w, b, **kwargs):
        y, cache = real_fc_forward(x, w, b, **kwargs)
        return y * (1 + 3e-4) if kwargs.get('layer') == 'fc8' else y, cache

    def fc_backward(dy, cache):
        dx, dw, db = real_fc_backward(dy, cache)
        return dx, (dw * 1.1 if dw.shape[1] == 9216 else dw), db   # fc6's weights
    ops.inner_product_forward, ops.inner_product_backward = fc_forward, fc_backward
    rows = bench_network(device, device.with_ops(ops), timer, None, args, 1,
                         tolerance=1e-2, label=' (test)')
    assert {r['name'] for r in rows} == {'net.inference (test)', 'net.training_step (test)'}
    assert all(r['status'] == 'WRONG' and r['max_rel_error'] > 0.05 for r in rows)


def test_gpu_path_on_a_stand_in_for_cupy(tmp_path, monkeypatch, capsys):
    """bench.py's GPU-only code (CUDA-event timer with its flush, the device properties,
    the peaks, cuBLAS through cupy.matmul as the vendor, the compiled kernels' registers)
    on tests/fake_cupy.py's stand-in, whose kernels run on the emulator and whose cuBLAS
    is NumPy: the run must complete and report every field a real GPU run would."""
    from tests import fake_cupy
    fake_cupy.install(monkeypatch)
    monkeypatch.setattr('tools.bench.timers.GPU_PEAK_SIZES', (1 << 16, 64, 2))
    monkeypatch.setattr('tools.bench.timers.FLUSH_BYTES', 1 << 16)   # the timer's buffer
    monkeypatch.setattr('tools.bench.report.FLUSH_BYTES', 1 << 16)   # what the JSON says
    path = tmp_path / 'gpu.json'
    rc = bench.main(['--device', 'cuda', '--batch', '1', '--only', 'relu7,fc8',
                     '--repeats', '1', '--warmup', '0', '--no-torch', '--json', str(path)])
    assert rc == 0
    report = json.loads(path.read_text())
    machine, settings = report['machine'], report['settings']
    assert machine['device_name'] == 'stand-in GPU (the emulator)'
    assert (machine['nvrtc'], machine['cuda_runtime']) == ('13.0', 13000)
    assert settings['timer'] == 'CUDA events (cupy), L2 flushed'
    assert settings['cache_flush_bytes'] == 1 << 16
    assert settings['gpu_flush_passes'] == GPU_FLUSH_PASSES
    assert report['peaks']['fp32_GFLOPs'] > 0 and report['peaks']['bandwidth_GBps'] > 0
    rows = {r['name']: r for r in report['kernels']}
    assert all(r['status'] == 'ok' and r['time_s'] > 0 for r in rows.values())
    assert rows['fc8.gemm_forward']['vendor']['name'].startswith('cuBLAS (CuPy stand-in')
    assert rows['fc8.gemm_forward']['vendor']['status'] == 'ok'
    compiled = report['compiled_kernels']
    assert compiled and all(k['registers'] == fake_cupy.FAKE_REGISTERS for k in compiled)
    assert 'stand-in GPU' in capsys.readouterr().out


# ---- the gate, the rates and the timers, each alone ---------------------------------------

def _cases(batch):
    return {c.name: c for c in build_cases(flops.caffenet_layers(num_classes=3), batch)}


def _gate_subject(case, change=lambda outs: outs, batch=3, full_change=None):
    """gate() on `case` with the float32 NumPy ops as the subject, its outputs passed
    through `change` (on the check rows) and `full_change` (on the whole batch)."""
    from tools.bench.gate import gate
    _, _, lib = open_device('cpu')
    ops = reference_ops()
    inputs = case.make(np.random.default_rng(), batch)

    def run(t):
        return tuple(change(tuple(case.run(ops, case.prepare(ops, t)))))
    full = (full_change or change)(tuple(case.run(ops, case.prepare(ops, lib.convert(inputs)))))
    return gate(case, run, lib, inputs, full)


def test_gate_rejects_every_kind_of_wrong_result():
    case = _cases(3)['fc8.backward']          # three outputs: dx (per image), dw, db
    ok, err = _gate_subject(case)
    # the truth is float64: a float32 subject shows its rounding, within the tolerance
    assert ok and 0 < err <= TOLERANCE

    def nan_in_dx(outs):
        dx = outs[0].copy()
        dx.reshape(-1)[0] = np.nan
        return (dx,) + outs[1:]

    def wrong_db(outs):                       # the last output only
        return outs[:2] + (outs[2] * np.float32(1.01),)

    def dw_reshaped(outs):                    # right values in memory, wrong shape
        return (outs[0], outs[1].reshape(outs[1].shape[::-1]), outs[2])

    for change in (nan_in_dx, wrong_db, dw_reshaped, lambda outs: outs[:2]):
        ok, err = _gate_subject(case, change)
        assert not ok and not err <= TOLERANCE, change

    def last_image_wrong(outs):               # right on the check rows run alone
        dx = outs[0].copy()
        dx[-1] *= np.float32(1.01)
        return (dx,) + outs[1:]
    ok, _ = _gate_subject(case, full_change=last_image_wrong)
    assert not ok


def test_conv_weight_gradient_case_checks_the_bias_gradient_too():
    case = _cases(1)['conv5.backward_weights']

    def wrong_db(outs):
        return tuple(o * np.float32(1.01) if o.ndim == 1 else o for o in outs)
    assert _gate_subject(case, batch=1)[0]
    assert not _gate_subject(case, wrong_db, batch=1)[0]


def test_a_kernel_wrong_only_in_a_larger_batch_is_reported(tmp_path, monkeypatch):
    """The check rows are run alone, but the timed full-batch outputs are compared too: a
    kernel whose last image goes wrong only in batches of more than two is WRONG."""
    def corrupt(y):
        if len(y) > 2:
            y = y.copy()
            y[-1] *= np.float32(1.01)
        return y
    monkeypatch.setattr(bench, 'subject_ops', _broken('relu_forward', corrupt))
    rc, report = _run(tmp_path, '--batch', '4', '--only', 'relu7.forward')
    (row,) = report['kernels']
    assert rc == 1 and row['status'] == 'WRONG' and 'time_s' not in row


def test_dropout_is_checked_on_the_whole_batch(tmp_path):
    # its masks follow the flat index: the check rows alone would have other masks
    rc, report = _run(tmp_path, '--batch', '3', '--only', 'drop7')
    assert rc == 0
    assert [r['status'] for r in report['kernels']] == ['ok', 'ok']


def test_rates_by_hand():
    peaks = {'fp32_GFLOPs': 1000.0, 'bandwidth_GBps': 100.0}
    # 2 GFLOP take 2 ms at the peak, 1 GB takes 10 ms: memory bound, 10 ms its floor
    counts = flops.Counts(1 << 20, 2_000_000_000, 1_000_000_000)
    rates = _rates(counts, 0.04, peaks)
    assert rates['gflops'] == pytest.approx(50.0) and rates['gbps'] == pytest.approx(25.0)
    assert rates['bound'] == 'memory' and rates['roofline_fraction'] == pytest.approx(0.25)
    counts = flops.Counts(1 << 20, 20_000_000_000, 1_000_000_000)   # 20 ms of arithmetic
    rates = _rates(counts, 0.08, peaks)
    assert rates['bound'] == 'compute' and rates['roofline_fraction'] == pytest.approx(0.25)


class _RecordingTimer:
    """A timer that runs fn once per measure and records the batch of what it ran."""
    name = 'recording'

    def __init__(self, seconds):
        self.seconds, self.batches = seconds, []

    def measure(self, fn, warmup, repeats, flush=True):
        self.batches.append(len(fn()[0]))
        return [self.seconds] * repeats


def test_the_whole_batch_is_timed_not_the_check_rows():
    case = _cases(5)['relu7.forward']
    layer = next(l for l in flops.caffenet_layers(num_classes=3) if l.name == 'relu7')
    device, _, lib = open_device('cpu')
    timer = _RecordingTimer(0.5)
    args = SimpleNamespace(seed=0, warmup=0, repeats=3)
    peaks = {'fp32_GFLOPs': None, 'bandwidth_GBps': 1.0}
    row = bench_case(case, layer, devices.subject_ops(device), lib, timer, None, args, 5, peaks)
    assert row['status'] == 'ok' and timer.batches == [5]
    assert row['time_s'] == 0.5 and row['times_s'] == [0.5] * 3
    assert row['gflops'] == pytest.approx(5 * 4096 / 0.5 / 1e9)   # one max per element


def test_case_counts_are_the_layers_work():
    layers = {l.name: l for l in flops.caffenet_layers()}
    cases = {c.name: c for c in build_cases(flops.caffenet_layers(), 4)}
    fc7 = flops.layer_counts(layers['fc7'], 4)
    # the fc backward does both products: dx and dw (+ db)
    assert cases['fc7.backward'].counts == fc7['backward_data'] + fc7['backward_weights']
    for pass_ in ('forward', 'backward_data', 'backward_weights'):
        assert cases[f'conv2.{pass_}'].counts == flops.layer_counts(layers['conv2'], 4)[pass_]
    # SGD on fc6's 4096 x 9216 weights, whatever the batch
    assert cases['sgd.fc6'].counts == flops.sgd_counts(4096 * 9216)


def test_summary_is_the_median():
    from tools.bench.timers import summary
    out = summary([3.0, 1.0, 11.0], images=6)
    assert out['time_s'] == 3.0 and out['images_per_s'] == 2.0
    assert out['times_s'] == [3.0, 1.0, 11.0]


def test_layer_times_are_medians():
    class SquaresTimer:   # the k-th call takes k**2 seconds: 1, 4, 9
        calls = 0

        def flush(self):
            pass

        def time_once(self, fn):
            fn()
            self.calls += 1
            return float(self.calls ** 2)
    (times,) = layer_times([(lambda clock: clock('x', lambda: None), SquaresTimer())],
                           SimpleNamespace(warmup=0, repeats=3))
    assert times == {'x': 4.0}


def test_timer_flushes_before_each_timed_run_after_the_warmup():
    from tools.bench.timers import _Timer
    log = []

    class LogTimer(_Timer):
        def flush(self):
            log.append('flush')

        def time_once(self, fn):
            fn()
            log.append('timed')
            return 1.0
    assert LogTimer().measure(lambda: log.append('run'), 2, 3) == [1.0] * 3
    assert log == ['run', 'run'] + ['flush', 'run', 'timed'] * 3
    log.clear()
    LogTimer().measure(lambda: log.append('run'), 0, 2, flush=False)
    assert log == ['run', 'timed'] * 2


def test_peaks_by_hand():
    """A copy of 16 MiB (the test's size) in 1 ms reads and writes 33.5 GB/s; a 256^3
    product (2 x 256^3 FLOPs) in 1 ms is 33.5 GFLOP/s. The best run counts, and the
    fastest of the products on offer."""
    class FixedTimer:
        def __init__(self):
            self.calls = 0

        def measure(self, fn, warmup, runs, flush=True):
            fn()
            self.calls += 1
            # the copy, then NumPy's product (4 ms at best), then the stand-in torch's (1 ms)
            best = {1: 1e-3, 2: 4e-3, 3: 1e-3}[self.calls]
            return [2 * best, best]
    fake_torch = SimpleNamespace(from_numpy=np.asarray, matmul=np.matmul,
                                 empty=lambda *s: np.empty(s, np.float32))
    device = SimpleNamespace(name='cpu', xp=np)
    peaks = measure_peaks(device, FixedTimer(), fake_torch)
    assert peaks['bandwidth_GBps'] == pytest.approx(2 * 16 * 2 ** 20 / 1e-3 / 1e9)
    assert peaks['fp32_GFLOPs'] == pytest.approx(2 * 256 ** 3 / 1e-3 / 1e9)
    assert peaks['fp32_how'].startswith('torch.matmul 256x256')


def test_gpu_timer_reports_seconds():
    from tools.bench.timers import GpuTimer

    class Event:
        def record(self):
            pass

        def synchronize(self):
            pass
    cuda = SimpleNamespace(Event=Event, get_elapsed_time=lambda start, end: 2.5)  # ms
    module = SimpleNamespace(cuda=cuda, float32=np.float32,
                             empty=lambda n, dtype: np.empty(1, dtype))
    assert GpuTimer('cupy', module).time_once(lambda: None) == pytest.approx(2.5e-3)


def test_table_shows_each_figure_in_its_column(capsys):
    row = {'name': 'conv3.forward', 'batch': 2, 'status': 'ok', 'time_s': 2e-3,
           'gflops': 123.4, 'gbps': 5.6, 'bound': 'memory', 'roofline_fraction': 0.25}
    network = {'name': 'net.inference', 'batch': 1, 'status': 'ok', 'time_s': 4e-3,
               'images_per_s': 250.0,
               'layers': [{'layer': 'conv1', 'time_s': 1e-3, 'torch_time_s': 3e-3}]}
    print_table({'machine': {'device_name': 'test'}, 'kernels': [row], 'network': [network],
                 'notes': [], 'peaks': {'bandwidth_GBps': 1.0, 'fp32_GFLOPs': 2.0}})
    lines = capsys.readouterr().out.splitlines()
    kernel = next(l for l in lines if l.startswith('conv3.forward')).split()
    assert kernel[1:] == ['2', 'ok', '2.000', '123.4', '5.6', 'memory', '25.0%']
    conv1 = next(l for l in lines if l.strip().startswith('conv1')).split()
    assert conv1 == ['conv1', '1.000', '|', '3.000', '3.00']   # ms, PyTorch ms, torch/ours


def _network_with(change_ops, batch):
    """bench_network's rows for a network whose op set `change_ops(ops)` alters."""
    args = bench.parse_args(['--device', 'cpu', '--repeats', '1', '--warmup', '0',
                             '--no-torch', '--classes', '3'])
    device, timer, _ = open_device('cpu')
    ops = devices.subject_ops(device)
    change_ops(ops)
    return bench_network(device, device.with_ops(ops), timer, None, args, batch)


@pytest.mark.parametrize('min_batch', [2, 3])
def test_network_wrong_in_its_last_image_is_reported(min_batch):
    """Scores wrong in the last image of batches of at least `min_batch`: the check
    images (first and last) are compared run alone (2) and inside the whole batch (3)."""
    def wrong_fc8(ops):
        real = ops.inner_product_forward

        def fc_forward(x, w, b, **kwargs):
            y, cache = real(x, w, b, **kwargs)
            if kwargs.get('layer') == 'fc8' and len(y) >= min_batch:
                y = y.copy()
                y[-1] += np.float32(0.01) * np.abs(y).max()
            return y, cache
        ops.inner_product_forward = fc_forward
    rows = _network_with(wrong_fc8, 3)
    assert all(r['status'] == 'WRONG' and 'time_s' not in r for r in rows)


@pytest.mark.parametrize('wrong', ['loss', 'bias_gradient'])
def test_network_gate_checks_the_loss_and_the_bias_gradients(wrong):
    def change(ops):
        if wrong == 'loss':
            real = ops.softmax_loss_forward

            def loss_forward(x, labels):
                loss, cache = real(x, labels)
                return loss * 1.01, cache
            ops.softmax_loss_forward = loss_forward
        else:
            real = ops.inner_product_backward

            def fc_backward(dy, cache):
                dx, dw, db = real(dy, cache)
                return dx, dw, (db * 1.1 if dw.shape[1] == 9216 else db)   # fc6's bias
            ops.inner_product_backward = fc_backward
    rows = _network_with(change, 1)
    assert all(r['status'] == 'WRONG' and r['max_rel_error'] > 5e-3 for r in rows)


def test_gate_tolerance_is_the_boundary():
    case = _cases(2)['fc8.forward']
    for scale, ok in ((1 + 3e-5, True), (1 + 3e-4, False)):
        assert _gate_subject(case, lambda outs: tuple(o * np.float32(scale) for o in outs),
                             batch=2)[0] is ok, scale


def test_dropout_case_times_training_dropout():
    case = _cases(2)['drop7.forward']
    ops = reference_ops()
    inputs = case.make(np.random.default_rng(), 2)
    (y,) = case.run(ops, case.prepare(ops, inputs))
    dropped = np.mean(y == 0)
    assert 0.45 < dropped < 0.55     # ratio 0.5: not the identity of test mode


def test_conv_backward_cases_compute_only_their_own_gradients():
    cases = _cases(1)
    calls = []

    def conv_backward(dy, cache, need_dx=True, need_dw=True):
        calls.append((need_dx, need_dw))
        return 'dx', 'dw', 'db'
    ops = SimpleNamespace(conv_backward=conv_backward)
    state = ('cache', 'dy')
    assert cases['conv3.backward_data'].run(ops, state) == ('dx',)
    assert cases['conv3.backward_weights'].run(ops, state) == ('dw', 'db')
    assert calls == [(True, False), (False, True)]


def test_sgd_update_is_checked_and_timed(tmp_path):
    rc, report = _run(tmp_path, '--batch', '1', '--only', 'sgd')
    (row,) = report['kernels']
    assert rc == 0 and row['status'] == 'ok' and row['time_s'] > 0
    assert row['flops'] == 7 * 4096 * 9216


def test_a_wrong_pytorch_network_is_reported_not_compared(monkeypatch):
    torch = pytest.importorskip('torch')
    import tools.bench.network as network
    real = network.torch_caffenet

    def off_by_one_percent(torch, spec, params, device):   # PyTorch given other weights
        return real(torch, spec, {n: {'weight': b['weight'] * np.float32(1.01),
                                      'bias': b['bias']} for n, b in params.items()}, device)
    monkeypatch.setattr(network, 'torch_caffenet', off_by_one_percent)
    args = bench.parse_args(['--device', 'cpu', '--repeats', '1', '--warmup', '0',
                             '--classes', '3'])
    device, timer, _ = open_device('cpu')
    rows = bench_network(device, device, timer, torch, args, 1)
    for r in rows:
        assert r['status'] == 'ok' and r['time_s'] > 0
        assert r['torch']['status'] == 'WRONG' and 'time_s' not in r['torch']
