// The classic "football chatbot" recipe (GPT-2 fine-tuned on question-answer lines), through graft's C++ API:
//   tokenizer = GPT2Tokenizer.from_pretrained("gpt2"); tokenizer.pad_token = tokenizer.eos_token
//   model = GPT2LMHeadModel.from_pretrained("gpt2")
//   batch = tokenizer(lines + eos, padding=True); labels = input_ids (padding -> -100)
//   model(**batch, labels=labels).loss.backward(); AdamW(lr=5e-5)
//   model.generate(prompt, do_sample=True, top_k=50, top_p=0.95, max_new_tokens=40)
//
// Usage: football_chatbot MODEL DATA [--epochs N] [--lr X] [--tokenizer PATH]  (--help)
//   MODEL  a Hugging Face GPT-2 folder (config.json, model.safetensors, vocab.json + merges.txt), e.g. gpt2;
//          or a config.json of a new model (from scratch: its vocabulary is sized to the tokenizer's),
//          with the tokenizer given by --tokenizer.
//   DATA   one exchange per line, "User: ... Bot: ..." (examples/data/football_chat.txt).
// On the repository's tiny fixture config (40 positions):
//   football_chatbot ../shared/fixtures/hf/gpt2/config.json examples/data/football_chat.txt
//       --tokenizer ../shared/tokenizers/gpt2 --epochs 3 --lr 3e-3
#include <torch/torch.h>

#include <cstdlib>
#include <filesystem>
#include <iostream>

#include "example_args.h"
#include "graft/gpt2.h"
#include "graft/json_file.h"
#include "graft/text_data.h"
#include "graft/tokenizer.h"
#include "graft/transformers.h"

namespace fs = std::filesystem;

int main(int argc, char** argv) try {
  const example::Args args(
      argc, argv, "football_chatbot MODEL DATA [options]",
      {{"MODEL", "", "Hugging Face GPT-2 folder, or a config.json of a new model (from scratch)"},
       {"DATA", "", "one \"User: ... Bot: ...\" exchange per line"}},
      {{"--epochs", "5", "passes over the exchanges"},
       {"--lr", "5e-5", "AdamW learning rate"},
       {"--tokenizer", "",
        "tokenizer.json, or a folder with vocab.json + merges.txt "
        "(default: MODEL's folder)"}});
  const std::string model_path = args["MODEL"], data_path = args["DATA"];
  const int64_t epochs = args.integer("--epochs");
  const double lr = args.real("--lr");
  torch::manual_seed(0);

  // 1. Tokenizer (padding with end-of-text, as GPT-2 has no pad token) and the pretrained language model.
  const bool from_config = fs::path(model_path).extension() == ".json";
  auto tokenizer = graft::load_tokenizer(!args["--tokenizer"].empty() ? args["--tokenizer"]
                                         : from_config ? fs::path(model_path).parent_path().string()
                                                       : model_path);
  const int64_t eos = tokenizer->eos_id().value_or(50256);
  graft::GPT2LMHeadModel model{nullptr};
  if (from_config) {
    // From scratch: the embedding is sized to the tokenizer's vocabulary, whatever the file says.
    nlohmann::json config = graft::read_json_file(model_path);
    config["vocab_size"] = static_cast<int64_t>(tokenizer->vocab_size());
    model = graft::GPT2LMHeadModel(graft::GPT2Config::from_json(config, model_path));
  } else {
    graft::HfLoadOptions options;
    options.architecture = "GPT2LMHeadModel";
    model =
        graft::GPT2LMHeadModel(graft::load_hf_model(model_path, options).as<graft::GPT2LMHeadModelImpl>());
  }

  // 2. Every exchange + end-of-text, padded to the longest; the loss skips the padding.
  const std::vector<std::string> lines = graft::read_lm_documents(data_path, /*line_by_line=*/true);
  std::vector<std::vector<int64_t>> encoded;
  size_t longest = 0;
  // An exchange longer than the model's positions keeps its first n_positions - 1 tokens (the fixture
  // config has 40).
  const size_t room = static_cast<size_t>(model->config().n_positions - 1);
  size_t cut = 0;
  for (const auto& line : lines) {
    encoded.push_back(tokenizer->encode(line).ids);
    if (encoded.back().size() > room) encoded.back().resize(room), ++cut;
    encoded.back().push_back(eos);
    longest = std::max(longest, encoded.back().size());
  }
  if (cut) std::cout << cut << " of " << lines.size() << " exchanges cut to the model's positions\n";
  const auto n = static_cast<int64_t>(encoded.size()), length = static_cast<int64_t>(longest);
  torch::Tensor ids = torch::full({n, length}, eos, torch::kLong),
                mask = torch::zeros({n, length}, torch::kLong);
  for (int64_t i = 0; i < n; ++i) {
    const auto& row = encoded[static_cast<size_t>(i)];
    ids[i].narrow(0, 0, static_cast<int64_t>(row.size())).copy_(torch::tensor(row, torch::kLong));
    mask[i].narrow(0, 0, static_cast<int64_t>(row.size())).fill_(1);
  }
  const torch::Tensor labels = ids.masked_fill(mask.eq(0), -100);

  // 3. Fine-tune with AdamW.
  torch::optim::AdamW optimizer(model->parameters(), torch::optim::AdamWOptions(lr).weight_decay(0.01));
  const int64_t batch_size = 8;
  for (int64_t epoch = 1; epoch <= epochs; ++epoch) {
    model->train();
    const torch::Tensor order = torch::randperm(n, torch::kLong);
    double loss_sum = 0;
    int64_t batches = 0;
    for (int64_t begin = 0; begin < n; begin += batch_size) {
      const torch::Tensor rows = order.narrow(0, begin, std::min(batch_size, n - begin));
      graft::CausalLMInputs inputs(ids.index_select(0, rows), mask.index_select(0, rows));
      inputs.labels = labels.index_select(0, rows);
      optimizer.zero_grad();
      const torch::Tensor loss = model->forward(inputs).loss;
      loss.backward();
      optimizer.step();
      loss_sum += loss.item<double>();
      ++batches;
    }
    std::cout << "epoch " << epoch << "/" << epochs << "  loss " << loss_sum / static_cast<double>(batches)
              << "  perplexity " << std::exp(loss_sum / static_cast<double>(batches)) << "\n";
  }

  // 4. Chat: the question in the training format, the answer sampled until end-of-text.
  model->eval();
  graft::GenerateOptions generate;
  generate.max_new_tokens = 40;
  generate.temperature = 0.7;
  generate.top_k = 50;
  generate.top_p = 0.95;
  generate.eos_token_id = eos;
  generate.seed = 1;
  for (const std::string question : {"How long is a football match?", "What does a red card mean?"}) {
    const std::string prompt = "User: " + question + " Bot:";
    std::vector<int64_t> prompt_ids = tokenizer->encode(prompt).ids;
    generate.max_new_tokens =
        std::min<int64_t>(40, model->config().n_positions - static_cast<int64_t>(prompt_ids.size()));
    const torch::Tensor out =
        model->generate(torch::tensor(prompt_ids, torch::kLong).unsqueeze(0), generate)[0];
    std::vector<int64_t> answer;
    for (int64_t t = static_cast<int64_t>(prompt_ids.size());
         t < out.size(0) && out[t].item<int64_t>() != eos; ++t)
      answer.push_back(out[t].item<int64_t>());
    std::cout << "User: " << question << "\nBot:" << tokenizer->decode(answer) << "\n";
  }
  return 0;
} catch (const std::exception& e) {
  std::cerr << "football_chatbot: " << e.what() << "\n";
  return 1;
}
