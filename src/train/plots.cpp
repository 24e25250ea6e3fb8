// Pictures of a run as hand-written SVG (no plotting library): training curves (loss and accuracy per
// epoch, train vs val) and a confusion-matrix heat map. Written atomically, so a viewer never sees a
// half-written file while training rewrites it every epoch.
#include <cmath>
#include <cstdio>
#include <sstream>

#include "graft/trainer.h"

namespace graft {
namespace {

constexpr const char* kTrainColour = "#1f77b4";
constexpr const char* kValColour = "#ff7f0e";
constexpr const char* kFont = "font-family=\"DejaVu Sans, Helvetica, Arial, sans-serif\"";

std::string num(double value) {
  char buffer[32];
  std::snprintf(buffer, sizeof buffer, "%.2f", value);
  return buffer;
}

std::string escape_xml(const std::string& text) {
  std::string out;
  for (char c : text) {
    switch (c) {
      case '&':
        out += "&amp;";
        break;
      case '<':
        out += "&lt;";
        break;
      case '>':
        out += "&gt;";
        break;
      case '"':
        out += "&quot;";
        break;
      case '\'':
        out += "&apos;";
        break;
      default:
        // Control characters are not allowed in XML 1.0.
        if (static_cast<unsigned char>(c) >= 0x20 || c == '\t') out += c;
    }
  }
  return out;
}

// A "nice" step (1, 2, 5 x 10^k) giving about `count` ticks over [low, high] (Heckbert, Graphics Gems).
double nice_step(double low, double high, int count) {
  const double raw = (high - low) / std::max(1, count);
  if (!(raw > 0)) return 1.0;
  const double magnitude = std::pow(10.0, std::floor(std::log10(raw)));
  const double fraction = raw / magnitude;
  const double nice = fraction < 1.5 ? 1.0 : fraction < 3.0 ? 2.0 : fraction < 7.0 ? 5.0 : 10.0;
  return nice * magnitude;
}

std::string tick_label(double value, double step) {
  const int decimals = step >= 1 ? 0 : static_cast<int>(std::ceil(-std::log10(step) - 1e-9));
  char buffer[32];
  std::snprintf(buffer, sizeof buffer, "%.*f", std::min(decimals, 6),
                std::abs(value) < step * 1e-6 ? 0.0 : value);
  return buffer;
}

struct Series {
  std::string name;
  const char* colour;
  bool dashed;
  std::vector<std::pair<double, double>> points;  // (epoch, value), finite only
};

// One line chart inside the rectangle (x, y, w, h) of the picture.
void line_chart(std::ostringstream& svg, double x, double y, double w, double h, const std::string& title,
                const std::string& y_label, const std::vector<Series>& series, bool unit_interval,
                bool legend_bottom, const std::vector<CurveMark>& marks) {
  const double left = x + 60, top = y + 34, right = x + w - 16, bottom = y + h - 46;
  double x_min = 1, x_max = 1, y_min = INFINITY, y_max = -INFINITY;
  for (const CurveMark& mark : marks) x_max = std::max(x_max, std::ceil(mark.epoch));
  for (const auto& s : series)
    for (const auto& [epoch, value] : s.points) {
      x_max = std::max(x_max, epoch);
      y_min = std::min(y_min, value), y_max = std::max(y_max, value);
    }
  if (!std::isfinite(y_min)) y_min = 0, y_max = 1;
  if (y_max - y_min < 1e-9) y_min -= 0.5, y_max += 0.5;
  const double y_step = nice_step(y_min, y_max, 5);
  y_min = std::floor(y_min / y_step) * y_step, y_max = std::ceil(y_max / y_step) * y_step;
  if (unit_interval) y_min = std::max(0.0, y_min), y_max = std::min(1.0, y_max);
  if (x_max <= x_min) x_max = x_min + 1;
  const double x_step = std::max(1.0, nice_step(x_min, x_max, 8));
  auto px = [&](double epoch) { return left + (epoch - x_min) / (x_max - x_min) * (right - left); };
  auto py = [&](double value) { return bottom - (value - y_min) / (y_max - y_min) * (bottom - top); };

  svg << "<text x=\"" << num((left + right) / 2) << "\" y=\"" << num(y + 20) << "\" " << kFont
      << " font-size=\"15\" font-weight=\"bold\" text-anchor=\"middle\">" << escape_xml(title) << "</text>\n";
  // Grid and y ticks.
  for (double v = y_min; v <= y_max + y_step * 1e-6; v += y_step) {
    svg << "<line x1=\"" << num(left) << "\" y1=\"" << num(py(v)) << "\" x2=\"" << num(right) << "\" y2=\""
        << num(py(v)) << "\" stroke=\"#e0e0e0\"/>\n"
        << "<line x1=\"" << num(left - 5) << "\" y1=\"" << num(py(v)) << "\" x2=\"" << num(left) << "\" y2=\""
        << num(py(v)) << "\" stroke=\"#333\"/>\n"
        << "<text x=\"" << num(left - 8) << "\" y=\"" << num(py(v) + 4) << "\" " << kFont
        << " font-size=\"11\" text-anchor=\"end\">" << tick_label(v, y_step) << "</text>\n";
  }
  // x ticks at whole epochs.
  for (double e = std::ceil(x_min / x_step) * x_step; e <= x_max + 1e-9; e += x_step) {
    if (e < x_min) continue;
    svg << "<line x1=\"" << num(px(e)) << "\" y1=\"" << num(bottom) << "\" x2=\"" << num(px(e)) << "\" y2=\""
        << num(bottom + 5) << "\" stroke=\"#333\"/>\n"
        << "<text x=\"" << num(px(e)) << "\" y=\"" << num(bottom + 18) << "\" " << kFont
        << " font-size=\"11\" text-anchor=\"middle\">" << tick_label(e, x_step) << "</text>\n";
  }
  // Axes and their labels.
  svg << "<polyline points=\"" << num(left) << ',' << num(top) << ' ' << num(left) << ',' << num(bottom)
      << ' ' << num(right) << ',' << num(bottom) << "\" fill=\"none\" stroke=\"#333\"/>\n"
      << "<text x=\"" << num((left + right) / 2) << "\" y=\"" << num(bottom + 36) << "\" " << kFont
      << " font-size=\"12\" text-anchor=\"middle\">epoch</text>\n"
      << "<text x=\"" << num(x + 16) << "\" y=\"" << num((top + bottom) / 2) << "\" " << kFont
      << " font-size=\"12\" text-anchor=\"middle\" transform=\"rotate(-90 " << num(x + 16) << ' '
      << num((top + bottom) / 2) << ")\">" << escape_xml(y_label) << "</text>\n";
  // Marks: a dotted grey line across the plot, its label at the top.
  for (const CurveMark& mark : marks) {
    if (mark.epoch < x_min || mark.epoch > x_max) continue;
    svg << "<line x1=\"" << num(px(mark.epoch)) << "\" y1=\"" << num(top) << "\" x2=\"" << num(px(mark.epoch))
        << "\" y2=\"" << num(bottom) << "\" stroke=\"#888\" stroke-dasharray=\"2 3\"/>\n"
        << "<text x=\"" << num(px(mark.epoch) + 3) << "\" y=\"" << num(top + 10) << "\" " << kFont
        << " font-size=\"10\" fill=\"#555\">" << escape_xml(mark.label) << "</text>\n";
  }
  // Lines with a marker per epoch.
  for (const auto& s : series) {
    if (s.points.empty()) continue;
    svg << "<polyline fill=\"none\" stroke=\"" << s.colour << "\" stroke-width=\"2\""
        << (s.dashed ? " stroke-dasharray=\"6 4\"" : "") << " points=\"";
    for (const auto& [epoch, value] : s.points) svg << num(px(epoch)) << ',' << num(py(value)) << ' ';
    svg << "\"/>\n";
    for (const auto& [epoch, value] : s.points)
      svg << "<circle cx=\"" << num(px(epoch)) << "\" cy=\"" << num(py(value)) << "\" r=\"3\" fill=\""
          << s.colour << "\"><title>" << escape_xml(s.name) << " epoch " << epoch << ": " << value
          << "</title></circle>\n";
  }
  // Legend inside the plot, top right for falling curves (loss), bottom right for rising ones, on a
  // white box so that a line passing under it stays readable.
  int entries = 0;
  for (const auto& s : series) entries += s.points.empty() ? 0 : 1;
  double legend_y = legend_bottom ? bottom - 8 - 16.0 * entries : top + 8;
  if (entries)
    svg << "<rect x=\"" << num(right - 100) << "\" y=\"" << num(legend_y - 10) << "\" width=\"92\" height=\""
        << num(16.0 * entries + 4) << "\" fill=\"white\" fill-opacity=\"0.85\" stroke=\"#ccc\"/>\n";
  for (const auto& s : series) {
    if (s.points.empty()) continue;
    svg << "<line x1=\"" << num(right - 92) << "\" y1=\"" << num(legend_y) << "\" x2=\"" << num(right - 66)
        << "\" y2=\"" << num(legend_y) << "\" stroke=\"" << s.colour << "\" stroke-width=\"2\""
        << (s.dashed ? " stroke-dasharray=\"6 4\"" : "") << "/>\n"
        << "<text x=\"" << num(right - 60) << "\" y=\"" << num(legend_y + 4) << "\" " << kFont
        << " font-size=\"11\">" << escape_xml(s.name) << "</text>\n";
    legend_y += 16;
  }
}

std::string svg_open(double width, double height) {
  std::ostringstream out;
  out << "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n"
      << "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"" << num(width) << "\" height=\"" << num(height)
      << "\" viewBox=\"0 0 " << num(width) << ' ' << num(height) << "\">\n"
      << "<rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n";
  return out.str();
}

// White to dark blue.
std::string heat_colour(double fraction) {
  fraction = std::min(1.0, std::max(0.0, fraction));
  const int r = static_cast<int>(std::lround(255 + (8 - 255) * fraction));
  const int g = static_cast<int>(std::lround(255 + (48 - 255) * fraction));
  const int b = static_cast<int>(std::lround(255 + (107 - 255) * fraction));
  char buffer[16];
  std::snprintf(buffer, sizeof buffer, "#%02x%02x%02x", r, g, b);
  return buffer;
}

}  // namespace

void write_training_curves_svg(const std::string& path, const std::vector<EpochResult>& history,
                               const std::vector<CurveMark>& marks, bool perplexity) {
  Series train_loss{"train", kTrainColour, false, {}}, val_loss{"val", kValColour, true, {}};
  Series train_acc{"train", kTrainColour, false, {}}, val_acc{"val", kValColour, true, {}};
  auto add = [](Series& s, double epoch, double value) {
    if (std::isfinite(value)) s.points.emplace_back(epoch, value);
  };
  for (const EpochResult& r : history) {
    const double e = static_cast<double>(r.epoch);
    add(train_loss, e, r.train_loss);
    if (r.val_loss) add(val_loss, e, *r.val_loss);
    if (perplexity) {  // of the mean next-token loss, as evaluate reports it
      add(train_acc, e, std::exp(r.train_loss));
      if (r.val_loss) add(val_acc, e, std::exp(*r.val_loss));
    } else {
      add(train_acc, e, r.train_accuracy);
      if (r.val_accuracy) add(val_acc, e, *r.val_accuracy);
    }
  }
  const double width = 960, height = 380;
  std::ostringstream svg;
  svg << svg_open(width, height);
  line_chart(svg, 0, 0, width / 2, height, "Loss", "loss", {train_loss, val_loss}, false, false, marks);
  if (perplexity)
    line_chart(svg, width / 2, 0, width / 2, height, "Perplexity", "perplexity", {train_acc, val_acc}, false,
               false, marks);
  else
    line_chart(svg, width / 2, 0, width / 2, height, "Accuracy", "accuracy", {train_acc, val_acc}, true, true,
               marks);
  svg << "</svg>\n";
  write_file_atomic(path, svg.str());
}

void write_confusion_matrix_svg(const std::string& path, const Metrics& metrics,
                                const std::vector<std::string>& class_names) {
  if (metrics.confusion.empty() && metrics.num_classes > 0)
    throw Error(path + ": no confusion matrix to draw: " + std::to_string(metrics.num_classes) +
                " classes, more than the " + std::to_string(kMaxConfusionClasses) + " it is kept for");
  const size_t c = metrics.confusion.size();
  std::vector<std::string> names(c);
  size_t longest = 4;
  for (size_t k = 0; k < c; ++k) {
    names[k] = k < class_names.size() && !class_names[k].empty() ? class_names[k] : std::to_string(k);
    longest = std::max(longest, names[k].size());
  }
  const double cell = c ? std::min(56.0, std::max(12.0, 560.0 / static_cast<double>(c))) : 20.0;
  const double label_space = std::min(240.0, 7.0 * static_cast<double>(longest) + 16);
  const double left = label_space + 30, top = 56;
  const double grid = cell * static_cast<double>(c);
  // At least as wide as the subtitle (a 2-class matrix was 216 px and clipped it).
  constexpr double kMinWidth = 440;
  const double width = std::max(kMinWidth, left + grid + 30), height = top + grid + label_space + 30;
  const bool show_counts = cell >= 18;

  std::ostringstream svg;
  svg << svg_open(width, height);
  svg << "<text x=\"" << num(width / 2) << "\" y=\"24\" " << kFont
      << " font-size=\"15\" font-weight=\"bold\" text-anchor=\"middle\">Confusion matrix</text>\n"
      << "<text x=\"" << num(width / 2) << "\" y=\"42\" " << kFont
      << " font-size=\"11\" text-anchor=\"middle\" fill=\"#555\">rows: true class, columns: predicted; "
         "colour: "
         "share of the row</text>\n";
  for (size_t t = 0; t < c; ++t) {
    int64_t row_total = 0;
    for (int64_t count : metrics.confusion[t]) row_total += count;
    for (size_t p = 0; p < c; ++p) {
      const int64_t count = metrics.confusion[t][p];
      const double fraction = row_total ? static_cast<double>(count) / static_cast<double>(row_total) : 0.0;
      const double cx = left + cell * static_cast<double>(p), cy = top + cell * static_cast<double>(t);
      svg << "<rect x=\"" << num(cx) << "\" y=\"" << num(cy) << "\" width=\"" << num(cell) << "\" height=\""
          << num(cell) << "\" fill=\"" << heat_colour(fraction) << "\" stroke=\"#ccc\" stroke-width=\"0.5\">"
          << "<title>true " << escape_xml(names[t]) << ", predicted " << escape_xml(names[p]) << ": " << count
          << "</title></rect>\n";
      if (show_counts)
        svg << "<text x=\"" << num(cx + cell / 2) << "\" y=\"" << num(cy + cell / 2 + cell * 0.12) << "\" "
            << kFont << " font-size=\"" << num(std::min(13.0, cell * 0.36))
            << "\" text-anchor=\"middle\" fill=\"" << (fraction > 0.5 ? "white" : "#222") << "\">" << count
            << "</text>\n";
    }
  }
  const double font = std::min(12.0, std::max(7.0, cell * 0.6));
  for (size_t k = 0; k < c; ++k) {
    const double centre = cell * (static_cast<double>(k) + 0.5);
    // True classes down the left, predicted classes along the bottom (rotated to fit long names).
    svg << "<text x=\"" << num(left - 6) << "\" y=\"" << num(top + centre + font * 0.35) << "\" " << kFont
        << " font-size=\"" << num(font) << "\" text-anchor=\"end\">" << escape_xml(names[k]) << "</text>\n";
    const double lx = left + centre, ly = top + grid + 8;
    svg << "<text x=\"" << num(lx) << "\" y=\"" << num(ly) << "\" " << kFont << " font-size=\"" << num(font)
        << "\" text-anchor=\"end\" transform=\"rotate(-45 " << num(lx) << ' ' << num(ly) << ")\">"
        << escape_xml(names[k]) << "</text>\n";
  }
  svg << "<text x=\"" << num(left + grid / 2) << "\" y=\"" << num(height - 10) << "\" " << kFont
      << " font-size=\"12\" text-anchor=\"middle\">predicted</text>\n"
      << "<text x=\"14\" y=\"" << num(top + grid / 2) << "\" " << kFont
      << " font-size=\"12\" text-anchor=\"middle\" transform=\"rotate(-90 14 " << num(top + grid / 2)
      << ")\">true</text>\n";
  svg << "</svg>\n";
  write_file_atomic(path, svg.str());
}

}  // namespace graft
