// The core's own thread pool (no OpenMP: a second OpenMP runtime loaded beside
// another library's is a classic source of crashes; see docs/architecture.md).
//
// `parallel_for` may be called from many threads at once and from inside a
// task: the caller always works on its own job, so progress never depends on
// a free worker and nothing can deadlock.
#pragma once

#include <cstddef>
#include <functional>

namespace flatcoat {

/// Number of threads a parallel_for may use (the caller included). Default: all cores.
size_t num_threads();
/// Sets it; 0 restores the default. Threads are started lazily and kept.
void set_num_threads(size_t n);
/// Cores reported by the system.
size_t hardware_threads();

/// Runs body(task, slot) for every task in [0, n_tasks). `slot` < max_slots
/// identifies the thread running the task within this call (for per-thread
/// scratch space); max_slots is at most num_threads(). Exceptions thrown by a
/// task are rethrown in the caller once every started task has finished.
void parallel_for(size_t n_tasks, size_t max_slots, const std::function<void(size_t, size_t)>& body);

}  // namespace flatcoat
