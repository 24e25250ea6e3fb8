// Clip classifiers for transfer learning on video, the tutorial's ConvNet + LSTM: an image backbone applied
// to every frame (Keras' TimeDistributed: its pooled features per frame), a temporal model over the frame
// features (LSTM or GRU, optionally bidirectional, or an order-blind average), then a linear classifier.
// Parameter names: backbone.* (the image model's own names), temporal.* (PyTorch's LSTM/GRU names:
// weight_ih_l0, ...), fc.*. 3D CNNs (r3d_18, ...) are image-zoo backbones taking (N, 3, T, H, W) instead.
#pragma once
#include <torch/nn/modules/dropout.h>
#include <torch/nn/modules/linear.h>
#include <torch/nn/modules/rnn.h>

#include <string>

#include "graft/model.h"

namespace graft {

// "lstm:256" | "gru:128" | "lstm:256:bi" | "lstm:256:layers=2" | "avg"; dropout before fc: ",dropout=0.3"
// is not supported, use "lstm:256:dropout=0.3".
struct TemporalSpec {
  std::string kind = "lstm";  // lstm | gru | avg
  int64_t hidden = 256;
  int64_t layers = 1;
  bool bidirectional = false;
  double dropout = 0.0;                                // before the classifier
  static TemporalSpec parse(const std::string& text);  // throws SpecError naming the bad term
  std::string to_string() const;
  int64_t output_size(int64_t features) const;  // width the classifier sees
};

class TimeDistributedClassifierImpl : public torch::nn::Module {
 public:
  // The backbone's own classifier is removed (reset_classifier(0)): it yields pooled features per frame.
  TimeDistributedClassifierImpl(Backbone backbone, TemporalSpec temporal, int64_t num_classes);

  // (N, T, 3, H, W) clips -> (N, T, D) per-frame features.
  torch::Tensor frame_features(const torch::Tensor& clips);
  // (N, T, D) frame features -> (N, S) the clip's summary, what the classifier reads: the temporal
  // model's last output (and, bidirectional, its backward half's first), or the frames' mean for avg.
  torch::Tensor summarize(const torch::Tensor& features);
  // (N, T, D) frame features -> (N, classes) logits: the temporal model and the classifier.
  torch::Tensor forward_sequence(const torch::Tensor& features);
  torch::Tensor forward(const torch::Tensor& clips) { return forward_sequence(frame_features(clips)); }

  void reset_classifier(int64_t num_classes);  // a fresh fc
  int64_t num_classes() const { return fc->options.out_features(); }
  const TemporalSpec& temporal_spec() const { return spec_; }

  Backbone backbone;
  torch::nn::LSTM lstm{nullptr};  // registered as "temporal" when kind is lstm
  torch::nn::GRU gru{nullptr};    // registered as "temporal" when kind is gru
  torch::nn::Dropout dropout{nullptr};
  torch::nn::Linear fc{nullptr};

 private:
  TemporalSpec spec_;
};
TORCH_MODULE(TimeDistributedClassifier);

// True for a backbone whose input is a clip (N, 3, T, H, W): its pretrained input_size has 4 entries.
inline bool is_video_backbone(const BackboneImpl& model) {
  return is_video_cfg(model.default_cfg());
}

}  // namespace graft
