"""CaffeNet in NumPy, exact to Caffe, plus the device layer that runs it on CUDA kernels.

Importing `nn` before NumPy also sets OPENBLAS_THREAD_TIMEOUT=4 (unless it is set
already), so NumPy's OpenBLAS threads sleep as soon as a matrix product ends. By default
they spin for about 2^28 cycles (a tenth of a second) waiting for the next product, and
on a machine with few cores that spinning takes the cores from the NumPy work between the
products (pooling, col2im, the SGD update, all split over threads by nn/threads.py).
Measured on 2 cores, a batch-16 training step: 650 ms with the default, 595 ms with 4
(medians of 3). OpenBLAS reads the variable when NumPy loads it, so this only takes
effect when `nn` is imported first: train.py, predict.py and bench.py do so; elsewhere
set the variable in the environment.
"""
import os
import sys

if "numpy" not in sys.modules:
    os.environ.setdefault("OPENBLAS_THREAD_TIMEOUT", "4")
