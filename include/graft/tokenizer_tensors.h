// Encodings as model inputs: (B, T) int64 tensors named as Hugging Face models take them. Kept apart from
// graft/tokenizer.h so that tokenizing needs no libtorch headers.
#pragma once
#include <torch/types.h>

#include <string>
#include <vector>

#include "graft/errors.h"
#include "graft/tokenizer.h"

namespace graft {

struct EncodedBatch {
  torch::Tensor input_ids;       // (B, T) int64
  torch::Tensor attention_mask;  // (B, T) int64, 1 for real tokens
  torch::Tensor token_type_ids;  // (B, T) int64
};

// All encodings must have the same length: encode with Padding::kLongest or kMaxLength.
inline EncodedBatch to_tensors(const std::vector<Encoding>& batch) {
  const int64_t rows = static_cast<int64_t>(batch.size());
  const int64_t length = batch.empty() ? 0 : static_cast<int64_t>(batch[0].size());
  const auto make = [&](std::vector<int64_t> Encoding::*field) {
    torch::Tensor out = torch::empty({rows, length}, torch::kLong);
    int64_t* data = out.data_ptr<int64_t>();
    for (int64_t i = 0; i < rows; ++i) {
      const std::vector<int64_t>& values = batch[i].*field;
      if (static_cast<int64_t>(values.size()) != length) {
        throw Error("to_tensors: encoding " + std::to_string(i) + " has " + std::to_string(values.size()) +
                    " tokens, encoding 0 has " + std::to_string(length) +
                    "; pad the batch (EncodeOptions::padding) first");
      }
      std::copy(values.begin(), values.end(), data + i * length);
    }
    return out;
  };
  return {make(&Encoding::ids), make(&Encoding::attention_mask), make(&Encoding::token_type_ids)};
}

inline EncodedBatch to_tensors(const Encoding& encoding) {
  return to_tensors(std::vector<Encoding>{encoding});
}

}  // namespace graft
