// The text recipes through the CLI on real data: a tiny BERT trained from scratch on the UCI sentiment
// sentences (classification, eval, predict, export), and a tiny GPT-2 trained on tinyshakespeare, then
// fine-tuned from its run directory (--weights RUN_DIR), with perplexity, seeded generation and chat; a
// tiny Llama through the same steps, with LoRA and classification.
// Real pretrained BERT/GPT-2 weights are not reachable offline; the tiny configs are the shared fixtures'.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <regex>
#include <set>
#include <sstream>

#include "e2e/run_graft.h"
#include "graft/weights.h"

namespace graft {
namespace {

namespace fs = std::filesystem;
using testing::fresh_dir;
using testing::graft;

const std::string kShared = GRAFT_SHARED_DIR;

double number_after(const std::string& text, const std::string& label) {
  std::smatch match;
  if (!std::regex_search(text, match, std::regex(label + R"(\s*([0-9.eE+-]+))"))) return -1;
  return std::stod(match[1]);
}

std::string read(const fs::path& path) {
  std::ifstream in(path);
  return std::string(std::istreambuf_iterator<char>(in), {});
}

// Tensor names and shapes of a safetensors file.
std::map<std::string, std::vector<int64_t>> shapes(const std::string& path) {
  std::map<std::string, std::vector<int64_t>> out;
  const SafeTensorsReader reader(path);
  for (const auto& t : reader.tensors()) out[t.name] = t.shape;
  return out;
}

// The exported folder has Hugging Face's files, and its tensors carry exactly the names (and, but for
// the sizes a config sets, the shapes) that transformers itself saved for the same class: the fixture's
// model.safetensors, written by save_pretrained.
void expect_hf_folder(const fs::path& dir, const std::string& fixture, const std::string& architecture,
                      const std::set<std::string>& resized) {
  ASSERT_TRUE(fs::is_regular_file(dir / "config.json"));
  const auto config = nlohmann::json::parse(read(dir / "config.json"));
  EXPECT_EQ(config["architectures"][0], architecture);
  EXPECT_EQ(config["model_type"], fixture);
  EXPECT_TRUE(fs::is_regular_file(dir / "tokenizer_config.json"));
  const auto ours = shapes((dir / "model.safetensors").string());
  const auto theirs = shapes(kShared + "/fixtures/hf/" + fixture + "/model.safetensors");
  std::set<std::string> our_names, their_names;
  for (const auto& item : ours) our_names.insert(item.first);
  for (const auto& item : theirs) their_names.insert(item.first);
  EXPECT_EQ(our_names, their_names);
  for (const auto& [name, shape] : theirs) {
    if (resized.count(name) || !ours.count(name)) continue;
    EXPECT_EQ(ours.at(name), shape) << name;
  }
  EXPECT_EQ(SafeTensorsReader((dir / "model.safetensors").string()).metadata().at("format"), "pt");
}

TEST(TextE2E, SentimentBertFromScratchClassifiesAboveChance) {
  const auto dir = fresh_dir("sentiment");
  // The fixture's BERT shape with the real uncased vocabulary and room for 64 tokens.
  auto config = nlohmann::json::parse(read(kShared + "/fixtures/hf/bert/config.json"));
  config["vocab_size"] = 30522;
  config["max_position_embeddings"] = 64;
  std::ofstream(dir / "config.json") << config.dump(2);
  const std::string data = kShared + "/data/sentiment_sentences/";
  const std::string files =
      data + "amazon_cells_labelled.txt," + data + "yelp_labelled.txt," + data + "imdb_labelled.txt";
  const std::string base = "train --task text-classify --model-config " + (dir / "config.json").string() +
                           " --tokenizer " + kShared + "/tokenizers/bert-base-uncased/vocab.txt --data " +
                           files + " --no-header --text-column 0 --max-length 48";
  const std::string common = base + " --model bert --label-column 1";
  const fs::path run_dir = dir / "run";
  auto run = graft(common + " --epochs 3 --lr 1e-3 --batch-size 32 --seed 3 --out " + run_dir.string());
  ASSERT_EQ(run.status, 0) << run.output;
  const double accuracy = number_after(run.output, "final validation accuracy:");
  std::cout << "[text e2e] sentiment tiny BERT from scratch: val accuracy " << accuracy << " (chance 0.5)\n";
  EXPECT_GE(accuracy, 0.70) << run.output;
  for (const char* file :
       {"graft.json", "metrics.csv", "training_curves.svg", "confusion_matrix.svg", "vocab.txt"})
    EXPECT_TRUE(fs::exists(run_dir / file)) << file;

  // eval reads the file with the columns the run was trained with.
  auto eval = graft("eval " + run_dir.string() + " --data " + data + "yelp_labelled.txt");
  ASSERT_EQ(eval.status, 0) << eval.output;
  EXPECT_GE(number_after(eval.output, "accuracy:"), 0.70) << eval.output;
  EXPECT_NE(eval.output.find("on 1000 examples"), std::string::npos) << eval.output;
  // features: BERT's pooled output, what the classifier reads; the run's classifier on it gives eval's
  // accuracy.
  const fs::path features_file = dir / "features.safetensors";
  auto features = graft("features " + run_dir.string() + " --data " + data + "yelp_labelled.txt --out " +
                        features_file.string());
  ASSERT_EQ(features.status, 0) << features.output;
  {
    const SafeTensorsReader reader(features_file.string()), model((run_dir / "model.safetensors").string());
    const torch::Tensor x = reader.load("features"), labels = reader.load("labels");
    ASSERT_EQ(x.size(0), 1000);
    EXPECT_EQ(x.size(1), config["hidden_size"].get<int64_t>());
    const torch::Tensor logits =
        torch::addmm(model.load("classifier.bias"), x, model.load("classifier.weight").t());
    const double accuracy = logits.argmax(1).eq(labels).to(torch::kDouble).mean().item<double>();
    EXPECT_NEAR(accuracy, number_after(eval.output, "accuracy:"), 1e-6) << features.output;
    EXPECT_NE(reader.metadata().at("ids").find("yelp_labelled.txt"), std::string::npos);
  }
  // --limit counts IDX images: refused by name for a text run (it was ignored).
  auto limited = graft("eval " + run_dir.string() + " --limit 10 --data " + data + "yelp_labelled.txt");
  EXPECT_EQ(limited.status, 1) << limited.output;
  EXPECT_NE(limited.output.find("--limit applies to image runs only (it picks images)"), std::string::npos)
      << limited.output;

  auto predict = graft("predict " + run_dir.string() +
                       " --json --top-k 2 --text \"Great phone, works perfectly.\""
                       " --text \"Terrible, it broke after a day.\"");
  ASSERT_EQ(predict.status, 0) << predict.output;
  const auto predictions = nlohmann::json::parse(predict.output.substr(predict.output.find('[')));
  ASSERT_EQ(predictions.size(), 2u);
  EXPECT_EQ(predictions[0]["top"][0]["label"], "1") << predict.output;
  EXPECT_EQ(predictions[1]["top"][0]["label"], "0") << predict.output;
  // --input is read whole and bounded: /dev/zero is refused by name, not read without end.
  auto endless = graft("predict " + run_dir.string() + " --input /dev/zero");
  EXPECT_EQ(endless.status, 1) << endless.output;
  EXPECT_NE(endless.output.find("/dev/zero"), std::string::npos) << endless.output;

  const fs::path exported = dir / "hf";
  auto export_run = graft("export " + run_dir.string() + " --format hf --out " + exported.string());
  ASSERT_EQ(export_run.status, 0) << export_run.output;
  expect_hf_folder(exported, "bert", "BertForSequenceClassification",
                   {"bert.embeddings.word_embeddings.weight", "bert.embeddings.position_embeddings.weight"});
  EXPECT_TRUE(fs::is_regular_file(exported / "vocab.txt"));
  EXPECT_FALSE(fs::exists(exported / "graft.json"));
  const auto exported_config = nlohmann::json::parse(read(exported / "config.json"));
  EXPECT_EQ(exported_config["id2label"]["1"], "1");
  // The exported Hugging Face folder (no graft.json) opens as a text run: the same predictions.
  auto from_hf = graft("predict " + exported.string() +
                       " --json --top-k 2 --text \"Great phone, works perfectly.\""
                       " --text \"Terrible, it broke after a day.\"");
  ASSERT_EQ(from_hf.status, 0) << from_hf.output;
  const auto hf_predictions = nlohmann::json::parse(from_hf.output.substr(from_hf.output.find('[')));
  EXPECT_EQ(hf_predictions[0]["top"][0]["label"], "1") << from_hf.output;
  EXPECT_EQ(hf_predictions[1]["top"][0]["label"], "0") << from_hf.output;
  // A second export to the same place would overwrite: refused.
  EXPECT_NE(graft("export " + run_dir.string() + " --out " + exported.string()).status, 0);
  // A folder of the user's named like the old temporary (OUT.tmp-export) was deleted; now it stays.
  fs::create_directories(dir / "hf2.tmp-export");
  std::ofstream(dir / "hf2.tmp-export" / "mine.txt") << "mine";
  auto beside = graft("export " + run_dir.string() + " --out " + (dir / "hf2").string());
  EXPECT_EQ(beside.status, 0) << beside.output;
  EXPECT_EQ(read(dir / "hf2.tmp-export" / "mine.txt"), "mine");
  // Export to "." (an empty working folder) worked only through a raw filesystem error; a second export
  // there is refused by name, and no temporary is left behind either way.
  fs::create_directories(dir / "here");
  const std::string in_here = "cd " + (dir / "here").string() + " &&";
  auto here = graft("export " + run_dir.string() + " --out .", in_here);
  EXPECT_EQ(here.status, 0) << here.output;
  EXPECT_TRUE(fs::is_regular_file(dir / "here" / "config.json"));
  auto again = graft("export " + run_dir.string() + " --out .", in_here);
  EXPECT_EQ(again.status, 1) << again.output;
  EXPECT_NE(again.output.find(".: already exists"), std::string::npos) << again.output;
  for (const auto& entry : fs::directory_iterator(dir))
    EXPECT_EQ(entry.path().filename().string().find(".tmp-export-"), std::string::npos) << entry.path();

  // --lora with this run as the base (a Hugging Face folder): branches beside query and value of the three
  // layers, the classifier trained whole (PEFT's SEQ_CLS); the run holds PEFT's files, config.json and the
  // tokenizer, not the model; eval loads the base from where it is; export writes it merged, or refuses.
  const fs::path lora_dir = dir / "lora";
  auto lora =
      graft("train --task text-classify --model bert --weights " + run_dir.string() + " --data " + files +
            " --no-header --text-column 0 --label-column 1 --max-length 48 --epochs 1 --lr 1e-3 "
            "--batch-size 32 --seed 3 --lora r=4,alpha=8,targets=query,value --out " +
            lora_dir.string());
  ASSERT_EQ(lora.status, 0) << lora.output;
  EXPECT_NE(
      lora.output.find("LoRA r=4 alpha=8 (scaling 2) on 6 layers (bert.encoder.layer.0.attention.self.query"),
      std::string::npos)
      << lora.output;
  const double lora_accuracy = number_after(lora.output, "final validation accuracy:");
  std::cout << "[text e2e] sentiment LoRA r=4 on the tiny BERT run: val accuracy " << lora_accuracy << "\n";
  EXPECT_GE(lora_accuracy, 0.70) << lora.output;
  EXPECT_FALSE(fs::exists(lora_dir / "model.safetensors"));
  EXPECT_TRUE(fs::exists(lora_dir / "vocab.txt"));
  const auto adapter = shapes((lora_dir / "adapter_model.safetensors").string());
  EXPECT_EQ(adapter.size(), 6u * 2 + 2) << "A and B of six layers, the classifier's weight and bias";
  EXPECT_EQ(adapter.at("base_model.model.bert.encoder.layer.0.attention.self.query.lora_A.weight"),
            (std::vector<int64_t>{4, config["hidden_size"].get<int64_t>()}));
  EXPECT_TRUE(adapter.count("base_model.model.classifier.weight"));
  EXPECT_EQ(nlohmann::json::parse(read(lora_dir / "adapter_config.json"))["task_type"], "SEQ_CLS");
  auto lora_eval = graft("eval " + lora_dir.string() + " --data " + data + "yelp_labelled.txt");
  ASSERT_EQ(lora_eval.status, 0) << lora_eval.output;
  const double lora_eval_accuracy = number_after(lora_eval.output, "accuracy:");
  EXPECT_GE(lora_eval_accuracy, 0.70) << lora_eval.output;
  auto unmerged_export = graft("export " + lora_dir.string() + " --out " + (dir / "lora_hf").string());
  EXPECT_EQ(unmerged_export.status, 1) << unmerged_export.output;
  EXPECT_NE(unmerged_export.output.find("add --merge"), std::string::npos) << unmerged_export.output;
  auto merged_export = graft("export " + lora_dir.string() + " --merge --out " + (dir / "lora_hf").string());
  ASSERT_EQ(merged_export.status, 0) << merged_export.output;
  expect_hf_folder(dir / "lora_hf", "bert", "BertForSequenceClassification",
                   {"bert.embeddings.word_embeddings.weight", "bert.embeddings.position_embeddings.weight"});
  // The merged folder is the adapter run's model: the same probabilities (float32 merge: within 1e-5).
  const std::string two_texts =
      " --json --top-k 2 --text \"Great phone, works perfectly.\" --text \"Terrible, it broke after a day.\"";
  auto adapter_predict = graft("predict " + lora_dir.string() + two_texts);
  auto merged_predict = graft("predict " + (dir / "lora_hf").string() + two_texts);
  ASSERT_EQ(adapter_predict.status, 0) << adapter_predict.output;
  ASSERT_EQ(merged_predict.status, 0) << merged_predict.output;
  const auto by_adapter =
      nlohmann::json::parse(adapter_predict.output.substr(adapter_predict.output.find('[')));
  const auto by_merged = nlohmann::json::parse(merged_predict.output.substr(merged_predict.output.find('[')));
  ASSERT_EQ(by_adapter.size(), 2u);
  ASSERT_EQ(by_merged.size(), 2u);
  for (size_t i = 0; i < 2; ++i)
    for (size_t k = 0; k < 2; ++k) {
      const auto& a = by_adapter[i]["top"][k];
      const auto& m = by_merged[i]["top"][k];
      EXPECT_EQ(a["label"], m["label"]);
      for (const auto& item : a.items()) {
        if (item.value().is_number()) {
          EXPECT_NEAR(item.value().get<double>(), m[item.key()].get<double>(), 1e-5) << item.key();
        }
      }
    }
  // --adapter lays the adapter on its base run: predict gives the adapter run's probabilities (the same
  // computation), eval its accuracy.
  auto laid_predict = graft("predict " + run_dir.string() + " --adapter " + lora_dir.string() + two_texts);
  ASSERT_EQ(laid_predict.status, 0) << laid_predict.output;
  EXPECT_EQ(nlohmann::json::parse(laid_predict.output.substr(laid_predict.output.find('['))), by_adapter);
  auto laid_eval = graft("eval " + run_dir.string() + " --adapter " + lora_dir.string() + " --data " + data +
                         "yelp_labelled.txt");
  ASSERT_EQ(laid_eval.status, 0) << laid_eval.output;
  EXPECT_EQ(number_after(laid_eval.output, "accuracy:"), lora_eval_accuracy) << laid_eval.output;
  auto lora_freeze =
      graft("train --task text-classify --model bert --weights " + run_dir.string() + " --data " + files +
            " --no-header --text-column 0 --label-column 1 --freeze all --lora "
            "r=4,targets=query --out " +
            (dir / "bad_lora").string());
  EXPECT_EQ(lora_freeze.status, 1) << lora_freeze.output;
  EXPECT_NE(lora_freeze.output.find("--freeze all does not apply to --lora"), std::string::npos)
      << lora_freeze.output;

  // Mistakes get messages that name what is wrong.
  auto wrong_tokenizer =
      graft("train --task text-classify --model-config " + (dir / "config.json").string() + " --tokenizer " +
            kShared + "/tokenizers/gpt2 --data " + files +
            " --no-header --text-column 0 --label-column 1 --epochs 1 --out " + (dir / "bad").string());
  EXPECT_NE(wrong_tokenizer.status, 0);
  EXPECT_NE(wrong_tokenizer.output.find("does not belong to this model"), std::string::npos)
      << wrong_tokenizer.output;
  auto wrong_column = graft(base + " --epochs 1 --label-column 2 --out " + (dir / "bad2").string());
  EXPECT_NE(wrong_column.status, 0);
  EXPECT_NE(wrong_column.output.find("expected at least 3"), std::string::npos) << wrong_column.output;
  auto wrong_model =
      graft(base + " --label-column 1 --epochs 1 --model gpt2 --out " + (dir / "bad3").string());
  EXPECT_NE(wrong_model.output.find("BertForSequenceClassification"), std::string::npos)
      << wrong_model.output;
  fs::remove_all(dir);
}

// One options table for every task: a --config file serves text runs too (it was refused: "--config is
// read for image tasks only"), flags override it, options of other tasks are refused by name before
// anything is read, and the resolved configuration is saved.
// The fixture's Llama shape (grouped-query attention, RMSNorm, rotary positions) with a tokenizer's
// vocabulary, `positions` and its bos/eos ids, written as dir/config.json; returns it.
nlohmann::json write_llama_config(const fs::path& dir, int64_t vocab, int64_t positions, int64_t bos,
                                  int64_t eos) {
  auto config = nlohmann::json::parse(read(kShared + "/fixtures/hf/llama/config.json"));
  config["vocab_size"] = vocab;
  config["max_position_embeddings"] = positions;
  config["pad_token_id"] = nullptr;
  config["bos_token_id"] = bos;
  config["eos_token_id"] = eos;
  std::ofstream(dir / "config.json") << config.dump(2);
  return config;
}

// RoBERTa's tokenizer.json layout (<s> 0, <pad> 1, </s> 2, <unk> 3, then GPT-2's byte-level BPE, and
// RobertaProcessing's <s> X </s>), made from GPT-2's file: roberta-base's own files are not in shared/.
void write_roberta_tokenizer(const fs::path& file) {
  auto doc = nlohmann::json::parse(read(kShared + "/tokenizers/tokenizer_json/gpt2.tokenizer.json"));
  nlohmann::json vocab = {{"<s>", 0}, {"<pad>", 1}, {"</s>", 2}, {"<unk>", 3}};
  for (const auto& [token, id] : doc["model"]["vocab"].items())
    if (token != "<|endoftext|>") vocab[token] = id.get<int64_t>() + 4;
  doc["model"]["vocab"] = vocab;
  doc["added_tokens"] = nlohmann::json::array();
  for (const auto& [content, id] :
       {std::pair<const char*, int>{"<s>", 0}, {"<pad>", 1}, {"</s>", 2}, {"<unk>", 3}})
    doc["added_tokens"].push_back({{"id", id},
                                   {"content", content},
                                   {"single_word", false},
                                   {"lstrip", false},
                                   {"rstrip", false},
                                   {"normalized", false},
                                   {"special", true}});
  doc["post_processor"] = {{"type", "RobertaProcessing"},
                           {"sep", {"</s>", 2}},
                           {"cls", {"<s>", 0}},
                           {"trim_offsets", true},
                           {"add_prefix_space", false}};
  fs::create_directories(file.parent_path());
  std::ofstream(file) << doc.dump();
}

// The other encoders through the task layer: the fixtures' DistilBERT and RoBERTa shapes with real
// vocabularies, trained from scratch on the sentiment sentences, then read back as Hugging Face folders
// named as transformers names them; DistilBERT takes a LoRA adapter whose two-layer head trains whole.
TEST(TextE2E, DistilBertAndRobertaClassifySentiment) {
  const auto dir = fresh_dir("encoders");
  const std::string data = kShared + "/data/sentiment_sentences/";
  const std::string files =
      data + "amazon_cells_labelled.txt," + data + "yelp_labelled.txt," + data + "imdb_labelled.txt";
  const std::string common = " --data " + files +
                             " --no-header --text-column 0 --label-column 1 --max-length 48 --batch-size 32"
                             " --seed 3";
  const std::string sentences =
      " --json --top-k 2 --text \"Great phone, works perfectly.\""
      " --text \"Terrible, it broke after a day.\"";
  auto expect_sentiment = [&](const std::string& what, const testing::Run& predict) {
    ASSERT_EQ(predict.status, 0) << what << ": " << predict.output;
    const auto top = nlohmann::json::parse(predict.output.substr(predict.output.find('[')));
    EXPECT_EQ(top[0]["top"][0]["label"], "1") << what << ": " << predict.output;
    EXPECT_EQ(top[1]["top"][0]["label"], "0") << what << ": " << predict.output;
  };

  // DistilBERT with BERT's uncased WordPiece vocabulary.
  auto distil_config = nlohmann::json::parse(read(kShared + "/fixtures/hf/distilbert/config.json"));
  distil_config["vocab_size"] = 30522;
  std::ofstream(dir / "distilbert.json") << distil_config.dump(2);
  const fs::path distil = dir / "distilbert";
  auto run = graft("train --task text-classify --model distilbert --model-config " +
                   (dir / "distilbert.json").string() + " --tokenizer " + kShared +
                   "/tokenizers/bert-base-uncased/vocab.txt" + common + " --epochs 3 --lr 1e-3 --out " +
                   distil.string());
  ASSERT_EQ(run.status, 0) << run.output;
  const double distil_accuracy = number_after(run.output, "final validation accuracy:");
  std::cout << "[text e2e] sentiment tiny DistilBERT from scratch: val accuracy " << distil_accuracy << "\n";
  EXPECT_GE(distil_accuracy, 0.70) << run.output;
  expect_hf_folder(distil, "distilbert", "DistilBertForSequenceClassification",
                   {"distilbert.embeddings.word_embeddings.weight", "classifier.weight", "classifier.bias"});
  expect_sentiment("distilbert", graft("predict " + distil.string() + sentences));
  // features: the first token's last hidden state, (N, dim).
  const fs::path features_file = dir / "features.safetensors";
  auto features = graft("features " + distil.string() + " --data " + data + "yelp_labelled.txt --out " +
                        features_file.string());
  ASSERT_EQ(features.status, 0) << features.output;
  EXPECT_EQ(SafeTensorsReader(features_file.string()).load("features").sizes(),
            torch::IntArrayRef({1000, 64}));

  const fs::path lora = dir / "distilbert_lora";
  auto lora_run =
      graft("train --task text-classify --weights " + distil.string() + common +
            " --epochs 1 --lr 1e-3 --lora r=4,alpha=8,targets=q_lin,v_lin --out " + lora.string());
  ASSERT_EQ(lora_run.status, 0) << lora_run.output;
  EXPECT_GE(number_after(lora_run.output, "final validation accuracy:"), 0.70) << lora_run.output;
  const auto adapter = shapes((lora / "adapter_model.safetensors").string());
  EXPECT_EQ(adapter.size(), 2u * 2 * 2 + 4)
      << "A and B of q_lin and v_lin in two layers, and the two-layer head";
  EXPECT_TRUE(adapter.count("base_model.model.distilbert.transformer.layer.1.attention.v_lin.lora_B.weight"));
  EXPECT_TRUE(adapter.count("base_model.model.pre_classifier.weight"));
  EXPECT_TRUE(adapter.count("base_model.model.classifier.weight"));
  const auto adapter_config = nlohmann::json::parse(read(lora / "adapter_config.json"));
  EXPECT_EQ(adapter_config["task_type"], "SEQ_CLS");
  EXPECT_NE(adapter_config["modules_to_save"].dump().find("pre_classifier"), std::string::npos)
      << adapter_config.dump();
  expect_sentiment("distilbert lora", graft("predict " + lora.string() + sentences));

  // RoBERTa: positions after the padding index, <s> ... </s>, the head on <s>.
  write_roberta_tokenizer(dir / "roberta_tokenizer" / "tokenizer.json");
  auto roberta_config = nlohmann::json::parse(read(kShared + "/fixtures/hf/roberta/config.json"));
  roberta_config["vocab_size"] = 50260;
  roberta_config["num_labels"] = 2;
  roberta_config.erase("id2label");
  roberta_config.erase("label2id");
  std::ofstream(dir / "roberta.json") << roberta_config.dump(2);
  const fs::path roberta = dir / "roberta";
  auto roberta_run =
      graft("train --task text-classify --model roberta --model-config " + (dir / "roberta.json").string() +
            " --tokenizer " + (dir / "roberta_tokenizer").string() + common + " --epochs 3 --lr 1e-3 --out " +
            roberta.string());
  ASSERT_EQ(roberta_run.status, 0) << roberta_run.output;
  const double roberta_accuracy = number_after(roberta_run.output, "final validation accuracy:");
  std::cout << "[text e2e] sentiment tiny RoBERTa from scratch: val accuracy " << roberta_accuracy << "\n";
  EXPECT_GE(roberta_accuracy, 0.70) << roberta_run.output;
  const fs::path exported = dir / "roberta_hf";
  auto export_run = graft("export " + roberta.string() + " --format hf --out " + exported.string());
  ASSERT_EQ(export_run.status, 0) << export_run.output;
  expect_hf_folder(exported, "roberta", "RobertaForSequenceClassification",
                   {"roberta.embeddings.word_embeddings.weight", "classifier.out_proj.weight",
                    "classifier.out_proj.bias"});
  EXPECT_TRUE(fs::is_regular_file(exported / "tokenizer.json"));
  expect_sentiment("roberta export", graft("predict " + exported.string() + sentences));
  // --model names the class the config builds: a BERT check on the RoBERTa config is refused by name.
  auto wrong = graft("train --task text-classify --model bert --model-config " +
                     (dir / "roberta.json").string() + " --tokenizer " +
                     (dir / "roberta_tokenizer").string() + common + " --out " + (dir / "never").string());
  EXPECT_NE(wrong.status, 0);
  EXPECT_NE(wrong.output.find("RobertaForSequenceClassification"), std::string::npos) << wrong.output;
  EXPECT_FALSE(fs::exists(dir / "never"));
  fs::remove_all(dir);
}

TEST(TextE2E, ConfigFilesServeTextRunsAndForeignOptionsAreRefused) {
  const auto dir = fresh_dir("text_config");
  auto config = nlohmann::json::parse(read(kShared + "/fixtures/hf/bert/config.json"));
  config["vocab_size"] = 30522;
  std::ofstream(dir / "config.json") << config.dump(2);
  const nlohmann::json options = {{"task", "text-classify"},
                                  {"model_config", (dir / "config.json").string()},
                                  {"tokenizer", kShared + "/tokenizers/bert-base-uncased/vocab.txt"},
                                  {"data", kShared + "/data/sentiment_sentences/amazon_cells_labelled.txt"},
                                  {"header", false},
                                  {"text_column", "0"},
                                  {"label_column", "1"},
                                  {"max_length", 24},
                                  {"epochs", 3},
                                  {"batch_size", 64}};
  std::ofstream(dir / "run.json") << options.dump(2);
  auto run =
      graft("train --config " + (dir / "run.json").string() + " --epochs 1 --out " + (dir / "run").string());
  ASSERT_EQ(run.status, 0) << run.output;
  const auto spec = nlohmann::json::parse(read(dir / "run" / "graft.json"));
  EXPECT_EQ(spec["training"]["max_length"], 24);  // from the file
  // Examples cut to that length are counted (reviews of up to 30 words do not fit in 24 tokens).
  EXPECT_NE(run.output.find("longer than --max-length 24 tokens, truncated)"), std::string::npos)
      << run.output;
  EXPECT_EQ(spec["training"]["epochs"], 1);           // the flag wins over the file's 3
  EXPECT_EQ(spec["training"]["header"], false);       // from the file
  EXPECT_EQ(spec["training"]["optimizer"], "adamw");  // the text recipe's default
  // The resolved configuration is printed once every option is checked.
  EXPECT_NE(run.output.find("graft train: resolved configuration"), std::string::npos) << run.output;

  for (const auto& [flags, expected] : std::vector<std::pair<std::string, std::string>>{
           {"--rotation 10",
            "--rotation does not apply to --task text-classify; it is an option of "
            "image-classify and video-classify"},
           {"--block-size 64", "--block-size does not apply to --task text-classify"},
           {"--frames 8", "--frames does not apply to --task text-classify"},
           {"--batch-size 0", "--batch-size must lie in 1..1048576, got 0"},
           {"--optimizer adamx", "--optimizer adamx: expected sgd, adam or adamw"}}) {
    auto refused = graft("train --config " + (dir / "run.json").string() + " " + flags + " --out " +
                         (dir / "refused").string());
    EXPECT_EQ(refused.status, 1) << flags << "\n" << refused.output;
    EXPECT_NE(refused.output.find(expected), std::string::npos) << flags << "\n" << refused.output;
    EXPECT_EQ(refused.output.find("resolved configuration"), std::string::npos) << refused.output;
    EXPECT_FALSE(fs::exists(dir / "refused")) << flags;
  }
  // Without --max-length the length is the model's positions (40 in the fixture), said in the log; the run
  // asked for 128 and stopped with "--max-length 128 exceeds the model's 40 positions" (#15.12).
  nlohmann::json no_length = options;
  no_length.erase("max_length");
  std::ofstream(dir / "no_length.json") << no_length.dump(2);
  auto positions = graft("train --config " + (dir / "no_length.json").string() + " --epochs 1 --out " +
                         (dir / "positions").string());
  ASSERT_EQ(positions.status, 0) << positions.output;
  EXPECT_NE(positions.output.find("--max-length 40: the model's 40 positions"), std::string::npos)
      << positions.output;
  EXPECT_EQ(nlohmann::json::parse(read(dir / "positions" / "graft.json"))["max_length"], 40);
  std::ofstream(dir / "video.json") << R"({"task": "text-classify", "temporal": "lstm:8"})";
  auto from_file = graft("train --config " + (dir / "video.json").string() + " --data x --out y");
  EXPECT_EQ(from_file.status, 1) << from_file.output;
  EXPECT_NE(from_file.output.find("--temporal (in " + (dir / "video.json").string() +
                                  ") does not apply to --task text-classify"),
            std::string::npos)
      << from_file.output;
  fs::remove_all(dir);
}

// --schedule step with --step-size and --gamma reaches text runs (they were dropped: the rate stayed
// flat), and both are in the resolved configuration graft.json keeps.
TEST(TextE2E, StepScheduleFlagsReachTextRuns) {
  const auto dir = fresh_dir("text_step");
  auto config = nlohmann::json::parse(read(kShared + "/fixtures/hf/bert/config.json"));
  config["vocab_size"] = 30522;
  std::ofstream(dir / "config.json") << config.dump(2);
  const std::string data = kShared + "/data/sentiment_sentences/amazon_cells_labelled.txt";
  auto run = graft("train --task text-classify --model-config " + (dir / "config.json").string() +
                   " --tokenizer " + kShared + "/tokenizers/bert-base-uncased/vocab.txt --data " + data +
                   " --no-header --text-column 0 --label-column 1 --max-length 32 --epochs 2 --lr 1e-3 "
                   "--schedule step --step-size 1 --gamma 0.5 --batch-size 64 --out " +
                   (dir / "run").string());
  ASSERT_EQ(run.status, 0) << run.output;
  std::ifstream csv(dir / "run" / "metrics.csv");
  std::string header, line;
  std::getline(csv, header);
  std::vector<std::string> names;
  for (std::stringstream h(header); std::getline(h, names.emplace_back(), ',');) {
  }
  const size_t lr = static_cast<size_t>(std::find(names.begin(), names.end(), "lr") - names.begin());
  std::vector<double> rates;
  while (std::getline(csv, line)) {
    std::vector<std::string> cells;
    for (std::stringstream c(line); std::getline(c, cells.emplace_back(), ',');) {
    }
    ASSERT_LT(lr, cells.size()) << header << "\n" << line;
    rates.push_back(std::stod(cells[lr]));
  }
  ASSERT_EQ(rates.size(), 2u) << header;
  EXPECT_NEAR(rates[1] / rates[0], 0.5, 1e-6) << "lr per epoch " << rates[0] << ", " << rates[1];
  const auto spec = nlohmann::json::parse(read(dir / "run" / "graft.json"));
  EXPECT_EQ(spec["training"]["step_size"], 1);
  EXPECT_EQ(spec["training"]["gamma"], 0.5);
  // A negative --max-length was accepted and then asked for the memory of the longest line times -1 as
  // size_t.
  auto negative =
      graft("train --task text-classify --model-config " + (dir / "config.json").string() + " --tokenizer " +
            kShared + "/tokenizers/bert-base-uncased/vocab.txt --data " + data +
            " --no-header --text-column 0 --label-column 1 --max-length -1 --out " + (dir / "bad").string());
  EXPECT_EQ(negative.status, 1) << negative.output;
  EXPECT_NE(negative.output.find("--max-length must lie in 2..65536"), std::string::npos) << negative.output;
  EXPECT_FALSE(fs::exists(dir / "bad"));
  fs::remove_all(dir);
}

// A causal-lm run at --precision bf16 (GPT-2's matrix products in bf16, its layer norms and softmax in
// float32) against the same run at fp32, from scratch on the plays with the same seed: both lower their
// validation loss from epoch 1 to 2 by the same ~0.65 nats, and end within 0.1 nats of each other (bf16
// rounding moves each step a little; a broken bf16 backward would stall near epoch 1's 9.3). eval and
// generate take --precision too.
// The Llama family through the task layer: the fixture's Llama shape (grouped-query attention, RMSNorm,
// rotary positions) with the GPT-2 vocabulary, trained from scratch on the plays, evaluated, generating,
// taking a LoRA adapter on q_proj/v_proj as PEFT names them, and classifying sentiment with
// LlamaForSequenceClassification; each run directory is a Hugging Face folder of the same class.
TEST(TextE2E, LlamaLearnsThePlaysTakesLoraAndClassifies) {
  const auto dir = fresh_dir("llama");
  std::string text = read(kShared + "/data/tinyshakespeare/input.txt");
  std::ofstream(dir / "part1.txt") << text.substr(0, 60000);
  std::ofstream(dir / "part2.txt") << text.substr(60000, 60000);
  std::ofstream(dir / "val.txt") << text.substr(text.size() - 20000);
  const auto config = write_llama_config(dir, 50257, 64, 50256, 50256);
  const std::string val = " --val-data " + (dir / "val.txt").string();
  const fs::path base = dir / "base";
  auto pretrain =
      graft("train --task causal-lm --model llama --model-config " + (dir / "config.json").string() +
            " --tokenizer " + kShared + "/tokenizers/gpt2 --data " + (dir / "part1.txt").string() + val +
            " --batch-size 16 --epochs 2 --lr 3e-3 --out " + base.string());
  ASSERT_EQ(pretrain.status, 0) << pretrain.output;
  EXPECT_NE(pretrain.output.find("--block-size 64: the model's 64 positions"), std::string::npos)
      << pretrain.output;
  const double first = number_after(pretrain.output, "epoch 1/2 .*val_loss");
  const double ppl = number_after(pretrain.output, "final validation perplexity:");
  std::cout << "[text e2e] tiny Llama from scratch: val loss " << first << " after epoch 1, perplexity "
            << ppl << " after 2\n";
  EXPECT_LT(std::log(ppl), first) << pretrain.output;
  EXPECT_LT(ppl, 5000.0) << "a tenth of uniform over 50,257 tokens: far from what 2 epochs on the plays give";
  const auto saved = nlohmann::json::parse(read(base / "config.json"));
  EXPECT_EQ(saved["architectures"][0], "LlamaForCausalLM");
  EXPECT_EQ(saved["num_key_value_heads"], 2);
  EXPECT_FALSE(saved.contains("id2label"));
  {
    std::set<std::string> ours, theirs;
    for (const auto& item : shapes((base / "model.safetensors").string())) ours.insert(item.first);
    for (const auto& item : shapes(kShared + "/fixtures/hf/llama/model.safetensors"))
      if (item.first.find("rotary_emb.inv_freq") == std::string::npos) theirs.insert(item.first);
    EXPECT_EQ(ours, theirs) << "the run's tensors are not named as transformers names LlamaForCausalLM's";
  }
  auto eval = graft("eval " + base.string() + " --data " + (dir / "val.txt").string());
  ASSERT_EQ(eval.status, 0) << eval.output;
  EXPECT_NEAR(number_after(eval.output, "perplexity:"), ppl, ppl * 0.01) << eval.output;
  const std::string greedy = "generate " + base.string() + " --prompt \"ROMEO:\" --max-new-tokens 8";
  auto once = graft(greedy), twice = graft(greedy);
  ASSERT_EQ(once.status, 0) << once.output;
  EXPECT_EQ(once.output, twice.output);
  EXPECT_EQ(once.output.rfind("ROMEO:", 0), 0u) << once.output;
  auto too_long = graft("generate " + base.string() + " --prompt x --max-new-tokens 64");
  EXPECT_NE(too_long.status, 0);
  EXPECT_NE(too_long.output.find("64 positions"), std::string::npos) << too_long.output;
  // GPT-2's tokenizer has no chat template: a system message has nowhere to go.
  auto system = graft("chat " + base.string() + " --system \"Be brief.\" < /dev/null");
  EXPECT_NE(system.status, 0);
  EXPECT_NE(system.output.find("--system needs a chat template"), std::string::npos) << system.output;

  const fs::path lora = dir / "lora";
  auto lora_run =
      graft("train --task causal-lm --weights " + base.string() + " --data " + (dir / "part2.txt").string() +
            val + " --batch-size 16 --epochs 1 --lr 3e-3 --lora r=4,alpha=8,targets=q_proj,v_proj --out " +
            lora.string());
  ASSERT_EQ(lora_run.status, 0) << lora_run.output;
  EXPECT_LT(number_after(lora_run.output, "final validation perplexity:"), ppl) << lora_run.output;
  EXPECT_EQ(shapes((lora / "adapter_model.safetensors").string()),
            shapes(kShared + "/fixtures/peft/llama_lora/adapter_model.safetensors"))
      << "graft's adapter is not named and shaped as PEFT's on the same Llama shape";
  const auto adapter = nlohmann::json::parse(read(lora / "adapter_config.json"));
  EXPECT_EQ(adapter["task_type"], "CAUSAL_LM");
  EXPECT_EQ(adapter["fan_in_fan_out"], false);
  auto lora_text = graft("generate " + lora.string() + " --prompt \"ROMEO:\" --max-new-tokens 8");
  ASSERT_EQ(lora_text.status, 0) << lora_text.output;
  EXPECT_EQ(lora_text.output.rfind("ROMEO:", 0), 0u) << lora_text.output;

  // Classification: the plays' model with a new `score` head on the sentiment sentences; every row read at
  // its last real token (GPT-2's tokenizer pads with eos).
  const std::string data = kShared + "/data/sentiment_sentences/";
  const fs::path classifier = dir / "classifier";
  auto classify =
      graft("train --task text-classify --weights " + base.string() + " --data " + data +
            "yelp_labelled.txt," + data +
            "amazon_cells_labelled.txt --no-header --text-column 0 --label-column 1 --max-length 48"
            " --epochs 2 --lr 1e-3 --batch-size 32 --seed 3 --out " +
            classifier.string());
  ASSERT_EQ(classify.status, 0) << classify.output;
  const double accuracy = number_after(classify.output, "final validation accuracy:");
  std::cout << "[text e2e] tiny Llama sentiment: val accuracy " << accuracy << " (chance 0.5)\n";
  EXPECT_GE(accuracy, 0.6) << classify.output;
  const auto classifier_config = nlohmann::json::parse(read(classifier / "config.json"));
  EXPECT_EQ(classifier_config["architectures"][0], "LlamaForSequenceClassification");
  EXPECT_EQ(classifier_config["id2label"].size(), 2u);
  EXPECT_EQ(shapes((classifier / "model.safetensors").string()).at("score.weight"),
            (std::vector<int64_t>{2, config["hidden_size"].get<int64_t>()}));
  auto predict = graft("predict " + classifier.string() + " --text \"The food was wonderful\"");
  ASSERT_EQ(predict.status, 0) << predict.output;
  auto wrong = graft("train --task text-classify --model gpt2 --weights " + base.string() + " --data " +
                     data + "yelp_labelled.txt --no-header --text-column 0 --label-column 1 --out " +
                     (dir / "never").string());
  EXPECT_NE(wrong.status, 0);
  EXPECT_NE(wrong.output.find("LlamaForSequenceClassification"), std::string::npos) << wrong.output;
  EXPECT_FALSE(fs::exists(dir / "never"));
  std::filesystem::remove_all(dir);
}

// Chat fine-tuning: conversations (JSON Lines of "messages", from examples/data/football_chat.txt) rendered
// by SmolLM2's chat template with the loss on the assistant turns only, on the fixture's Llama shape with
// SmolLM2's vocabulary; eval reads conversations too, and `graft chat` talks in the template's format (the
// plain-prefix flags refused by name there, --system refused where there is no template).
TEST(TextE2E, ChatModelTrainsOnAssistantTurnsAndChats) {
  const auto dir = fresh_dir("chat");
  const std::string tokenizer = kShared + "/tokenizers/smollm2_135m_instruct";
  std::ifstream lines(std::string(GRAFT_SOURCE_DIR) + "/examples/data/football_chat.txt");
  std::ofstream chats(dir / "chats.jsonl");
  std::string line;
  int written = 0;
  while (std::getline(lines, line)) {
    const size_t bot = line.find(" Bot: ");
    if (line.rfind("User: ", 0) != 0 || bot == std::string::npos) continue;
    nlohmann::json messages = nlohmann::json::array();
    if (written % 2 == 0) messages.push_back({{"role", "system"}, {"content", "You are a football pundit."}});
    messages.push_back({{"role", "user"}, {"content", line.substr(6, bot - 6)}});
    messages.push_back({{"role", "assistant"}, {"content", line.substr(bot + 6)}});
    chats << nlohmann::json{{"messages", messages}}.dump() << "\n";
    ++written;
  }
  chats.close();
  ASSERT_GE(written, 30);
  write_llama_config(dir, 49152, 128, 1, 2);  // SmolLM2's vocabulary, <|im_start|> and <|im_end|>
  const fs::path run_dir = dir / "run";
  auto run =
      graft("train --task causal-lm --model llama --model-config " + (dir / "config.json").string() +
            " --tokenizer " + tokenizer + " --data " + (dir / "chats.jsonl").string() +
            " --block-size 128 --batch-size 8 --epochs 4 --lr 3e-3 --seed 1 --out " + run_dir.string());
  ASSERT_EQ(run.status, 0) << run.output;
  EXPECT_NE(run.output.find("conversations rendered by"), std::string::npos) << run.output;
  EXPECT_NE(run.output.find("the loss counts the assistant turns"), std::string::npos) << run.output;
  const double first = number_after(run.output, "epoch 1/4 .*val_loss");
  const double last = number_after(run.output, "epoch 4/4 .*val_loss");
  std::cout << "[text e2e] chat fine-tuning: assistant-turn val loss " << first << " -> " << last << "\n";
  EXPECT_LT(last, first) << run.output;
  const auto tokenizer_config = nlohmann::json::parse(read(run_dir / "tokenizer_config.json"));
  EXPECT_TRUE(tokenizer_config.contains("chat_template")) << "the run keeps the template it was trained with";

  auto eval = graft("eval " + run_dir.string() + " --data " + (dir / "chats.jsonl").string());
  ASSERT_EQ(eval.status, 0) << eval.output;
  EXPECT_GT(number_after(eval.output, "perplexity:"), 1.0) << eval.output;

  auto chat = graft("chat " + run_dir.string() + " --max-new-tokens 12 --system \"Be brief.\" < " +
                        (dir / "questions.txt").string(),
                    "printf 'How long is a football match?\\nWho keeps goal?\\n' > " +
                        (dir / "questions.txt").string() + " &&");
  ASSERT_EQ(chat.status, 0) << chat.output;
  auto prefixed = graft("chat " + run_dir.string() + " --user-prefix \"U: \" < /dev/null");
  EXPECT_NE(prefixed.status, 0);
  EXPECT_NE(prefixed.output.find("--user-prefix does not apply"), std::string::npos) << prefixed.output;
  fs::remove_all(dir);
}

TEST(TextE2E, Gpt2TrainsAtBf16AsAtFp32) {
  const auto dir = fresh_dir("gpt2_bf16");
  std::string text = read(kShared + "/data/tinyshakespeare/input.txt");
  std::ofstream(dir / "part1.txt") << text.substr(0, 60000);
  std::ofstream(dir / "val.txt") << text.substr(text.size() - 20000);
  auto config = nlohmann::json::parse(read(kShared + "/fixtures/hf/gpt2/config.json"));
  config["vocab_size"] = 50257;
  config["n_positions"] = 64;
  std::ofstream(dir / "config.json") << config.dump(2);
  const std::string train =
      "train --task causal-lm --model gpt2 --model-config " + (dir / "config.json").string() +
      " --tokenizer " + kShared + "/tokenizers/gpt2 --data " + (dir / "part1.txt").string() + " --val-data " +
      (dir / "val.txt").string() + " --block-size 64 --batch-size 16 --epochs 2 --lr 3e-3 --out ";
  auto fp32 = graft(train + (dir / "fp32").string());
  auto bf16 = graft(train + (dir / "bf16").string() + " --precision bf16");
  ASSERT_EQ(fp32.status, 0) << fp32.output;
  ASSERT_EQ(bf16.status, 0) << bf16.output;
  const double l32 = std::log(number_after(fp32.output, "final validation perplexity:"));
  const double l16 = std::log(number_after(bf16.output, "final validation perplexity:"));
  const double first16 = number_after(bf16.output, "epoch 1/2 .*val_loss");
  std::cout << "[e2e] gpt2 from scratch, val loss after 2 epochs: fp32 " << l32 << ", bf16 " << l16
            << " (bf16 epoch 1: " << first16 << ")\n";
  EXPECT_LT(l16, first16 - 0.3) << bf16.output;
  EXPECT_NEAR(l16, l32, 0.1) << bf16.output;
  const auto saved = nlohmann::json::parse(read(dir / "bf16" / "graft.json"));
  EXPECT_EQ(saved["training"]["precision"], "bf16");

  auto eval = graft("eval " + (dir / "bf16").string() + " --data " + (dir / "val.txt").string() +
                    " --precision bf16");
  ASSERT_EQ(eval.status, 0) << eval.output;
  EXPECT_NEAR(std::log(number_after(eval.output, "perplexity:")), l16, 0.01) << eval.output;
  auto generate = graft("generate " + (dir / "bf16").string() +
                        " --prompt \"ROMEO:\" --max-new-tokens 5 --precision bf16");
  ASSERT_EQ(generate.status, 0) << generate.output;
  EXPECT_NE(generate.output.find("ROMEO:"), std::string::npos) << generate.output;
  std::filesystem::remove_all(dir);
}

TEST(TextE2E, Gpt2FineTuneLowersPerplexityAndGeneratesReproducibly) {
  const auto dir = fresh_dir("shakespeare");
  std::string text = read(kShared + "/data/tinyshakespeare/input.txt");
  ASSERT_GT(text.size(), 1000000u);
  std::ofstream(dir / "part1.txt") << text.substr(0, 60000);
  std::ofstream(dir / "part2.txt") << text.substr(60000, 60000);
  std::ofstream(dir / "val.txt") << text.substr(text.size() - 20000);
  auto config = nlohmann::json::parse(read(kShared + "/fixtures/hf/gpt2/config.json"));
  config["vocab_size"] = 50257;
  config["n_positions"] = 64;
  std::ofstream(dir / "config.json") << config.dump(2);
  const std::string val = " --val-data " + (dir / "val.txt").string();

  // A "pretrained" model: trained from scratch on the first part of the plays.
  const fs::path base = dir / "base";
  auto pretrain =
      graft("train --task causal-lm --model gpt2 --model-config " + (dir / "config.json").string() +
            " --tokenizer " + kShared + "/tokenizers/gpt2 --data " + (dir / "part1.txt").string() + val +
            " --block-size 64 --batch-size 16 --epochs 2 --lr 3e-3 --out " + base.string());
  ASSERT_EQ(pretrain.status, 0) << pretrain.output;
  EXPECT_NE(read(base / "metrics.csv").find("val_perplexity"), std::string::npos);
  auto before = graft("eval " + base.string() + " --data " + (dir / "val.txt").string());
  ASSERT_EQ(before.status, 0) << before.output;
  const double ppl_before = number_after(before.output, "perplexity:");
  ASSERT_GT(ppl_before, 1.0) << before.output;
  EXPECT_LT(ppl_before, 50257.0) << "no better than uniform over the vocabulary";

  // Junk in the weights folder's config.json stays out of the run, whose config.json is written from the
  // parsed values (a nested key was copied through, 42 KB became 800 MB: #14.15).
  {
    auto base_config = nlohmann::json::parse(read(base / "config.json"));
    nlohmann::json junk = "deep";
    for (int i = 0; i < 100; ++i) junk = nlohmann::json::array({junk, i});  // within the 128-level limit
    base_config["task_specific_params"] = junk;
    std::ofstream(base / "config.json") << base_config.dump();
  }
  // Fine-tuned from its run directory on more text: validation perplexity drops.
  const fs::path tuned = dir / "tuned";
  auto finetune =
      graft("train --task causal-lm --weights " + base.string() + " --data " + (dir / "part2.txt").string() +
            val + " --block-size 64 --batch-size 16 --epochs 2 --lr 2e-3 --out " + tuned.string());
  ASSERT_EQ(finetune.status, 0) << finetune.output;
  const double ppl_after = number_after(finetune.output, "final validation perplexity:");
  std::cout << "[text e2e] tiny GPT-2 val perplexity " << ppl_before << " -> " << ppl_after
            << " after fine-tuning\n";
  EXPECT_LT(ppl_after, ppl_before * 0.95) << finetune.output;
  expect_hf_folder(tuned, "gpt2", "GPT2LMHeadModel",
                   {"transformer.wte.weight", "transformer.wpe.weight", "lm_head.weight"});
  EXPECT_TRUE(fs::is_regular_file(tuned / "vocab.json"));
  EXPECT_TRUE(fs::is_regular_file(tuned / "merges.txt"));
  const auto tuned_config = nlohmann::json::parse(read(tuned / "config.json"));
  EXPECT_FALSE(tuned_config.contains("task_specific_params"));
  EXPECT_EQ(tuned_config["n_positions"], 64);
  EXPECT_LT(fs::file_size(tuned / "config.json"), 4096u);

  // Seeded sampling repeats exactly; another seed gives other text; greedy needs no seed.
  const std::string sample =
      "generate " + tuned.string() +
      " --prompt \"ROMEO:\" --max-new-tokens 24 --temperature 0.9 --top-k 50 --top-p 0.95"
      " --repetition-penalty 1.1 --seed ";
  auto first = graft(sample + "7"), second = graft(sample + "7"), other = graft(sample + "8");
  ASSERT_EQ(first.status, 0) << first.output;
  EXPECT_EQ(first.output, second.output);
  EXPECT_NE(first.output, other.output);
  EXPECT_EQ(first.output.rfind("ROMEO:", 0), 0u) << first.output;
  EXPECT_GT(first.output.size(), std::string("ROMEO:\n").size() + 10) << first.output;
  auto greedy = graft("generate " + tuned.string() + " --prompt \"JULIET:\" --max-new-tokens 12");
  EXPECT_EQ(greedy.output,
            graft("generate " + tuned.string() + " --prompt \"JULIET:\" --max-new-tokens 12").output);
  auto too_long = graft("generate " + tuned.string() + " --prompt x --max-new-tokens 64");
  EXPECT_NE(too_long.status, 0);
  EXPECT_NE(too_long.output.find("64 positions"), std::string::npos) << too_long.output;

  // --lora on the base: branches beside GPT-2's c_attn (Conv1D: fan_in_fan_out, as PEFT sets it); the
  // adapter alone lowers the perplexity, generate runs on the adapter run, and export --merge gives a
  // plain Hugging Face folder that generates the same greedy text.
  const fs::path lora = dir / "lora";
  auto lora_run = graft(
      "train --task causal-lm --weights " + base.string() + " --data " + (dir / "part2.txt").string() + val +
      " --block-size 64 --batch-size 16 --epochs 2 --lr 3e-3 --lora r=8,alpha=16,targets=c_attn "
      "--out " +
      lora.string());
  ASSERT_EQ(lora_run.status, 0) << lora_run.output;
  const double ppl_lora = number_after(lora_run.output, "final validation perplexity:");
  std::cout << "[text e2e] tiny GPT-2 val perplexity " << ppl_before << " -> " << ppl_lora
            << " with a LoRA adapter (r=8 on c_attn)\n";
  EXPECT_LT(ppl_lora, ppl_before) << lora_run.output;
  const auto lora_config = nlohmann::json::parse(read(lora / "adapter_config.json"));
  EXPECT_EQ(lora_config["task_type"], "CAUSAL_LM");
  EXPECT_EQ(lora_config["fan_in_fan_out"], true);
  EXPECT_EQ(shapes((lora / "adapter_model.safetensors").string())
                .at("base_model.model.transformer.h.0.attn.c_attn.lora_B.weight"),
            (std::vector<int64_t>{3 * config["n_embd"].get<int64_t>(), 8}));
  const std::string greedy_lora = " --prompt \"JULIET:\" --max-new-tokens 12";
  auto lora_text = graft("generate " + lora.string() + greedy_lora);
  ASSERT_EQ(lora_text.status, 0) << lora_text.output;
  EXPECT_EQ(lora_text.output.rfind("JULIET:", 0), 0u) << lora_text.output;
  ASSERT_EQ(graft("export " + lora.string() + " --merge --out " + (dir / "lora_merged").string()).status, 0);
  EXPECT_EQ(graft("generate " + (dir / "lora_merged").string() + greedy_lora).output, lora_text.output);
  // The same adapter laid on its base folder by --adapter: the same text, the adapter said on stderr first.
  auto laid = graft("generate " + base.string() + " --adapter " + lora.string() + greedy_lora);
  ASSERT_EQ(laid.status, 0) << laid.output;
  const std::string said = "adapter " + lora.string() + ": LoRA r=8 alpha=16 on " +
                           std::to_string(config["n_layer"].get<int64_t>()) + " layers\n";
  ASSERT_EQ(laid.output.rfind(said, 0), 0u) << laid.output;
  EXPECT_EQ(laid.output.substr(said.size()), lora_text.output);

  // Block sizes are checked before any text is read: 1 gave a NaN loss (0, which divided by zero, now stands
  // for the model's positions, as the default does).
  for (const char* bad : {"1", "-5"}) {
    auto refused =
        graft("train --task causal-lm --weights " + tuned.string() + " --data " +
              (dir / "part2.txt").string() + " --block-size " + bad + " --out " + (dir / "bad").string());
    EXPECT_EQ(refused.status, 1) << refused.output;
    EXPECT_NE(refused.output.find(
                  std::string("--block-size must lie in 2..65536 (a token and the next one to predict, "
                              "at least; 0: the model's positions), got ") +
                  bad),
              std::string::npos)
        << refused.output;
    EXPECT_FALSE(fs::exists(dir / "bad"));
  }
  // A run whose graft.json says block_size 0 (edited, or written by a hostile hand) is refused by eval by
  // name.
  fs::copy(tuned, dir / "zero", fs::copy_options::recursive);
  auto zero_spec = nlohmann::json::parse(read(dir / "zero" / "graft.json"));
  zero_spec["block_size"] = 0;
  std::ofstream(dir / "zero" / "graft.json") << zero_spec.dump(2);
  auto zero = graft("eval " + (dir / "zero").string() + " --data " + (dir / "val.txt").string());
  EXPECT_EQ(zero.status, 1) << zero.output;
  EXPECT_NE(zero.output.find("graft.json: field 'block_size' is 0 (expected an integer in 2..65536)"),
            std::string::npos)
      << zero.output;
  zero_spec["block_size"] = nlohmann::json::array({1, 2});
  std::ofstream(dir / "zero" / "graft.json") << zero_spec.dump(2);
  zero = graft("eval " + (dir / "zero").string() + " --data " + (dir / "val.txt").string());
  EXPECT_NE(zero.output.find("field 'block_size' is [1,2] (expected an integer in 2..65536)"),
            std::string::npos)
      << zero.output;

  // chat: one reply line per input line.
  std::ofstream(dir / "questions.txt") << "Who art thou?\nWhat news?\n";
  auto chat = graft("chat " + tuned.string() + " --max-new-tokens 8 --seed 1 --temperature 0.7 < " +
                    (dir / "questions.txt").string());
  ASSERT_EQ(chat.status, 0) << chat.output;
  size_t replies = 0;
  for (size_t at = chat.output.find("Bot: "); at != std::string::npos; at = chat.output.find("Bot: ", at + 1))
    ++replies;
  EXPECT_EQ(replies, 2u) << chat.output;

  // One example per line, padding masked out of the loss.
  std::ofstream(dir / "qa.jsonl")
      << "{\"text\": \"Q: Who scored? A: Messi.\"}\n{\"text\": \"Q: Who won? A: Spain.\"}\n"
         "{\"text\": \"Q: Where? A: Madrid.\"}\n{\"text\": \"Q: When? A: Sunday.\"}\n";
  auto lines =
      graft("train --task causal-lm --weights " + tuned.string() + " --data " + (dir / "qa.jsonl").string() +
            " --line-by-line --block-size 32 --batch-size 2 --epochs 1 --val-split 0.25 --out " +
            (dir / "qa").string());
  ASSERT_EQ(lines.status, 0) << lines.output;
  EXPECT_NE(lines.output.find("4 lines"), std::string::npos) << lines.output;
  EXPECT_GT(number_after(lines.output, "final validation perplexity:"), 1.0) << lines.output;
  fs::remove_all(dir);
}

}  // namespace
}  // namespace graft
