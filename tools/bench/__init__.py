"""The benchmark behind `python bench.py` (the command line stays there), one job a module:

    timers.py    the CPU and GPU timers (caches flushed before every run), the statistics
                 of their runs, and the machine's peaks (copy bandwidth, FP32 matmul)
    cases.py     what is timed: Case, one per operation at a layer's shape, for every
                 layer (_layer_cases) and the SGD update; build_cases; --only (select)
    devices.py   open_device, the array Library, the op sets: subject_ops (timed) and
                 reference_ops (the float64 NumPy truth)
    gate.py      the correctness gate: max_rel_error on the check rows, TOLERANCE
    vendors.py   PyTorch and cuBLAS (CuPy) as the comparison: Vendor, import_torch
    versions.py  --versions: each kept version of a kernel (kernel_versions)
    one_case.py  bench_case: one case checked, then timed (ours, versions, vendor), rates
    network.py   the whole network against PyTorch's identical CaffeNet (bench_network,
                 torch_caffenet), and --layers (layer_times)
    report.py    machine_info, the JSON report (build_report, write_json), the table

Each imports only modules above it in this list (and BenchError from here).
"""


class BenchError(RuntimeError):
    """The benchmark cannot run as asked (no GPU for --device cuda, unknown --only...)."""
