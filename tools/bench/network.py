"""The whole network: inference, training step and batch-1 latency, checked against the
float64 reference network, timed run for run beside the identical CaffeNet in PyTorch;
with --layers, each layer's time inside whole inferences."""
import collections
import functools
import statistics

import numpy as np

from nn import flops
from tools.bench.cases import DROPOUT_SEED, SGD_ARGS, normal
from tools.bench.gate import TOLERANCE, check_rows, max_rel_error
from tools.bench.timers import summary, timed, torch_timer

# The timed training steps use a tiny rate: speed does not depend on it, and a real one
# would drive the random network to inf/NaN within a few repeated steps.
NET_LR = 1e-7


def _fresh_params(net, seed):
    """He-scaled random weights and non-zero biases, so every layer shapes the scores.

    Uniform on [-a, a] with a = sqrt(6 / fan_in), He's variance 2 / fan_in: drawing 61M
    uniforms takes a third of the time normals would.
    """
    rng = np.random.default_rng(seed)
    params = {}
    for name, shape in net.blob_shapes.items():
        a = np.float32(np.sqrt(6.0 / np.prod(shape[1:])))
        weight = rng.random(shape, dtype=np.float32)
        weight *= 2 * a
        weight -= a
        params[name] = {'weight': weight, 'bias': normal(rng, (shape[0],), 0.1)}
    return params


def torch_caffenet(torch, spec, params, device):
    """The identical CaffeNet in PyTorch (FP32), our weights copied in.

    Convolution groups, LocalResponseNorm(5, 1e-4, 0.75, k=1) (PyTorch divides alpha
    by the size like Caffe), max pooling with ceil_mode=True (Caffe's rounding).
    Each module is named after the spec layer it belongs to: the layer's own name, or
    '<layer>_relu' and '<layer>_flatten' for the fused ReLU and the flattening before
    the first fully connected layer (torch_layer_owner maps them back).
    """
    nn = torch.nn
    mods, flat = {}, False
    for layer in spec:
        kind, name = layer['type'], layer['name']
        if kind in ('conv', 'fc'):
            w = torch.from_numpy(params[name]['weight'])
            b = torch.from_numpy(params[name]['bias'])
            if kind == 'conv':
                g = layer.get('group', 1)
                m = nn.Conv2d(w.shape[1] * g, w.shape[0], w.shape[2], layer.get('stride', 1),
                              layer.get('pad', 0), groups=g)
            else:
                if not flat:
                    mods[f'{name}_flatten'] = nn.Flatten()
                    flat = True
                m = nn.Linear(w.shape[1], w.shape[0])
            with torch.no_grad():
                m.weight.copy_(w.reshape(m.weight.shape))
                m.bias.copy_(b)
            mods[name] = m
            if layer.get('relu'):
                mods[f'{name}_relu'] = nn.ReLU(inplace=True)
        elif kind == 'pool':
            mods[name] = nn.MaxPool2d(layer['kernel'], layer['stride'], layer.get('pad', 0),
                                      ceil_mode=True)
        elif kind == 'lrn':
            mods[name] = nn.LocalResponseNorm(layer['local_size'], layer['alpha'],
                                              layer['beta'], layer.get('k', 1.0))
        elif kind == 'relu':
            mods[name] = nn.ReLU(inplace=True)
        elif kind == 'dropout':
            mods[name] = nn.Dropout(layer['ratio'])
    return nn.Sequential(collections.OrderedDict(mods)).to(device)


def torch_layer_owner(module_name, spec):
    """The spec layer a module of torch_caffenet belongs to: 'conv1_relu' -> 'conv1'."""
    names = {layer['name'] for layer in spec}
    return module_name if module_name in names else module_name.rsplit('_', 1)[0]


def _torch_sgd(torch, model):
    """SGD with Caffe's multipliers: weights lr x1 decay x1, biases lr x2 no decay."""
    weights = [p for n, p in model.named_parameters() if n.endswith('weight')]
    biases = [p for n, p in model.named_parameters() if n.endswith('bias')]
    lr, wd = NET_LR, SGD_ARGS['weight_decay']
    return torch.optim.SGD([{'params': weights, 'lr': lr, 'weight_decay': wd},
                            {'params': biases, 'lr': 2 * lr, 'weight_decay': 0.0}],
                           lr=lr, momentum=SGD_ARGS['momentum'])


def bench_network(device, sub_device, timer, torch, args, batch, tolerance=TOLERANCE,
                  label=''):
    """Whole-network figures at `batch`: inference, training step, and batch-1 latency.

    Checked first: scores (test mode), and loss plus every gradient (train mode, the
    same dropout masks) against the float64 reference network with the same weights,
    within `tolerance`. The reference's backward takes the net's ReLU masks and pooling
    argmaxes (CaffeNet.adopt_routing: a near-tie decided the other way would move a whole
    gradient term), and in each layer at most `tolerance` of them (or one) may differ
    from its own: rounding flips about one in a million in float32, one in 1,000 in TF32
    at worst (pool5, simulated), a wrong kernel a large part of its layer.
    label: appended to the rows' names ('net.inference' + label).
    """
    from nn.caffenet import CaffeNet
    from nn.solver import SGDSolver
    rng = np.random.default_rng(args.seed)
    net = CaffeNet(num_classes=args.classes, device=sub_device, dropout_seed=DROPOUT_SEED,
                   init='zeros')  # (weights are loaded below)
    params = _fresh_params(net, args.seed)
    # A copy: on the CPU the net may keep the very arrays it is given, and the timed
    # training steps update them in place; PyTorch must start from the same weights.
    net.load_params({n: {b: a.copy() for b, a in blobs.items()} for n, blobs in params.items()},
                    strict=True, source='bench')
    truth = CaffeNet(num_classes=args.classes, device='cpu', dropout_seed=DROPOUT_SEED,
                     dtype=np.float64, init='zeros')
    truth.load_params(params, strict=True, source='bench')
    solver = SGDSolver(net, base_lr=NET_LR, momentum=SGD_ARGS['momentum'],
                       weight_decay=SGD_ARGS['weight_decay'], lr_policy='fixed')

    size = net.input_size
    x_host = normal(rng, (batch, 3, size, size), 30.0)  # roughly mean-subtracted pixels
    labels_host = rng.integers(0, args.classes, size=batch).astype(np.int32)
    rows = check_rows(batch)
    x_check, labels_check = x_host[rows], labels_host[rows]
    x, labels = device.asarray(x_host), device.asarray(labels_host, np.int32)

    # Gate: test-mode scores of the check images, alone and inside the whole batch, then
    # one training step's loss and gradients (both nets on their first dropout masks).
    want = truth.forward(x_check.astype(np.float64))
    errs = [max_rel_error(device.to_numpy(net.forward(device.asarray(x_check))), want),
            max_rel_error(device.to_numpy(net.forward(x))[rows], want)]
    routes, misrouted = None, []
    if max(errs) <= tolerance:  # (a wrong forward needs no gradient check)
        loss, grads, _ = net.loss_and_grads(device.asarray(x_check),
                                            device.asarray(labels_check, np.int32))
        t_loss, t_dscores, _ = truth.forward_loss(x_check.astype(np.float64), labels_check)
        routes = truth.adopt_routing(net)
        misrouted = [f'{layer} {changed} of {n}' for layer, (changed, n) in routes.items()
                     if changed > max(1, tolerance * n)]
        t_grads = truth.backward(t_dscores)
        errs.append(max_rel_error(loss, t_loss))
        for name in t_grads:
            for blob in ('weight', 'bias'):
                errs.append(max_rel_error(device.to_numpy(grads[name][blob]),
                                          t_grads[name][blob]))
    err = max(errs)
    status = 'ok' if err <= tolerance and not misrouted else 'WRONG'

    plan = [('inference', batch, lambda: net.predict(x))]
    plan.append(('training_step', batch, lambda: solver.step(net.loss_and_grads(x, labels)[1])))
    if batch != 1:
        plan.append(('latency', 1, lambda: net.predict(x[:1])))
    layers = flops.caffenet_layers(args.classes)
    theirs = None
    if torch is not None:
        try:   # a PyTorch failure (cuDNN, memory) must not cost our own figures
            theirs = _torch_network(torch, device, net, params, x_host, labels_host, want)
        except Exception as exc:
            theirs = ({'name': f'PyTorch {torch.__version__}', 'status': 'ERROR',
                       'error': f'{type(exc).__name__}: {exc}'}, None, None)
    report = []
    for what, n, fn in plan:
        row = {'name': f'net.{what}{label}', 'batch': n, 'status': status, 'max_rel_error': err,
               'routes_differing': routes,
               'flops': flops.network_counts(layers, n, train=(what == 'training_step')).flops}
        if status != 'ok':
            row['error'] = (f"max relative error {err:.2e} (tolerance {tolerance:g}); "
                            + ("no gradient check" if routes is None else
                               "ReLU/pooling routes differing: "
                               + (', '.join(misrouted) or 'within tolerance')))
        t = dict(theirs[0]) if theirs else None
        if status == 'ok' and t and t['status'] == 'ok':
            ours_t, their_t = _timed_pair(timer, fn, theirs[2], theirs[1][what], args, n)
            row.update(ours_t)
            t.update(their_t, vendor_time_over_ours=their_t['time_s'] / ours_t['time_s'])
        elif status == 'ok':
            row.update(timed(timer, fn, args, n))
        if 'time_s' in row:
            row['gflops'] = row['flops'] / row['time_s'] / 1e9
        if t:
            row['torch'] = t
        report.append(row)
    if getattr(args, 'layers', False) and status == 'ok':
        subjects = [(our_inference_by_layer(net, x), timer)]
        if theirs and theirs[0]['status'] == 'ok':
            subjects.append((theirs[1]['inference_by_layer'], theirs[2]))
        medians = layer_times(subjects, args)
        report[0]['layers'] = [
            dict({'layer': layer, 'time_s': s},
                 **({'torch_time_s': medians[1].get(layer)} if len(medians) > 1 else {}))
            for layer, s in medians[0].items()]
    return report


def with_floor(rows, peaks):
    """Each timed network row with its arithmetic floor: 'floor_s', its FLOPs at the
    measured FP32 peak (a training step at batch 256: 1.06 TFLOP, about 16 ms on an
    H200), and 'time_over_floor', how many floors the run took (the issue asks for the
    step time as a fraction of that floor). Returns rows."""
    peak = peaks.get('fp32_GFLOPs')
    for row in rows:
        if peak and 'time_s' in row:
            row['floor_s'] = row['flops'] / (peak * 1e9)
            row['time_over_floor'] = row['time_s'] / row['floor_s']
    return rows


def _timed_pair(timer_a, fn_a, timer_b, fn_b, args, images):
    """Time two subjects alternately, run by run, so that a machine whose load drifts
    (a shared CPU) weighs on both alike. Returns two timed-style dicts."""
    for _ in range(args.warmup):
        fn_a()
        fn_b()
    times_a, times_b = [], []
    for _ in range(args.repeats):
        times_a += timer_a.measure(fn_a, 0, 1)
        times_b += timer_b.measure(fn_b, 0, 1)
    return summary(times_a, images), summary(times_b, images)


def _torch_network(torch, device, net, params, x_host, labels_host, want):
    """PyTorch running the identical network: (info, {what: fn}, timer).

    info holds its name, and its status and error against the reference scores `want`
    of the check images; the functions mirror bench_network's plan.
    """
    dev = 'cuda' if device.name == 'cuda' else 'cpu'
    model = torch_caffenet(torch, net.spec, params, dev)
    opt = _torch_sgd(torch, model)
    F = torch.nn.functional
    x = torch.from_numpy(x_host).to(dev)
    y = torch.from_numpy(labels_host.astype(np.int64)).to(dev)
    model.eval()
    with torch.no_grad():
        err = max_rel_error(model(x[check_rows(len(x_host))]).cpu().numpy(), want)
    info = {'name': f"PyTorch {torch.__version__} {'CUDA' if dev == 'cuda' else 'CPU'}",
            'status': 'ok' if err <= TOLERANCE else 'WRONG', 'max_rel_error': err}

    def infer(xb):
        model.eval()
        with torch.no_grad():
            return torch.softmax(model(xb), 1).cpu()  # like predict: probabilities on the host

    def train_step():
        model.train()
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(model(x), y).backward()
        opt.step()

    def infer_by_layer(clock):   # for --layers: infer(x), each module through the clock
        model.eval()
        with torch.no_grad():
            h = x
            for name, module in model.named_children():
                h = clock(torch_layer_owner(name, net.spec), functools.partial(module, h))
            clock('softmax', functools.partial(torch.softmax, h, 1))

    fns = {'inference': lambda: infer(x), 'training_step': train_step,
           'latency': lambda: infer(x[:1]), 'inference_by_layer': infer_by_layer}
    return info, fns, torch_timer(torch, dev == 'cuda')


class _ClockedOps:
    """A network's ops with every forward op (and the softmax) run through
    clock(layer, fn): the op's `layer=` name, else the op's own name."""

    def __init__(self, ops, clock):
        self._ops, self._clock = ops, clock

    def __getattr__(self, name):
        fn = getattr(self._ops, name)
        if not (name.endswith('_forward') or name == 'softmax'):
            return fn
        return lambda *a, **k: self._clock(k.get('layer', name), lambda: fn(*a, **k))


def our_inference_by_layer(net, x):
    """net.predict(x) with each layer's op clocked (see layer_times)."""
    def run(clock):
        real = net.ops
        net.ops = _ClockedOps(real, clock)
        try:
            net.predict(x)
        finally:
            net.ops = real
    return run


def layer_times(subjects, args):
    """Each layer's median seconds inside whole inferences (--layers), for every subject
    (run, timer): run(clock) makes one inference, passing each layer's work to
    clock(layer, fn), which times fn alone (timer.time_once: the GPU synchronised around
    it) and returns its result. The caches are flushed before each inference (the timer's
    flush), not between its layers: each layer finds what the one before left, as in a
    real run. A layer clocked several times in one inference (PyTorch's convolution,
    then its ReLU) counts their sum. Subjects alternate run by run, as in _timed_pair.
    Returns one {layer: median seconds} per subject, layers in the order they ran."""
    times = [{} for _ in subjects]
    for repeat in range(args.warmup + args.repeats):
        for (run, timer), subject_times in zip(subjects, times):
            this_run = {}
            timer.flush()

            def clock(layer, fn):
                result = []
                seconds = timer.time_once(lambda: result.append(fn()))
                this_run[layer] = this_run.get(layer, 0.0) + seconds
                return result[0]
            run(clock)
            if repeat >= args.warmup:
                for layer, seconds in this_run.items():
                    subject_times.setdefault(layer, []).append(seconds)
    return [{layer: statistics.median(s) for layer, s in t.items()} for t in times]
