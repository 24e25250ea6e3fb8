// DataLoader: worker threads decode samples ahead of the consumer (a window of whole batches), results
// land in a ring of slots addressed by their position in the epoch, and next() hands batches back in
// order. Every sample's randomness comes from (seed, epoch, dataset index), so the batches do not depend
// on thread timing or worker count (PyTorch's DataLoader gives the same guarantee per worker count only).
// Workers run Dataset::get, which in graft's datasets does its pixel work in plain C++ and makes one
// tensor with torch::empty, so no intra-op thread pool is started from a worker.
#include <condition_variable>
#include <cstring>
#include <exception>
#include <iostream>
#include <mutex>
#include <numeric>
#include <thread>

#include "graft/data.h"
#include "graft/errors.h"

namespace graft {
namespace {

uint64_t splitmix64(uint64_t x) {
  x += 0x9e3779b97f4a7c15ULL;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ULL;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebULL;
  return x ^ (x >> 31);
}

uint64_t mix_seed(uint64_t seed, int64_t epoch, uint64_t stream) {
  return splitmix64(splitmix64(splitmix64(seed) ^ static_cast<uint64_t>(epoch)) ^ stream);
}

constexpr uint64_t kShuffleStream = ~uint64_t{0};  // never a dataset index

enum class SlotStatus { kPending, kDone, kSkipped, kFailed };

struct Slot {
  SlotStatus status = SlotStatus::kPending;
  Sample sample;
  std::exception_ptr error;
};

std::string shape_of(const torch::Tensor& t) {
  std::vector<int64_t> shape(t.sizes().begin(), t.sizes().end());
  return shape_str(shape);
}

Batch make_batch(std::vector<Sample>& samples) {
  Batch batch;
  std::vector<torch::Tensor> images;
  std::vector<int64_t> labels;
  images.reserve(samples.size());
  const Sample& first = samples.front();
  for (const Sample& sample : samples) {
    if (!sample.image.defined() || !first.image.defined() ||
        !sample.image.sizes().equals(first.image.sizes())) {
      auto shape = [](const Sample& s) {
        return s.image.defined() ? shape_of(s.image) : std::string("undefined");
      };
      throw Error("DataLoader: samples of one batch differ in shape: " + first.id + " is " + shape(first) +
                  ", " + sample.id + " is " + shape(sample) + " (use a transform with a fixed output size)");
    }
  }
  for (Sample& sample : samples) {
    images.push_back(std::move(sample.image));
    labels.push_back(sample.label);
    batch.ids.push_back(std::move(sample.id));
  }
  batch.images = torch::stack(images);
  batch.labels = torch::empty({int64_t(labels.size())}, torch::kInt64);
  std::memcpy(batch.labels.data_ptr<int64_t>(), labels.data(), labels.size() * sizeof(int64_t));
  return batch;
}

}  // namespace

struct DataLoader::State {
  std::mutex mutex;
  std::condition_variable work_ready;    // workers wait here
  std::condition_variable sample_ready;  // the consumer waits here
  bool stopping = false;
  bool active = false;
  uint64_t generation = 0;  // bumped by start_epoch: results of an older epoch are dropped
  int64_t epoch = 0;
  std::vector<size_t> order;  // dataset index per epoch position
  size_t positions = 0;       // positions served this epoch (drop_last trims)
  size_t batches = 0;
  size_t next_position = 0;  // next position a worker takes
  size_t next_batch = 0;     // next batch next() returns
  size_t window_batches = 2;
  std::vector<Slot> slots;      // ring of window_batches * batch_size, indexed by position
  std::vector<char> known_bad;  // per dataset index: skipped once, never decoded again
  size_t skipped = 0;
  std::vector<std::thread> threads;
};

DataLoader::DataLoader(std::shared_ptr<const Dataset> dataset, LoaderOptions options)
    : dataset_(std::move(dataset)), options_(options), state_(std::make_unique<State>()) {
  if (!dataset_) throw Error("DataLoader: no dataset");
  if (options_.batch_size <= 0)
    throw Error("DataLoader: batch_size must be positive, got " + std::to_string(options_.batch_size));
  int workers = options_.workers;
  if (workers <= 0) workers = std::max(1, static_cast<int>(std::thread::hardware_concurrency()));
  options_.workers = workers;
  const size_t batch = size_t(options_.batch_size);
  // Default window: two batches, more when that would leave workers idle (2 samples each in flight).
  size_t window = options_.prefetch_batches > 0
                      ? size_t(options_.prefetch_batches)
                      : std::max<size_t>(2, 1 + (2 * size_t(workers) + batch - 1) / batch);
  state_->window_batches = window;
  state_->slots.resize(window * batch);
  state_->known_bad.assign(dataset_->size(), 0);

  State& s = *state_;
  const Dataset& data = *dataset_;
  const uint64_t seed = options_.seed;
  auto worker = [&s, &data, seed, batch] {
    std::unique_lock<std::mutex> lock(s.mutex);
    while (true) {
      s.work_ready.wait(lock, [&] {
        return s.stopping || (s.active && s.next_position < s.positions &&
                              s.next_position < (s.next_batch + s.window_batches) * batch);
      });
      if (s.stopping) return;
      const size_t position = s.next_position++;
      const size_t index = s.order[position];
      const uint64_t generation = s.generation;
      const int64_t epoch = s.epoch;
      Slot result;
      if (s.known_bad[index]) {
        result.status = SlotStatus::kSkipped;
      } else {
        lock.unlock();
        std::string warning;
        try {
          std::mt19937_64 rng(mix_seed(seed, epoch, index));
          result.sample = data.get(index, rng);
          result.status = SlotStatus::kDone;
        } catch (const FormatError& e) {
          result.status = SlotStatus::kSkipped;
          warning = e.what();
        } catch (...) {
          result.status = SlotStatus::kFailed;
          result.error = std::current_exception();
        }
        lock.lock();
        if (result.status == SlotStatus::kSkipped && !s.known_bad[index]) {
          s.known_bad[index] = 1;
          ++s.skipped;
          std::cerr << "graft: warning: skipping a file that does not decode: " + warning + "\n"
                    << std::flush;
        }
      }
      if (generation != s.generation) continue;  // the epoch was restarted meanwhile
      s.slots[position % s.slots.size()] = std::move(result);
      s.sample_ready.notify_all();
    }
  };
  try {
    for (int w = 0; w < workers; ++w) s.threads.emplace_back(worker);
  } catch (...) {  // no destructor runs for a throwing constructor: stop what started
    {
      std::lock_guard<std::mutex> lock(s.mutex);
      s.stopping = true;
    }
    s.work_ready.notify_all();
    for (std::thread& thread : s.threads) thread.join();
    throw;
  }
}

DataLoader::~DataLoader() {
  {
    std::lock_guard<std::mutex> lock(state_->mutex);
    state_->stopping = true;
  }
  state_->work_ready.notify_all();
  for (std::thread& thread : state_->threads) thread.join();
}

void DataLoader::start_epoch(int64_t epoch) {
  const size_t count = dataset_->size();
  std::vector<size_t> order(count);
  std::iota(order.begin(), order.end(), size_t{0});
  if (options_.shuffle) {
    // Fisher-Yates with our own draws: the same permutation on every standard library.
    std::mt19937_64 rng(mix_seed(options_.seed, epoch, kShuffleStream));
    for (size_t i = count; i > 1; --i) std::swap(order[i - 1], order[rng() % i]);
  }
  {
    std::lock_guard<std::mutex> lock(state_->mutex);
    State& s = *state_;
    ++s.generation;
    s.epoch = epoch;
    s.active = true;
    s.order = std::move(order);
    s.batches = num_batches();
    s.positions = options_.drop_last ? s.batches * size_t(options_.batch_size) : count;
    s.next_position = 0;
    s.next_batch = 0;
    for (Slot& slot : s.slots) slot = Slot{};
  }
  state_->work_ready.notify_all();
}

std::optional<Batch> DataLoader::next() {
  State& s = *state_;
  const size_t batch_size = size_t(options_.batch_size);
  std::unique_lock<std::mutex> lock(s.mutex);
  while (true) {
    if (!s.active || s.next_batch >= s.batches) return std::nullopt;
    const size_t begin = s.next_batch * batch_size;
    const size_t end = std::min(begin + batch_size, s.positions);
    s.sample_ready.wait(lock, [&] {
      for (size_t p = begin; p < end; ++p) {
        if (s.slots[p % s.slots.size()].status == SlotStatus::kPending) return false;
      }
      return true;
    });
    std::vector<Sample> samples;
    std::exception_ptr error;
    for (size_t p = begin; p < end; ++p) {
      Slot& slot = s.slots[p % s.slots.size()];
      if (slot.status == SlotStatus::kDone) samples.push_back(std::move(slot.sample));
      if (slot.status == SlotStatus::kFailed && !error) error = slot.error;
      slot = Slot{};
    }
    ++s.next_batch;
    s.work_ready.notify_all();
    if (error) std::rethrow_exception(error);
    if (samples.empty()) continue;  // every file of this batch was skipped
    lock.unlock();
    return make_batch(samples);
  }
}

size_t DataLoader::num_batches() const {
  const size_t count = dataset_->size(), batch = size_t(options_.batch_size);
  return options_.drop_last ? count / batch : (count + batch - 1) / batch;
}

size_t DataLoader::skipped_files() const {
  std::lock_guard<std::mutex> lock(state_->mutex);
  return state_->skipped;
}

int DataLoader::workers() const {
  return options_.workers;
}

}  // namespace graft
