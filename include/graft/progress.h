// A progress bar for one pass over batches (an epoch, an evaluation):
//   epoch 3/10 [=====>        ] 12/40 batches  85.3 img/s  ETA 00:21  loss 0.6931 acc 0.512
// On a terminal it is redrawn in place with '\r', at most ~10 times a second. On anything else (CI
// logs, files, a pipe) a pass is one line, its summary, as Keras' verbose=2 prints an epoch; a pass
// longer than 30 s adds a progress line every 30 s.
#pragma once
#include <chrono>
#include <cstdint>
#include <iostream>
#include <optional>
#include <string>

namespace graft {

// "00:21", "12:05", "1:02:03".
std::string format_duration(double seconds);

// True when `out` is std::cout or std::cerr/std::clog and that stream's descriptor is a terminal.
bool is_terminal(const std::ostream& out);

class ProgressBar {
 public:
  using Clock = std::chrono::steady_clock;

  // label: printed first ("epoch 3/10"); total: batches in the pass (0: unknown, no bar nor ETA);
  // unit: what a sample is ("img" prints "img/s"); "B" makes it a download bar whose `done`, `total` and
  // `samples` are bytes ("[===>  ] 1.2 MiB / 4.0 MiB  3.1 MiB/s  ETA 00:01"); tty: force terminal or log
  // mode (default: detect).
  ProgressBar(std::string label, int64_t total, std::ostream& out = std::cerr, std::string unit = "img",
              std::optional<bool> tty = std::nullopt);
  ~ProgressBar();
  ProgressBar(const ProgressBar&) = delete;
  ProgressBar& operator=(const ProgressBar&) = delete;

  // After batch `done` (1-based) with `samples` samples seen so far and the running loss/accuracy
  // (loss NaN: a pass that has none, e.g. feature extraction; neither is shown).
  void update(int64_t done, int64_t samples, double loss, double accuracy);
  // Ends the pass: on a terminal the bar line is replaced by `summary`; elsewhere `summary` is printed
  // on its own line. An empty summary just ends the bar's line (outside a terminal: prints nothing).
  void finish(const std::string& summary);

  // The bar's text at its latest update, e.g. a download's size, rate and time as its summary.
  std::string current() const;
  // The bar's text for the given state (no '\r', no newline); exposed for tests.
  std::string render(int64_t done, int64_t samples, double loss, double accuracy,
                     double elapsed_seconds) const;

 private:
  std::string label_;
  int64_t total_;
  std::ostream& out_;
  std::string unit_;
  bool tty_;
  Clock::time_point start_;
  Clock::time_point last_draw_;
  bool drawn_ = false;
  struct {
    int64_t done = 0, samples = 0;
    double loss = 0, accuracy = 0;
  } last_;  // the latest update, for current()
  bool finished_ = false;
  size_t last_width_ = 0;  // terminal mode: to blank a longer previous line
};

}  // namespace graft
