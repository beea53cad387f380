"""Hand-written CUDA C kernels for CaffeNet, run through CuPy on a GPU or the CPU emulator."""
