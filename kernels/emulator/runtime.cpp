// kernels/emulator/runtime.cpp -- runs a CUDA grid on one CPU thread.
//
// Blocks run one after another, in forward, reverse or seeded-random order of their linear
// index (a GPU runs them in any order, so a kernel whose blocks depend on each other's
// writes gives different results). The threads of a block are fibers (each with its own
// 64 KiB stack and a guard page) that run one at a time and switch only inside
// __syncthreads(): the scheduler runs every live thread up to its next barrier (one
// "round"), checks that all of them stopped at the same barrier, then starts the next round.
// The order of threads within a round is forward, reverse or seeded-random, so kernels that
// forget a barrier give different results under different orders. Every array argument is
// a guarded copy (an access past its end faults), and while a block runs the writable ones
// are read-only until it writes them, so that an element changed by two blocks is caught
// ("Races between blocks" below).
//
// Errors (failed device assert, divergent barrier, invalid memory access, race between
// blocks) never abort the process: the runtime jumps back to the scheduler and emu_launch()
// returns an error message that Python raises as KernelLaunchError.
//
// Context switch: a few lines of x86-64 assembly (about 20 ns per switch); elsewhere, or when
// built with -DEMU_USE_UCONTEXT, the portable but slower ucontext.
#include <csetjmp>
#include <csignal>
#include <cstdarg>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <sys/mman.h>
#include <unistd.h>

#if !defined(__x86_64__) && !defined(EMU_USE_UCONTEXT)
#define EMU_USE_UCONTEXT 1
#endif
#ifdef EMU_USE_UCONTEXT
#include <ucontext.h>
#endif

#define EMU_API extern "C" __attribute__((visibility("default")))

struct uint3 { unsigned int x, y, z; };
struct dim3 { unsigned int x, y, z; };

// The built-in variables the kernels read (declared in shim.h). Hidden visibility: each
// kernel library has its own copy.
extern "C" {
uint3 threadIdx;
uint3 blockIdx;
dim3 blockDim;
dim3 gridDim;
}

// The section that holds all static __shared__ variables of this library; the anchor makes
// sure it exists even when a kernel file has none.
__attribute__((used, section("emu_shared"))) static char emu_shared_anchor[1];
extern "C" char __start_emu_shared[];
extern "C" char __stop_emu_shared[];

namespace {

const size_t kStackSize = 64 * 1024;
const int kMaxThreads = 1024;

enum State { RUNNING, AT_BARRIER, DONE };

struct Fiber {
    char* stack_base;  // lowest address of the mapping; the first page is the guard
#ifdef EMU_USE_UCONTEXT
    ucontext_t ctx;
#else
    void* sp;  // saved stack pointer while switched out
#endif
    State state;
    const char* barrier_file;  // where the thread waits (valid when AT_BARRIER)
    int barrier_line;
    uint3 tid;
};

Fiber g_fibers[kMaxThreads];
int g_num_stacks = 0;  // stacks mapped so far (kept for the life of the process)
Fiber* g_current = nullptr;
size_t g_page = 4096;

#ifdef EMU_USE_UCONTEXT
ucontext_t g_main_ctx;
#else
void* g_main_sp = nullptr;
#endif

// What the running launch is doing.
void (*g_entry)(void**) = nullptr;
void** g_args = nullptr;
const char* g_kernel = "";
// Dynamic shared memory: the launch's bytes (rounded up to 16) end right at a PROT_NONE
// guard page, so reading or writing past `shared_mem` faults (reported like any invalid
// access) instead of touching left-overs of an earlier, larger launch.
unsigned char* g_dyn_shared = nullptr;
size_t g_dyn_shared_size = 0;      // bytes poisoned at each block start (16-byte rounded)
unsigned char* g_dyn_map = nullptr;  // the mapping: g_dyn_capacity bytes, then the guard
size_t g_dyn_capacity = 0;

// Error reporting: the message goes to g_err, then control returns to the scheduler.
char g_err[2048];
bool g_failed = false;
sigjmp_buf g_fault_jmp;
volatile sig_atomic_t g_in_kernel = 0;

}  // namespace

// ---------------------------------------------------------------------------------------
// Context switch.
#ifndef EMU_USE_UCONTEXT
// void emu_swap(void** save_sp, void* load_sp): push the callee-saved registers, save the
// stack pointer, load the other one, pop its registers and return into it.
extern "C" void emu_swap(void** save_sp, void* load_sp);
__asm__(
    ".text\n"
    ".p2align 4\n"
    ".type emu_swap, @function\n"
    "emu_swap:\n"
    "    pushq %rbp\n"
    "    pushq %rbx\n"
    "    pushq %r12\n"
    "    pushq %r13\n"
    "    pushq %r14\n"
    "    pushq %r15\n"
    "    movq %rsp, (%rdi)\n"
    "    movq %rsi, %rsp\n"
    "    popq %r15\n"
    "    popq %r14\n"
    "    popq %r13\n"
    "    popq %r12\n"
    "    popq %rbx\n"
    "    popq %rbp\n"
    "    ret\n"
    ".size emu_swap, .-emu_swap\n");
#endif

static void switch_to_scheduler() {
#ifdef EMU_USE_UCONTEXT
    swapcontext(&g_current->ctx, &g_main_ctx);
#else
    emu_swap(&g_current->sp, g_main_sp);
#endif
}

static void switch_to_fiber(Fiber* f) {
    g_current = f;
    threadIdx = f->tid;
#ifdef EMU_USE_UCONTEXT
    swapcontext(&g_main_ctx, &f->ctx);
#else
    emu_swap(&g_main_sp, f->sp);
#endif
}

// First code a fiber runs: the kernel, then "done" forever.
static void fiber_main() {
    g_entry(g_args);
    g_current->state = DONE;
    for (;;) switch_to_scheduler();
}

// Make fiber f start at fiber_main on its next switch.
static void reset_fiber(Fiber* f) {
    f->state = RUNNING;
    f->barrier_file = nullptr;
    f->barrier_line = 0;
    char* top = f->stack_base + g_page + kStackSize;
#ifdef EMU_USE_UCONTEXT
    getcontext(&f->ctx);
    f->ctx.uc_stack.ss_sp = f->stack_base + g_page;
    f->ctx.uc_stack.ss_size = kStackSize;
    f->ctx.uc_link = nullptr;
    makecontext(&f->ctx, fiber_main, 0);
#else
    // Stack as emu_swap expects it: six callee-saved registers, then the return address.
    // After `ret` the stack pointer is 8 mod 16, as at the entry of any called function.
    void** sp = reinterpret_cast<void**>(top);  // top is page aligned
    *--sp = nullptr;                            // fake return address of fiber_main
    *--sp = reinterpret_cast<void*>(&fiber_main);
    for (int i = 0; i < 6; i++) *--sp = nullptr;
    f->sp = sp;
#endif
}

static void fail(const char* fmt, ...) __attribute__((format(printf, 1, 2)));
static void fail(const char* fmt, ...) {
    if (g_failed) return;  // keep the first error
    g_failed = true;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(g_err, sizeof(g_err), fmt, ap);
    va_end(ap);
}

// ---------------------------------------------------------------------------------------
// Called from kernel code (see shim.h).
extern "C" void emu_syncthreads(const char* file, int line) {
    Fiber* f = g_current;
    f->state = AT_BARRIER;
    f->barrier_file = file;
    f->barrier_line = line;
    switch_to_scheduler();
}

extern "C" void* emu_dynamic_shared(void) { return g_dyn_shared; }

extern "C" void emu_assert_fail(const char* expr, const char* file, int line, const char* func) {
    fail("device assert `%s` failed in kernel %s at %s:%d (in %s), block (%u,%u,%u), "
         "thread (%u,%u,%u)",
         expr, g_kernel, file, line, func, blockIdx.x, blockIdx.y, blockIdx.z,
         g_current->tid.x, g_current->tid.y, g_current->tid.z);
    // Never resume this thread: the scheduler sees g_failed and abandons the launch.
    for (;;) switch_to_scheduler();
}

// ---------------------------------------------------------------------------------------
// Guarded global memory. Python copies each array argument of a launch into a mapping
// [guard page][data pages][guard page] (emu_guarded_alloc), its last byte at most 15 bytes
// before the second guard page (the start keeps the array's alignment modulo 16, for
// float4 loads), so that reading or writing past an array's end faults and is reported
// naming the argument. On a GPU such a read usually returns a neighbour's bytes silently.
// The bytes around the array inside the data pages (up to 15 after it, the rest of the
// page before it) hold the word 0xFF800001, a signalling NaN (as int, -8388607): a read
// there gives NaN, and a write there is reported after the launch (emu_guarded_check).
// Not 0xFF bytes as in shared memory: arithmetic on that NaN gives it back unchanged, so
// y[n] = y[n] * 2 one past the end would go unseen; a signalling NaN comes back quieted.
static const uint32_t kGuardWord = 0xFF800001u;

// The byte of the guard pattern at address p (the pattern is laid down in aligned words).
static unsigned char guard_byte(const unsigned char* p) {
    return (unsigned char)(kGuardWord >> (8 * ((uintptr_t)p % 4)));
}

struct GlobalGuard {
    unsigned char* map;   // the whole mapping
    size_t map_bytes;
    unsigned char* data;  // where the array starts
    size_t bytes;
    const char* label;    // e.g. "argument 2 'y' (float*)", owned by Python
    // Writes by more than one block (see "Races between blocks"); for writable arrays only.
    unsigned char* pages;  // the data pages, just above the guard page at map; read-only
                           // while a block runs
    size_t n_pages;        // how many (0: a const array, not tracked)
    unsigned char* track;  // one mapping for the four below
    size_t track_bytes;
    unsigned char* saved;  // room for n_pages pages: written[k] as it was when the running
                           // block first wrote it is page k here (so only as many pages of
                           // memory as one block writes are ever touched)
    uint32_t* writer;      // per 4-byte word of the pages: 0, writing block + 1, or kShared
    size_t* written;       // the pages the running block has written (made writable) ...
    size_t n_written;
    unsigned char* dirty;  // ... and per page, whether it is among them
    bool all_writable;     // every page made writable at once (see note_first_write)
};
static const int kMaxGuards = 64;
static GlobalGuard g_guards[kMaxGuards];
static int g_n_guards = 0;

// A fresh mapping of `data_bytes` (whole pages) read-write bytes followed by a PROT_NONE
// guard page, and preceded by one when `leading` (the data then starts a page in);
// nullptr when out of memory. The caller unmaps data_bytes plus the guard pages.
static unsigned char* map_between_guards(size_t data_bytes, bool leading) {
    size_t lead = leading ? g_page : 0;
    void* p = mmap(nullptr, lead + data_bytes + g_page, PROT_READ | PROT_WRITE,
                   MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED) return nullptr;
    unsigned char* map = static_cast<unsigned char*>(p);
    if (leading) mprotect(map, g_page, PROT_NONE);
    mprotect(map + lead + data_bytes, g_page, PROT_NONE);
    return map;
}

// Stacks for the first n fibers, each above a guard page (a stack overflow faults there;
// the guard above the top is never reached). Kept for the life of the process.
static bool map_stacks(int n) {
    for (; g_num_stacks < n; g_num_stacks++) {
        unsigned char* map = map_between_guards(kStackSize, true);
        if (map == nullptr) return false;
        g_fibers[g_num_stacks].stack_base = reinterpret_cast<char*>(map);
    }
    return true;
}

// Lay the guard word over [from, to), both 4-byte aligned.
static void fill_guard_words(unsigned char* from, unsigned char* to) {
    uint32_t* end = reinterpret_cast<uint32_t*>(to);
    for (uint32_t* w = reinterpret_cast<uint32_t*>(from); w < end; ++w) *w = kGuardWord;
}

// The bookkeeping of the race check for guard g (anonymous memory: zero until touched, so
// an array's untouched pages cost nothing); false when out of memory.
static bool map_tracking(GlobalGuard& g) {
    size_t words = g.n_pages * g_page / 4;
    g.track_bytes = g.n_pages * g_page + words * sizeof(uint32_t) + g.n_pages * sizeof(size_t)
                    + g.n_pages;
    void* p = mmap(nullptr, g.track_bytes, PROT_READ | PROT_WRITE,
                   MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED) return false;
    g.track = static_cast<unsigned char*>(p);
    g.saved = g.track;
    g.writer = reinterpret_cast<uint32_t*>(g.track + g.n_pages * g_page);
    g.written = reinterpret_cast<size_t*>(g.writer + words);
    g.dirty = reinterpret_cast<unsigned char*>(g.written + g.n_pages);
    return true;
}

// A guarded copy target of `bytes` bytes whose address is `misalign` modulo 16, for the
// caller to copy the array into; nullptr when out of guards or memory. `writable`: the
// kernel may write it, so its writes are checked for races between blocks. Freed by
// emu_guarded_free_all.
EMU_API void* emu_guarded_alloc(size_t bytes, size_t misalign, const char* label,
                                int writable) {
    g_page = (size_t)sysconf(_SC_PAGESIZE);
    if (g_n_guards == kMaxGuards || misalign >= 16) return nullptr;
    size_t data_pages = (bytes + 16 + g_page - 1) / g_page * g_page;
    size_t map_bytes = data_pages + 2 * g_page;
    unsigned char* map = map_between_guards(data_pages, true);
    if (map == nullptr) return nullptr;
    uintptr_t end = (uintptr_t)(map + g_page + data_pages);   // the trailing guard page
    uintptr_t start = ((end - bytes - misalign) & ~(uintptr_t)15) + misalign;
    // The guard words go around the array only: the array's own bytes are about to be
    // copied in (a few words at its 16-byte-aligned edges are written twice).
    fill_guard_words(map + g_page, (unsigned char*)((start + 15) & ~(uintptr_t)15));
    fill_guard_words((unsigned char*)((start + bytes) & ~(uintptr_t)15), (unsigned char*)end);
    GlobalGuard g = {};
    g.map = map;
    g.map_bytes = map_bytes;
    g.data = (unsigned char*)start;
    g.bytes = bytes;
    g.label = label;
    g.pages = map + g_page;
    g.n_pages = writable ? data_pages / g_page : 0;
    if (writable && !map_tracking(g)) {
        munmap(map, map_bytes);
        return nullptr;
    }
    g_guards[g_n_guards++] = g;
    return (void*)start;
}

// After a launch: 0 when the guard words around every array are intact, else -1 and a
// message naming the first array written outside its bounds.
EMU_API int emu_guarded_check(char* err, size_t err_len) {
    for (int i = 0; i < g_n_guards; i++) {
        const GlobalGuard& g = g_guards[i];
        const unsigned char* lo = g.map + g_page;
        const unsigned char* hi = g.map + g.map_bytes - g_page;
        for (const unsigned char* p = g.data + g.bytes; p < hi; p++)
            if (*p != guard_byte(p)) {
                snprintf(err, err_len, "wrote past the end of the array of %s", g.label);
                return -1;
            }
        for (const unsigned char* p = g.data; p > lo; p--)
            if (p[-1] != guard_byte(p - 1)) {
                snprintf(err, err_len, "wrote before the start of the array of %s",
                         g.label);
                return -1;
            }
    }
    return 0;
}

// Whether n bytes at a and b are equal (a const argument's copy against its original).
EMU_API int emu_same_bytes(const void* a, const void* b, size_t n) {
    return memcmp(a, b, n) == 0;
}

EMU_API void emu_guarded_free_all(void) {
    for (int i = 0; i < g_n_guards; i++) {
        munmap(g_guards[i].map, g_guards[i].map_bytes);
        if (g_guards[i].track) munmap(g_guards[i].track, g_guards[i].track_bytes);
    }
    g_n_guards = 0;
}

// ---------------------------------------------------------------------------------------
// Races between blocks. A GPU runs a grid's blocks at the same time, so two blocks that
// write one element of an array (y[i] = ... or y[i] += ... in both) race: what is left
// depends on which writes last, and a += loses one of the two. Here blocks run one after
// another and such a kernel gives the right answer, so the runtime checks for it: while a
// block runs, the writable arrays' pages are read-only. The block's first write to a page
// faults; on_fault calls note_first_write, which saves the page and makes it writable, and
// the write is retried. When the block ends, check_block_writes compares each page it
// wrote with the saved copy: every 4-byte element that changed records the block as its
// writer, and an element another block already wrote is a race. Elements changed by
// atomics are shared (emu_atomic_note) and never a race. A write of the value an element
// already holds is not seen: it leaves the same result in any order.
static const uint32_t kShared = 0xFFFFFFFFu;
static const uint64_t kMaxBlocks = kShared - 1;   // so that block + 1 < kShared

static GlobalGuard* tracked_guard_of(const unsigned char* addr) {
    for (int i = 0; i < g_n_guards; i++) {
        GlobalGuard& g = g_guards[i];
        if (g.n_pages && addr >= g.pages && addr < g.pages + g.n_pages * g_page) return &g;
    }
    return nullptr;
}

static void protect_tracked_pages(int prot) {
    for (int i = 0; i < g_n_guards; i++)
        if (g_guards[i].n_pages) mprotect(g_guards[i].pages, g_guards[i].n_pages * g_page, prot);
}

// Save page `page` of g as the running block found it, and list it as written.
static void save_page(GlobalGuard& g, size_t page) {
    if (g.dirty[page]) return;
    memcpy(g.saved + g.n_written * g_page, g.pages + page * g_page, g_page);
    g.dirty[page] = 1;
    g.written[g.n_written++] = page;
}

// From on_fault: a write to a tracked page the running block has not written yet. Returns
// false when the fault is something else (reported as an invalid memory access).
static bool note_first_write(const unsigned char* addr) {
    GlobalGuard* g = tracked_guard_of(addr);
    if (g == nullptr) return false;
    size_t page = (size_t)(addr - g->pages) / g_page;
    if (g->dirty[page]) return false;
    if (mprotect(g->pages + page * g_page, g_page, PROT_READ | PROT_WRITE) == 0) {
        save_page(*g, page);
        return true;
    }
    // Out of memory mappings (ENOMEM): a writable page between read-only ones is a mapping
    // of its own, and a process has at most vm.max_map_count (65530) of them, so a block
    // that writes pages far apart (a column of a big matrix) gets there. Then the whole
    // array becomes writable at once (one mapping) and every page of it is saved now.
    if (mprotect(g->pages, g->n_pages * g_page, PROT_READ | PROT_WRITE) != 0) return false;
    for (size_t k = 0; k < g->n_pages; k++) save_page(*g, k);
    g->all_writable = true;
    return true;
}

// Called by the shim's atomics: the element at p is updated by atomics, shared by design.
extern "C" void emu_atomic_note(const void* p) {
    const unsigned char* addr = static_cast<const unsigned char*>(p);
    GlobalGuard* g = tracked_guard_of(addr);
    if (g) g->writer[(addr - g->pages) / 4] = kShared;
}

static void block_of(uint32_t linear, unsigned int out[3]) {
    out[0] = linear % gridDim.x;
    out[1] = linear / gridDim.x % gridDim.y;
    out[2] = (unsigned int)(linear / ((uint64_t)gridDim.x * gridDim.y));
}

// After block `block` (its linear index): record the writer of every element it changed,
// fail on an element another block wrote, and make the pages read-only again.
static void check_block_writes(uint32_t block) {
    for (int i = 0; i < g_n_guards && !g_failed; i++) {
        GlobalGuard& g = g_guards[i];
        for (size_t k = 0; k < g.n_written && !g_failed; k++) {
            size_t page = g.written[k];
            const uint32_t* now = reinterpret_cast<const uint32_t*>(g.pages + page * g_page);
            const uint32_t* was = reinterpret_cast<const uint32_t*>(g.saved + k * g_page);
            for (size_t w = 0; w < g_page / 4 && !g_failed; w++) {
                const unsigned char* addr = reinterpret_cast<const unsigned char*>(now + w);
                // (a write to the padding around the array is emu_guarded_check's to report)
                if (now[w] == was[w] || addr < g.data || addr >= g.data + g.bytes) continue;
                uint32_t& writer = g.writer[page * g_page / 4 + w];
                if (writer == 0) {
                    writer = block + 1;
                } else if (writer != kShared) {   // (each page is compared once a block)
                    unsigned int a[3], b[3];
                    block_of(writer - 1, a);
                    block_of(block, b);
                    fail("race between blocks in kernel %s: blocks (%u,%u,%u) and (%u,%u,%u) "
                         "both wrote element %lld of the array of %s (on a GPU they run at "
                         "the same time, and what is left depends on which writes last: "
                         "give each element one writing block, or use an atomic)",
                         g_kernel, a[0], a[1], a[2], b[0], b[1], b[2],
                         (long long)((addr - g.data) / 4), g.label);
                }
            }
            // (one page read-only again can split a mapping in three: then all at once)
            if (!g.all_writable && mprotect(g.pages + page * g_page, g_page, PROT_READ) != 0)
                g.all_writable = true;
            g.dirty[page] = 0;
        }
        if (g.all_writable && !g_failed) {
            if (mprotect(g.pages, g.n_pages * g_page, PROT_READ) != 0)
                fail("kernel %s: the race check cannot make the array of %s read-only again",
                     g_kernel, g.label);
            g.all_writable = false;
        }
        g.n_written = 0;
    }
}

// ", past the end of argument ..." when addr is in a guard page, else "".
static void describe_guard(const unsigned char* addr, char* out, size_t len) {
    out[0] = '\0';
    // The running fiber's stack guard page, or (checked last: an array's guard page may
    // lie just below a stack) further below for a very large frame.
    uintptr_t a = (uintptr_t)addr, stack = g_current ? (uintptr_t)g_current->stack_base : 0;
    const char* overflow = ", below the thread's stack: its local variables need more than "
                           "the emulator's 64 KiB per thread (kStackSize in runtime.cpp)";
    static_assert(kStackSize == 64 * 1024, "the message above names the stack size");
    if (stack && a >= stack && a < stack + g_page) {
        snprintf(out, len, "%s", overflow);
        return;
    }
    const unsigned char* guard = g_dyn_map ? g_dyn_map + g_dyn_capacity : nullptr;
    if (guard && addr >= guard && addr < guard + g_page) {
        snprintf(out, len, ", past the end of the launch's shared_mem bytes");
        return;
    }
    for (int i = 0; i < g_n_guards; i++) {
        const GlobalGuard& g = g_guards[i];
        if (addr >= g.data + g.bytes && addr < g.map + g.map_bytes) {
            snprintf(out, len, ", %zu bytes past the end of the array of %s",
                     (size_t)(addr - (g.data + g.bytes)), g.label);
            return;
        }
        if (addr >= g.map && addr < g.data) {
            snprintf(out, len, ", %zu bytes before the start of the array of %s",
                     (size_t)(g.data - addr), g.label);
            return;
        }
    }
    if (stack && a + kStackSize >= stack && a < stack) snprintf(out, len, "%s", overflow);
}

// ---------------------------------------------------------------------------------------
// Invalid memory access (including a stack overflow into a guard page) while a kernel runs:
// jump back to emu_launch instead of killing the Python process.
static void on_fault(int sig, siginfo_t* info, void*) {
    if (!g_in_kernel) {  // not ours: fall back to the default action
        signal(sig, SIG_DFL);
        raise(sig);
        return;
    }
    if (sig == SIGSEGV && info->si_code == SEGV_ACCERR &&
        note_first_write(static_cast<const unsigned char*>(info->si_addr)))
        return;  // the page is writable now: the write is retried
    char where[256];
    if (sig == SIGSEGV && info->si_code == SI_KERNEL)
        // x86-64 reports a general-protection fault without an address. In a kernel that
        // is almost always a float4/int4 access at an address that is not a multiple of
        // 16: the shim's 16-byte aligned vector types compile to aligned SSE moves.
        snprintf(where, sizeof(where), ": a general-protection fault, most likely a misaligned "
                 "vector access (a float4 or int4 load or store at an address that is not a "
                 "multiple of 16 bytes; a GPU reports 'misaligned address'), else a pointer "
                 "far outside any array");
    else
        describe_guard(static_cast<const unsigned char*>(info->si_addr), where, sizeof(where));
    fail("invalid memory access (%s at address %p%s) in kernel %s, block (%u,%u,%u), "
         "thread (%u,%u,%u)",
         sig == SIGSEGV ? "SIGSEGV" : "SIGBUS", info->si_addr, where, g_kernel,
         blockIdx.x, blockIdx.y, blockIdx.z, threadIdx.x, threadIdx.y, threadIdx.z);
    siglongjmp(g_fault_jmp, 1);
}

// Small deterministic generator for the random thread order (splitmix64).
static uint64_t next_random(uint64_t* state) {
    uint64_t z = (*state += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

// Shuffle a[0..n) in place (Fisher-Yates) with the seeded generator.
template <typename T>
static void shuffle(T* a, uint64_t n, uint64_t* rng) {
    for (uint64_t i = n; i > 1; i--) {   // a[i - 1] swaps with a random one of a[0..i)
        uint64_t j = next_random(rng) % i;
        T t = a[i - 1];
        a[i - 1] = a[j];
        a[j] = t;
    }
}

// order[0..n) = the thread order of a round: forward (mode 0), reverse (1), random (2).
static void make_order(int* order, int n, int mode, uint64_t* rng) {
    for (int i = 0; i < n; i++) order[i] = mode == 1 ? n - 1 - i : i;
    if (mode == 2) shuffle(order, (uint64_t)n, rng);
}

// Place `bytes` of dynamic shared memory just below the guard page (see g_dyn_shared).
static bool place_dynamic_shared(size_t bytes) {
    size_t rounded = (bytes + 15) / 16 * 16;  // keeps the buffer 16-byte aligned (float4)
    if (rounded > g_dyn_capacity || g_dyn_map == nullptr) {
        if (g_dyn_map) munmap(g_dyn_map, g_dyn_capacity + g_page);
        size_t capacity = (rounded + g_page - 1) / g_page * g_page;
        if (capacity == 0) capacity = g_page;
        g_dyn_map = map_between_guards(capacity, false);
        g_dyn_capacity = g_dyn_map ? capacity : 0;
        if (g_dyn_map == nullptr) return false;
    }
    g_dyn_shared = g_dyn_map + g_dyn_capacity - rounded;
    g_dyn_shared_size = rounded;
    return true;
}

static void poison_shared() {
    memset(__start_emu_shared, 0xFF, (size_t)(__stop_emu_shared - __start_emu_shared));
    memset(g_dyn_shared, 0xFF, g_dyn_shared_size);
}

// Check that the threads stopped after a round all wait at the same barrier, or all ended.
// Returns true when the block is finished.
static bool check_round(int n, bool* finished) {
    int first_wait = -1, first_done = -1;
    for (int i = 0; i < n; i++) {
        Fiber* f = &g_fibers[i];
        if (f->state == DONE) {
            if (first_done < 0) first_done = i;
        } else if (first_wait < 0) {
            first_wait = i;
        } else {
            Fiber* w = &g_fibers[first_wait];
            if (f->barrier_line != w->barrier_line || strcmp(f->barrier_file, w->barrier_file)) {
                fail("divergent barrier in kernel %s, block (%u,%u,%u): thread (%u,%u,%u) waits "
                     "at __syncthreads() %s:%d but thread (%u,%u,%u) waits at %s:%d",
                     g_kernel, blockIdx.x, blockIdx.y, blockIdx.z, w->tid.x, w->tid.y, w->tid.z,
                     w->barrier_file, w->barrier_line, f->tid.x, f->tid.y, f->tid.z,
                     f->barrier_file, f->barrier_line);
                return false;
            }
        }
    }
    if (first_wait >= 0 && first_done >= 0) {
        Fiber* w = &g_fibers[first_wait];
        Fiber* d = &g_fibers[first_done];
        fail("divergent barrier in kernel %s, block (%u,%u,%u): thread (%u,%u,%u) waits at "
             "__syncthreads() %s:%d but thread (%u,%u,%u) has already returned (every thread "
             "of a block must reach every barrier)",
             g_kernel, blockIdx.x, blockIdx.y, blockIdx.z, w->tid.x, w->tid.y, w->tid.z,
             w->barrier_file, w->barrier_line, d->tid.x, d->tid.y, d->tid.z);
        return false;
    }
    *finished = first_wait < 0;
    return true;
}

static void run_block(int n, const int* order_in, int* order, int mode, uint64_t* rng) {
    unsigned int bx = blockDim.x, by = blockDim.y;
    for (int i = 0; i < n; i++) {
        Fiber* f = &g_fibers[i];
        f->tid = {i % bx, (i / bx) % by, i / (bx * by)};
        reset_fiber(f);
    }
    poison_shared();
    if (mode == 2) make_order(order, n, mode, rng);
    else memcpy(order, order_in, sizeof(int) * n);
    for (;;) {
        for (int k = 0; k < n; k++) {
            Fiber* f = &g_fibers[order[k]];
            f->state = RUNNING;
            switch_to_fiber(f);
            if (g_failed) return;
        }
        bool finished = false;
        if (!check_round(n, &finished)) return;
        if (finished) return;
        if (mode == 2) make_order(order, n, mode, rng);  // a new order for every round
    }
}

// Run grid x block threads of `entry` (an emu_entry_<kernel> function) with `args`.
// order: 0 forward, 1 reverse, 2 random (seeded). Returns 0, or -1 with a message in err.
EMU_API int emu_launch(void (*entry)(void**), void** args, const char* kernel,
                       const unsigned int* grid, const unsigned int* block, size_t dyn_shared,
                       int order_mode, uint64_t seed, char* err, size_t err_len) {
    g_page = (size_t)sysconf(_SC_PAGESIZE);
    int n = (int)(block[0] * block[1] * block[2]);
    g_failed = false;
    g_err[0] = '\0';
    if (n < 1 || n > kMaxThreads) {
        snprintf(err, err_len, "kernel %s: %d threads per block (1..%d allowed)", kernel, n,
                 kMaxThreads);
        return -1;
    }
    if (!map_stacks(n)) {
        snprintf(err, err_len, "kernel %s: cannot allocate fiber stacks", kernel);
        return -1;
    }
    if (!place_dynamic_shared(dyn_shared)) {
        snprintf(err, err_len, "kernel %s: cannot allocate %zu bytes of dynamic shared memory",
                 kernel, dyn_shared);
        return -1;
    }
    g_entry = entry;
    g_args = args;
    g_kernel = kernel;
    gridDim = {grid[0], grid[1], grid[2]};
    blockDim = {block[0], block[1], block[2]};

    static int order_fixed[kMaxThreads], order[kMaxThreads];
    make_order(order_fixed, n, order_mode == 2 ? 0 : order_mode, nullptr);
    uint64_t rng = seed;
    // Blocks run in the same kind of order as threads: a GPU promises no order among them.
    uint64_t n_blocks = (uint64_t)grid[0] * grid[1] * grid[2];
    if (n_blocks > kMaxBlocks) {
        snprintf(err, err_len, "kernel %s: a grid of %llu blocks (the emulator runs at most "
                 "%llu)", kernel, (unsigned long long)n_blocks, (unsigned long long)kMaxBlocks);
        return -1;
    }
    uint32_t* block_order = nullptr;   // the random order; forward and reverse need none
    if (order_mode == 2 && n_blocks > 1) {
        block_order = static_cast<uint32_t*>(malloc(sizeof(uint32_t) * n_blocks));
        if (block_order == nullptr) {
            snprintf(err, err_len, "kernel %s: cannot allocate the order of %llu blocks",
                     kernel, (unsigned long long)n_blocks);
            return -1;
        }
        for (uint32_t b = 0; b < n_blocks; b++) block_order[b] = b;
        shuffle(block_order, n_blocks, &rng);
    }

    // Catch invalid memory accesses on an alternate signal stack, restoring the previous
    // handlers (e.g. Python's faulthandler) afterwards.
    static char alt_stack[64 * 1024];
    stack_t ss = {}, old_ss;
    ss.ss_sp = alt_stack;
    ss.ss_size = sizeof(alt_stack);
    sigaltstack(&ss, &old_ss);
    struct sigaction sa = {}, old_segv, old_bus;
    sa.sa_sigaction = on_fault;
    sa.sa_flags = SA_SIGINFO | SA_ONSTACK;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGSEGV, &sa, &old_segv);
    sigaction(SIGBUS, &sa, &old_bus);

    protect_tracked_pages(PROT_READ);
    if (sigsetjmp(g_fault_jmp, 1) == 0) {
        g_in_kernel = 1;
        for (uint32_t k = 0; k < n_blocks && !g_failed; k++) {
            uint32_t b = block_order ? block_order[k]
                                     : order_mode == 1 ? (uint32_t)(n_blocks - 1 - k) : k;
            unsigned int index[3];
            block_of(b, index);
            blockIdx = {index[0], index[1], index[2]};
            run_block(n, order_fixed, order, order_mode, &rng);
            if (!g_failed) check_block_writes(b);
        }
    }
    g_in_kernel = 0;
    protect_tracked_pages(PROT_READ | PROT_WRITE);
    free(block_order);
    sigaction(SIGSEGV, &old_segv, nullptr);
    sigaction(SIGBUS, &old_bus, nullptr);
    sigaltstack(&old_ss, nullptr);

    if (g_failed) {
        snprintf(err, err_len, "%s", g_err);
        return -1;
    }
    return 0;
}

// Size in bytes of the static shared memory section (all kernels of the file together).
EMU_API size_t emu_static_shared_bytes(void) {
    return (size_t)(__stop_emu_shared - __start_emu_shared) - sizeof(emu_shared_anchor);
}
