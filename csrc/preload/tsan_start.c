/*
 * tsan_start.c — preloaded next to ThreadSanitizer's runtime by `make tsan` (never installed).
 *
 * lua5.4 is not instrumented, so the runtime is preloaded (LD_PRELOAD) and starts on the first
 * call it intercepts. The processes a spec starts inherit the preload; dash (/bin/sh, behind
 * io.popen and os.execute) calls _setjmp before anything else the runtime intercepts, and the
 * runtime's _setjmp jumps to the real one through a pointer that only its start-up fills in: a
 * call through NULL. Starting the runtime from this library's constructor, as an instrumented
 * program's own start-up code would, fills it in before the program runs.
 */
void __tsan_init(void);

__attribute__((constructor)) static void start_tsan_runtime(void) { __tsan_init(); }
