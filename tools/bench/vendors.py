"""The libraries a user would otherwise pick, timed beside ours: PyTorch (CPU, or CUDA
with cuDNN) for every comparable case, cuBLAS through CuPy for the fc layers' products."""
import numpy as np

from tools.bench.cases import PRODUCTS
from tools.bench.devices import Library
from tools.bench.timers import GpuTimer, torch_timer


def _torch_impls(torch):
    """PyTorch's version of each (kind, pass): (prepare(T, layer), run(state)) on tensors.

    The same code runs on PyTorch CPU and CUDA (cuDNN). Dropout and SGD have no exact
    PyTorch twin (PyTorch's masks and momentum formula differ) and are not compared.
    """
    F = torch.nn.functional
    aten = torch.ops.aten

    def conv_args(L):
        p = L.params
        return [p['stride']] * 2, [p['pad']] * 2, p['group']

    def conv_fwd(T, L):
        s, pad, g = conv_args(L)
        return lambda: (F.conv2d(T['x'], T['w'], T['b'], s, pad, 1, g),)

    def conv_bwd(mask):   # output_mask: which of (dx, dw, db) to compute
        def prepare(T, L):
            s, pad, g = conv_args(L)
            return lambda: tuple(o for o in aten.convolution_backward(
                T['dy'], T['x'], T['w'], [T['w'].shape[0]], s, pad, [1, 1], False, [0, 0], g,
                mask) if o is not None)
        return prepare

    def pool_fwd(T, L):
        p = L.params
        return lambda: (F.max_pool2d(T['x'], p['kernel'], p['stride'], p['pad'],
                                     ceil_mode=True, return_indices=True)[0],)

    def pool_bwd(T, L):
        p = L.params
        k, s, pad = [p['kernel']] * 2, [p['stride']] * 2, [p['pad']] * 2
        _, idx = F.max_pool2d(T['x'], k, s, pad, ceil_mode=True, return_indices=True)
        return lambda: (aten.max_pool2d_with_indices_backward(
            T['dy'], T['x'], k, s, pad, [1, 1], True, idx),)

    def lrn(x, L):
        p = L.params
        # PyTorch divides alpha by size, like Caffe: scale = k + alpha/n * sum x^2.
        return F.local_response_norm(x, p['local_size'], p['alpha'], p['beta'], p['k'])

    def autograd_bwd(forward):
        def prepare(T, L):
            x = T['x'].detach().requires_grad_(True)
            y = forward(x, L, T)
            dy = T.get('dy')
            return lambda: torch.autograd.grad(y, x, dy, retain_graph=True)
        return prepare

    return {
        **_matmul_impls(),
        ('fc', 'forward'): lambda T, L: (lambda: (F.linear(T['x'], T['w'], T['b']),)),
        ('conv', 'forward'): conv_fwd,
        ('conv', 'backward_data'): conv_bwd([True, False, False]),
        ('conv', 'backward_weights'): conv_bwd([False, True, True]),
        ('pool', 'forward'): pool_fwd,
        ('pool', 'backward'): pool_bwd,
        ('lrn', 'forward'): lambda T, L: (lambda: (lrn(T['x'], L),)),
        ('lrn', 'backward'): autograd_bwd(lambda x, L, T: lrn(x, L)),
        ('relu', 'forward'): lambda T, L: (lambda: (F.relu(T['x']),)),
        ('relu', 'backward'): lambda T, L: (lambda: (aten.threshold_backward(T['dy'], T['x'], 0),)),
        ('loss', 'forward'): lambda T, L: (lambda: (F.cross_entropy(T['x'], T['labels'].long()),)),
        ('loss', 'backward'): autograd_bwd(
            lambda x, L, T: F.cross_entropy(x, T['labels'].long())),
    }


def _matmul_impls():
    """fc layers and their bare products through any array library's `@` (cuBLAS for
    CuPy): fc forward y = x W^T + b; fc backward dx = dy W, dW = dy^T x, db = sum of dy."""
    impls = {('fc', 'forward'): lambda T, L: (lambda: (T['x'] @ T['w'].T + T['b'],)),
             ('fc', 'backward'): lambda T, L: (
                 lambda: (T['dy'] @ T['w'], T['dy'].T @ T['x'], T['dy'].sum(0)))}
    for pass_, (_, lib_fn, _) in PRODUCTS.items():
        impls[('gemm', pass_)] = lambda T, L, f=lib_fn: (lambda: (f(T),))
    return impls


class Vendor:
    """The library a user would otherwise pick, for the cases it can run."""

    def __init__(self, name, lib, timer, impls):
        self.name, self.lib, self.timer, self.impls = name, lib, timer, impls

    def runner(self, case, layer):
        """prepare(T) -> the timed callable for `case`, or None when not comparable."""
        make = self.impls.get(case.vendor) if case.vendor else None
        if make is None:
            return None
        return lambda T: make(T, layer)


def torch_vendor(torch, device_kind):
    dev = 'cuda' if device_kind == 'cuda' else 'cpu'

    def to_lib(a):
        t = torch.from_numpy(np.ascontiguousarray(a))
        return t.to(dev) if dev == 'cuda' else t

    lib = Library('torch', to_lib, lambda t: t.detach().cpu().numpy() if hasattr(t, 'detach')
                  else np.asarray(t))
    timer = torch_timer(torch, dev == 'cuda')
    what = 'PyTorch CUDA (cuDNN conv)' if dev == 'cuda' else 'PyTorch CPU'
    return Vendor(f'{what} {torch.__version__}', lib, timer, _torch_impls(torch))


def cublas_vendor(cp):
    lib = Library('cupy', cp.asarray, lambda a: cp.asnumpy(a) if hasattr(a, 'device') else np.asarray(a))
    return Vendor(f'cuBLAS (CuPy {cp.__version__} matmul)', lib, GpuTimer('cupy', cp),
                  _matmul_impls())


def import_torch(disabled, device_kind):
    """torch (imported lazily) set up for a fair FP32 comparison, or None with why."""
    if disabled:
        return None, 'disabled with --no-torch'
    try:
        import torch
    except ImportError:
        return None, 'PyTorch is not installed (pip install torch; never a project requirement)'
    except Exception as exc:  # e.g. clashing CUDA libraries: our own figures still count
        return None, f'PyTorch failed to import ({type(exc).__name__}: {exc})'
    if device_kind == 'cuda':
        if not torch.cuda.is_available():
            return None, f'PyTorch {torch.__version__} has no CUDA here'
        torch.backends.cudnn.allow_tf32 = False       # true FP32, like our kernels
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.benchmark = True         # let cuDNN pick its fastest algorithm
    return torch, None
