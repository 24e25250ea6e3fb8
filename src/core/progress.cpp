// Progress bars for passes over batches: in place on a terminal, a few whole lines in logs.
#include "graft/progress.h"

#include <unistd.h>

#include <cmath>
#include <cstdio>
#include <sstream>

namespace graft {
namespace {

constexpr int kBarWidth = 24;
constexpr double kTerminalRedrawSeconds = 0.1;  // ~10 Hz: faster redraws only cost time
constexpr double kLogHeartbeatSeconds = 30;     // log mode: a line at most this often within a long pass

// 1536 -> "1.5 KiB"; binary prefixes, one decimal.
std::string format_bytes(double bytes) {
  static const char* kUnits[] = {"B", "KiB", "MiB", "GiB", "TiB"};
  int unit = 0;
  while (bytes >= 1024.0 && unit < 4) {
    bytes /= 1024.0;
    ++unit;
  }
  char buffer[32];
  if (unit == 0)
    std::snprintf(buffer, sizeof buffer, "%.0f %s", bytes, kUnits[unit]);
  else
    std::snprintf(buffer, sizeof buffer, "%.1f %s", bytes, kUnits[unit]);
  return buffer;
}

}  // namespace

std::string format_duration(double seconds) {
  if (!std::isfinite(seconds) || seconds < 0) return "--:--";
  const int64_t total = static_cast<int64_t>(std::llround(seconds));
  const int64_t hours = total / 3600, minutes = (total / 60) % 60, secs = total % 60;
  char buffer[48];
  if (hours > 0)
    std::snprintf(buffer, sizeof buffer, "%lld:%02lld:%02lld", static_cast<long long>(hours),
                  static_cast<long long>(minutes), static_cast<long long>(secs));
  else
    std::snprintf(buffer, sizeof buffer, "%02lld:%02lld", static_cast<long long>(minutes),
                  static_cast<long long>(secs));
  return buffer;
}

bool is_terminal(const std::ostream& out) {
  if (&out == &std::cout) return ::isatty(STDOUT_FILENO) == 1;
  if (&out == &std::cerr || &out == &std::clog) return ::isatty(STDERR_FILENO) == 1;
  return false;
}

ProgressBar::ProgressBar(std::string label, int64_t total, std::ostream& out, std::string unit,
                         std::optional<bool> tty)
    : label_(std::move(label)),
      total_(total),
      out_(out),
      unit_(std::move(unit)),
      tty_(tty.value_or(is_terminal(out))),
      start_(Clock::now()),
      last_draw_(start_) {}

ProgressBar::~ProgressBar() {
  // A pass left by an exception: end the bar's line so that the error message starts on its own.
  if (drawn_ && !finished_ && tty_) out_ << '\n' << std::flush;
}

std::string ProgressBar::render(int64_t done, int64_t samples, double loss, double accuracy,
                                double elapsed_seconds) const {
  std::ostringstream line;
  const bool bytes = unit_ == "B";  // a download: counts are bytes
  if (!label_.empty()) line << label_ << ' ';
  if (total_ > 0) {
    const double fraction = std::min(1.0, static_cast<double>(done) / static_cast<double>(total_));
    const int filled = static_cast<int>(fraction * kBarWidth);
    line << '[';
    for (int i = 0; i < kBarWidth; ++i)
      line << (i < filled ? '=' : (i == filled && done < total_ ? '>' : ' '));
    line << "] ";
    if (bytes)
      line << format_bytes(static_cast<double>(done)) << " / " << format_bytes(static_cast<double>(total_));
    else
      line << done << '/' << total_ << " batches";
  } else {
    line << (bytes ? format_bytes(static_cast<double>(done)) : std::to_string(done) + " batches");
  }
  char buffer[64];
  const double rate = elapsed_seconds > 0 ? static_cast<double>(samples) / elapsed_seconds : 0.0;
  if (bytes)
    std::snprintf(buffer, sizeof buffer, "  %s/s", format_bytes(rate).c_str());
  else
    std::snprintf(buffer, sizeof buffer, "  %.1f %s/s", rate, unit_.c_str());
  line << buffer;
  if (total_ > 0) {
    const double eta = done > 0 ? elapsed_seconds / static_cast<double>(done) *
                                      static_cast<double>(std::max<int64_t>(0, total_ - done))
                                : -1.0;
    line << "  ETA " << format_duration(eta);
  }
  if (!std::isnan(loss)) {  // NaN: a pass without a loss (feature extraction)
    std::snprintf(buffer, sizeof buffer, "  loss %.4f acc %.3f", loss, accuracy);
    line << buffer;
  }
  return line.str();
}

void ProgressBar::update(int64_t done, int64_t samples, double loss, double accuracy) {
  const Clock::time_point now = Clock::now();
  const double elapsed = std::chrono::duration<double>(now - start_).count();
  const bool last = total_ > 0 && done >= total_;
  last_ = {done, samples, loss, accuracy};
  if (tty_) {
    const double since = std::chrono::duration<double>(now - last_draw_).count();
    if (drawn_ && !last && since < kTerminalRedrawSeconds) return;
    std::string text = render(done, samples, loss, accuracy, elapsed);
    const size_t width = text.size();
    if (width < last_width_) text.append(last_width_ - width, ' ');
    last_width_ = width;
    out_ << '\r' << text << std::flush;
  } else {
    // Log mode, as Keras' verbose=2: the pass's summary is its line (finish). A long pass also gets a line
    // every kLogHeartbeatSeconds so that a log shows it is alive; the last batch never does, the summary
    // follows it.
    const double since = std::chrono::duration<double>(now - (drawn_ ? last_draw_ : start_)).count();
    if (last || since < kLogHeartbeatSeconds) return;
    out_ << render(done, samples, loss, accuracy, elapsed) << '\n' << std::flush;
  }
  drawn_ = true;
  last_draw_ = now;
}

std::string ProgressBar::current() const {
  const double elapsed = std::chrono::duration<double>(Clock::now() - start_).count();
  return render(last_.done, last_.samples, last_.loss, last_.accuracy, elapsed);
}

void ProgressBar::finish(const std::string& summary) {
  if (finished_) return;
  finished_ = true;
  if (tty_ && drawn_) {
    if (!summary.empty()) {  // replace the bar, blanking what the summary does not cover
      std::string text = summary;
      if (text.size() < last_width_) text.append(last_width_ - text.size(), ' ');
      out_ << '\r' << text;
    }
    out_ << '\n';
  } else if (!summary.empty()) {
    out_ << summary << '\n';
  }
  out_ << std::flush;
}

}  // namespace graft
