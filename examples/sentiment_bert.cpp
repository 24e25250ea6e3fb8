// The classic Hugging Face sentiment recipe, through graft's C++ API:
//   tokenizer = BertTokenizer.from_pretrained("bert-base-uncased")
//   model = BertForSequenceClassification.from_pretrained("bert-base-uncased", num_labels=2)
//   batch = tokenizer(texts, padding=True, truncation=True, max_length=64, return_tensors="pt")
//   loss = model(**batch, labels=labels).loss; loss.backward()
//   AdamW(lr=2e-5, weight_decay=0.01) with get_linear_schedule_with_warmup(10% warm-up)
//
// Usage: sentiment_bert MODEL DATA [--epochs N] [--lr X] [--max-length N] [--tokenizer PATH]  (--help)
//   MODEL  a Hugging Face BERT folder (config.json, model.safetensors, vocab.txt), e.g. bert-base-uncased;
//          or a config.json of a new model (from scratch: its vocabulary is sized to the tokenizer's), with
//          vocab.txt next to it or given by --tokenizer.
//   DATA   labelled sentences, `sentence<TAB>label` per line (the UCI "Sentiment Labelled Sentences"
//          files), several separated by commas.
// On the repository's tiny fixture config (40 positions):
//   sentiment_bert ../shared/fixtures/hf/bert/config.json
//   ../shared/data/sentiment_sentences/yelp_labelled.txt
//       --tokenizer ../shared/tokenizers/bert-base-uncased/vocab.txt --epochs 2 --lr 1e-3
#include <torch/torch.h>

#include <cstdlib>
#include <filesystem>
#include <iostream>
#include <random>

#include "example_args.h"
#include "graft/bert.h"
#include "graft/json_file.h"
#include "graft/text_data.h"
#include "graft/tokenizer.h"
#include "graft/tokenizer_tensors.h"
#include "graft/trainer.h"
#include "graft/transformers.h"

namespace fs = std::filesystem;

int main(int argc, char** argv) try {
  const example::Args args(
      argc, argv, "sentiment_bert MODEL DATA [options]",
      {{"MODEL", "", "Hugging Face BERT folder, or a config.json of a new model (from scratch)"},
       {"DATA", "", "sentence<TAB>label files, comma-separated"}},
      {{"--epochs", "3", "passes over the training sentences"},
       {"--lr", "2e-5", "peak learning rate (AdamW, linear warm-up and decay)"},
       {"--max-length", "64", "tokens per sentence, at most the model's positions"},
       {"--tokenizer", "", "vocab.txt or tokenizer.json (default: MODEL's folder)"}});
  const std::string model_path = args["MODEL"], data_path = args["DATA"];
  const int64_t epochs = args.integer("--epochs");
  const double lr = args.real("--lr");
  torch::manual_seed(0);

  // 1. Tokenizer and model: the pretrained encoder, a new 2-label classifier on its pooled output.
  const bool from_config = fs::path(model_path).extension() == ".json";
  const std::string tokenizer_path = !args["--tokenizer"].empty() ? args["--tokenizer"]
                                     : from_config ? fs::path(model_path).parent_path().string()
                                                   : model_path;
  auto tokenizer = graft::load_tokenizer(tokenizer_path);
  graft::BertForSequenceClassification model{nullptr};
  if (from_config) {
    // From scratch: the embedding is sized to the tokenizer's vocabulary, whatever the file says.
    nlohmann::json config = graft::read_json_file(model_path);
    config["vocab_size"] = static_cast<int64_t>(tokenizer->vocab_size());
    graft::BertConfig bert = graft::BertConfig::from_json(config, model_path);
    bert.set_num_labels(2);
    model = graft::BertForSequenceClassification(bert);
  } else {
    graft::HfLoadOptions options;
    options.architecture = "BertForSequenceClassification";
    options.num_labels = 2;
    model = graft::BertForSequenceClassification(
        graft::load_hf_model(model_path, options).as<graft::BertForSequenceClassificationImpl>());
  }

  // 2. Data: sentences and 0/1 labels, shuffled, 10% held out.
  graft::TextColumns columns;
  columns.header = false, columns.text = "0", columns.label = "1";
  std::vector<graft::TextExample> examples = graft::read_text_examples(data_path, columns);
  std::shuffle(examples.begin(), examples.end(), std::mt19937(42));
  const size_t val_count = examples.size() / 10;
  const std::vector<graft::TextExample> val(examples.begin(), examples.begin() + val_count),
      train(examples.begin() + val_count, examples.end());

  graft::EncodeOptions encode;
  encode.padding = graft::Padding::kLongest;
  encode.truncation = graft::Truncation::kLongestFirst;
  // Within the model's positions (the tiny fixture config has 40).
  encode.max_length = static_cast<size_t>(
      std::min<long long>(args.integer("--max-length"), model->config().max_position_embeddings));
  auto batch_of = [&](const std::vector<graft::TextExample>& set, size_t begin, size_t end) {
    std::vector<std::string> texts;
    std::vector<int64_t> labels;
    for (size_t i = begin; i < end; ++i)
      texts.push_back(set[i].text), labels.push_back(std::stoll(set[i].label));
    graft::EncodedBatch batch = graft::to_tensors(tokenizer->encode_batch(texts, encode));
    graft::TextInputs inputs(batch.input_ids, batch.attention_mask);
    inputs.token_type_ids = batch.token_type_ids;
    inputs.labels = torch::tensor(labels, torch::kLong);
    return inputs;
  };

  // 3. AdamW, no decay on biases and LayerNorm, linear warm-up over 10% of the steps then linear decay.
  std::vector<torch::Tensor> decay, no_decay;
  for (const auto& p : model->named_parameters()) {
    const bool plain =
        p.key().find("bias") != std::string::npos || p.key().find("LayerNorm") != std::string::npos;
    (plain ? no_decay : decay).push_back(p.value());
  }
  std::vector<torch::optim::OptimizerParamGroup> groups;
  groups.emplace_back(
      decay, std::make_unique<torch::optim::AdamWOptions>(torch::optim::AdamWOptions(lr).weight_decay(0.01)));
  groups.emplace_back(no_decay, std::make_unique<torch::optim::AdamWOptions>(
                                    torch::optim::AdamWOptions(lr).weight_decay(0.0)));
  torch::optim::AdamW optimizer(std::move(groups), torch::optim::AdamWOptions(lr));
  const size_t batch_size = 32;
  const int64_t steps_per_epoch = static_cast<int64_t>((train.size() + batch_size - 1) / batch_size);
  graft::ScheduleConfig schedule_config;
  schedule_config.name = "linear";
  schedule_config.warmup_steps = epochs * steps_per_epoch / 10;
  const graft::LrSchedule schedule(schedule_config, epochs * steps_per_epoch, steps_per_epoch);

  // 4. Train.
  int64_t step = 0;
  for (int64_t epoch = 1; epoch <= epochs; ++epoch) {
    model->train();
    double loss_sum = 0;
    for (size_t begin = 0; begin < train.size(); begin += batch_size) {
      for (auto& group : optimizer.param_groups()) group.options().set_lr(lr * schedule.factor(step));
      optimizer.zero_grad();
      const torch::Tensor loss =
          model->forward(batch_of(train, begin, std::min(train.size(), begin + batch_size))).loss;
      loss.backward();
      torch::nn::utils::clip_grad_norm_(model->parameters(), 1.0);
      optimizer.step();
      loss_sum += loss.item<double>();
      ++step;
    }
    // 5. Evaluate on the held-out sentences.
    model->eval();
    torch::NoGradGuard no_grad;
    int64_t correct = 0;
    for (size_t begin = 0; begin < val.size(); begin += batch_size) {
      const graft::TextInputs inputs = batch_of(val, begin, std::min(val.size(), begin + batch_size));
      correct += model->forward(inputs).logits.argmax(-1).eq(inputs.labels).sum().item<int64_t>();
    }
    std::cout << "epoch " << epoch << "/" << epochs << "  train loss " << loss_sum / steps_per_epoch
              << "  val accuracy " << static_cast<double>(correct) / static_cast<double>(val.size()) << "\n";
  }

  // 6. Use it.
  model->eval();
  torch::NoGradGuard no_grad;
  for (const std::string text :
       {"I love this phone, the battery lasts for days.", "Worst service ever, never again."}) {
    graft::EncodedBatch batch = graft::to_tensors(tokenizer->encode(text, encode));
    graft::TextInputs inputs(batch.input_ids, batch.attention_mask);
    const torch::Tensor probs = torch::softmax(model->forward(inputs).logits, -1)[0];
    std::cout << (probs[1].item<double>() > 0.5 ? "positive" : "negative") << " (" << probs[1].item<double>()
              << ")  " << text << "\n";
  }
  return 0;
} catch (const std::exception& e) {
  std::cerr << "sentiment_bert: " << e.what() << "\n";
  return 1;
}
