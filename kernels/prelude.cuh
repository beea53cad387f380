// kernels/prelude.cuh -- put before every kernels/*.cu file by the loader (kernels/runner.py),
// on the GPU (NVRTC through CuPy) and in the CPU emulator (g++), followed by a
// `#line 1 "<file>"` directive so that messages point into the .cu file itself.
// Kernel files have no #include, so everything they share lives here.

// Dynamic shared memory (the `shared_mem=` bytes of a launch). Use it as a statement at the
// top of a kernel body:   EXTERN_SHARED(float, tile);   ...   tile[threadIdx.x] = ...;
// `name` becomes a `type*` to the start of the block's dynamic shared memory. One untyped
// byte array backs it so that several kernels in one file may use different types.
#ifdef CAFFENET_EMU
// The emulator hands out a per-block buffer, filled with 0xFF bytes at each block start.
#define EXTERN_SHARED(type, name) type* name = reinterpret_cast<type*>(emu_dynamic_shared())
#else
#define EXTERN_SHARED(type, name)                                   \
    extern __shared__ __align__(16) unsigned char prelude_dyn_smem_[];  \
    type* name = reinterpret_cast<type*>(prelude_dyn_smem_)
#endif

// <float.h> constants (NVRTC has no system headers).
#ifndef FLT_MAX
#define FLT_MAX 3.402823466e+38F
#endif
#ifndef FLT_MIN
#define FLT_MIN 1.175494351e-38F
#endif
#ifndef INT_MAX
#define INT_MAX 2147483647
#endif
#ifndef INFINITY
#define INFINITY __int_as_float(0x7f800000)
#endif
#ifndef NAN
#define NAN __int_as_float(0x7fffffff)
#endif
