#include "flatcoat/thread_pool.hpp"

#include <algorithm>           // std::min
#include <atomic>              // std::atomic
#include <condition_variable>  // std::condition_variable
#include <deque>               // std::deque
#include <exception>           // std::exception_ptr
#include <memory>              // std::shared_ptr
#include <mutex>               // std::mutex
#include <thread>              // std::thread
#include <vector>

namespace flatcoat {

namespace {

struct job_t {
    const std::function<void(size_t, size_t)>* body;
    size_t n_tasks;
    size_t max_slots;
    std::atomic<size_t> next_task{0};
    std::atomic<size_t> next_slot{1};  // slot 0 is the caller's
    std::atomic<size_t> active{0};  // threads inside work()
    std::mutex error_mutex;
    std::exception_ptr error;
    std::mutex done_mutex;
    std::condition_variable done;

    // Claims and runs tasks until none is left.
    void work(size_t slot) {
        active.fetch_add(1);
        for (size_t task; (task = next_task.fetch_add(1)) < n_tasks;) {
            try {
                (*body)(task, slot);
            } catch (...) {
                std::lock_guard<std::mutex> lock(error_mutex);
                if (!error) error = std::current_exception();
                next_task.store(n_tasks);  // stop handing out tasks
            }
        }
        if (active.fetch_sub(1) == 1) {
            std::lock_guard<std::mutex> lock(done_mutex);
            done.notify_all();
        }
    }
};

class pool_t {
   public:
    static pool_t& instance() {
        static pool_t* pool = new pool_t();  // never destroyed: workers may outlive static teardown
        return *pool;
    }

    size_t threads() const {
        size_t n = requested_.load();
        return n == 0 ? hardware_threads() : n;
    }
    void set_threads(size_t n) { requested_.store(n); }

    void run(size_t n_tasks, size_t max_slots, const std::function<void(size_t, size_t)>& body) {
        size_t slots = std::min({max_slots, threads(), n_tasks});
        if (slots <= 1) {
            for (size_t task = 0; task < n_tasks; ++task) body(task, 0);
            return;
        }
        auto job = std::make_shared<job_t>();
        job->body = &body;
        job->n_tasks = n_tasks;
        job->max_slots = slots;
        ensure_workers(slots - 1);
        {
            std::lock_guard<std::mutex> lock(mutex_);
            queue_.push_back(job);
        }
        wake_.notify_all();
        job->work(0);
        {
            // Every task is claimed once the caller's own loop ends; workers may
            // still be running theirs. A worker that joins later finds none left
            // and never touches `body` again.
            std::unique_lock<std::mutex> lock(job->done_mutex);
            job->done.wait(lock, [&] { return job->active.load() == 0; });
        }
        {
            std::lock_guard<std::mutex> lock(mutex_);
            for (auto it = queue_.begin(); it != queue_.end(); ++it)
                if (*it == job) {
                    queue_.erase(it);
                    break;
                }
        }
        // Workers that joined but found nothing left hold a shared_ptr only.
        if (job->error) std::rethrow_exception(job->error);
    }

   private:
    void ensure_workers(size_t n) {
        std::lock_guard<std::mutex> lock(mutex_);
        while (workers_.size() < n) {
            workers_.emplace_back([this] { worker_loop(); });
            workers_.back().detach();
        }
    }

    void worker_loop() {
        for (;;) {
            std::shared_ptr<job_t> job;
            size_t slot = 0;
            {
                std::unique_lock<std::mutex> lock(mutex_);
                wake_.wait(lock, [&] {
                    for (auto& candidate : queue_) {
                        if (candidate->next_task.load() >= candidate->n_tasks) continue;
                        size_t s = candidate->next_slot.fetch_add(1);
                        if (s < candidate->max_slots) {
                            job = candidate;
                            slot = s;
                            return true;
                        }
                    }
                    return false;
                });
            }
            job->work(slot);
        }
    }

    std::atomic<size_t> requested_{0};
    std::mutex mutex_;
    std::condition_variable wake_;
    std::deque<std::shared_ptr<job_t>> queue_;
    std::vector<std::thread> workers_;
};

}  // namespace

size_t hardware_threads() {
    unsigned n = std::thread::hardware_concurrency();
    return n == 0 ? 1 : n;
}
size_t num_threads() { return pool_t::instance().threads(); }
void set_num_threads(size_t n) { pool_t::instance().set_threads(n); }

void parallel_for(size_t n_tasks, size_t max_slots, const std::function<void(size_t, size_t)>& body) {
    if (n_tasks == 0) return;
    pool_t::instance().run(n_tasks, max_slots, body);
}

}  // namespace flatcoat
