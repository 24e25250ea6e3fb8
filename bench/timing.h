// Timing helpers shared by the bench programs (text_bench.cpp, vision_bench.cpp).
#pragma once
#include <algorithm>
#include <chrono>
#include <vector>

namespace graft::bench {

using Clock = std::chrono::steady_clock;

inline double seconds_since(Clock::time_point start) {
  return std::chrono::duration<double>(Clock::now() - start).count();
}

// Median of the values (0 for none); the mean of the middle two for an even count.
inline double median(std::vector<double> values) {
  if (values.empty()) return 0;
  std::sort(values.begin(), values.end());
  const size_t mid = values.size() / 2;
  return values.size() % 2 ? values[mid] : (values[mid - 1] + values[mid]) / 2;
}

}  // namespace graft::bench
