"""CaffeNet in NumPy, exact to Caffe, plus the device layer that runs it on CUDA kernels."""
