// Pictures of a run (src/train/plots.cpp) and the final validation report.
#pragma once
#include <iosfwd>
#include <string>
#include <vector>

#include "graft/history.h"
#include "graft/metrics.h"

namespace graft {

// Two panels, loss and accuracy per epoch, train (solid) vs val (dashed), with ticks and a legend, and a
// labelled vertical line at each mark. A causal LM's second panel is perplexity, exp(loss), instead of
// (token) accuracy.
void write_training_curves_svg(const std::string& path, const std::vector<EpochResult>& history,
                               const std::vector<CurveMark>& marks = {}, bool perplexity = false);
// Heat map coloured by row-normalised counts (recall), the count in every cell, class names on both axes.
void write_confusion_matrix_svg(const std::string& path, const Metrics& metrics,
                                const std::vector<std::string>& class_names = {});
// The final evaluation of a run's saved model on its validation data: val_report.txt and, for classes,
// confusion_matrix.svg in out_dir (both from the same metrics, so they describe the model that was saved),
// and the report on log.
void write_val_report(const std::string& out_dir, const Metrics& metrics,
                      const std::vector<std::string>& class_names, std::ostream& log);

}  // namespace graft
