// Text data files (CSV with RFC 4180 quoting, TSV as the UCI sentiment files, JSON Lines), label order,
// language-model documents, and the causal-LM loss and token metrics against hand-computed values.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <filesystem>
#include <fstream>

#include "graft/errors.h"
#include "graft/text_data.h"
#include "graft/trainer.h"

namespace graft {
namespace {

namespace fs = std::filesystem;

fs::path write(const std::string& name, const std::string& contents) {
  const fs::path dir = fs::temp_directory_path() / ("graft_text_data_" + std::to_string(getpid()));
  fs::create_directories(dir);
  const fs::path path = dir / name;
  std::ofstream(path, std::ios::binary) << contents;
  return path;
}

template <class F>
std::string error_of(F f) {
  try {
    f();
  } catch (const Error& e) {
    return e.what();
  }
  return "";
}

TEST(TextData, CsvQuotingHeaderAndPairs) {
  const auto path = write("reviews.csv",
                          "id,sentence,other,label\r\n"
                          "1,\"Great, really \"\"great\"\" phone\",x,pos\r\n"
                          "2,\"two\nlines\",y,neg\r\n"
                          "\n"
                          "3,  plain  ,z,  pos \r\n");
  TextColumns columns;
  columns.text = "sentence";
  columns.text_pair = "other";
  const auto examples = read_text_examples(path.string(), columns);
  ASSERT_EQ(examples.size(), 3u);
  EXPECT_EQ(examples[0].text, "Great, really \"great\" phone");
  EXPECT_EQ(examples[0].text_pair, "x");
  EXPECT_EQ(examples[0].label, "pos");
  EXPECT_EQ(examples[1].text, "two\nlines");
  EXPECT_EQ(examples[2].text, "plain");
  EXPECT_EQ(examples[2].label, "pos");
  EXPECT_EQ(examples[2].where, path.string() + ":6");  // the quoted newline and the blank line count
  // The record with a line break inside quotes spans two lines; the others one (the last has no newline).
  EXPECT_EQ(examples[0].lines, 1u);
  EXPECT_EQ(examples[1].lines, 2u);
  EXPECT_EQ(examples[2].lines, 1u);
  EXPECT_EQ(label_classes(examples), (std::vector<std::string>{"neg", "pos"}));

  columns.text = "review";
  const std::string missing = error_of([&] { read_text_examples(path.string(), columns); });
  EXPECT_NE(missing.find("no column named 'review'"), std::string::npos) << missing;
  EXPECT_NE(missing.find("sentence"), std::string::npos) << missing;
}

// Careless files refused by name (#14.19): a NUL byte in a label (it became a class of its own), a header
// naming a column twice, the text column equal to the label column.
TEST(TextData, LabelsHeadersAndColumnsThatCannotBeMeant) {
  TextColumns columns;
  const auto nul = write("nul.csv", std::string("text,label\ngood,pos\nbad,ne\0g\n", 29));
  EXPECT_NE(error_of([&] {
              read_text_examples(nul.string(), columns);
            }).find("line 3: the label holds a control character (byte 0)"),
            std::string::npos);
  const auto twice = write("twice.csv", "text,label,text\na,b,c\n");
  EXPECT_NE(error_of([&] {
              read_text_examples(twice.string(), columns);
            }).find("the header names 'text' twice (columns 0 and 2)"),
            std::string::npos);
  const auto fine = write("fine.csv", "text,label\na,b\n");
  columns.label = "text";
  EXPECT_NE(error_of([&] {
              read_text_examples(fine.string(), columns);
            }).find("--text-column and --label-column name the same column ('text')"),
            std::string::npos);
  const auto lines = write("same.jsonl", "{\"text\": \"a\"}\n");
  EXPECT_NE(error_of([&] { read_text_examples(lines.string(), columns); }).find("name the same key"),
            std::string::npos);
}

TEST(TextData, TsvWithoutHeaderAsTheSentimentFiles) {
  // The imdb file's quirk: two spaces before the tab; quotes are text, not CSV quoting.
  const auto path =
      write("imdb_labelled.txt", "A \"very\" good, long film.  \t1\nBad.\t0\nCaf\xc3\xa9 ok\t1\n");
  TextColumns columns;
  columns.header = false;
  columns.text = "0";
  columns.label = "1";
  const auto examples = read_text_examples(path.string(), columns);
  ASSERT_EQ(examples.size(), 3u);
  EXPECT_EQ(examples[0].text, "A \"very\" good, long film.");
  EXPECT_EQ(examples[0].label, "1");
  EXPECT_EQ(examples[2].text, "Caf\xc3\xa9 ok");

  const auto short_row = write("short.tsv", "one\t1\ntwo\n");
  const std::string error = error_of([&] { read_text_examples(short_row.string(), columns); });
  EXPECT_NE(error.find("line 2 has 1 field(s), expected at least 2"), std::string::npos) << error;

  const auto bad_utf8 = write("bad.tsv", "ok\t1\nbad \xff byte\t0\n");
  const std::string utf8 = error_of([&] { read_text_examples(bad_utf8.string(), columns); });
  EXPECT_NE(utf8.find("bad.tsv:2"), std::string::npos) << utf8;

  columns.text = "text";
  const std::string named = error_of([&] { read_text_examples(path.string(), columns); });
  EXPECT_NE(named.find("0-based number"), std::string::npos) << named;
}

TEST(TextData, JsonLinesAndSeveralFiles) {
  const auto a =
      write("a.jsonl", "{\"text\": \"good\", \"label\": 2}\n\n{\"text\": \"bad\", \"label\": 10}\n");
  const auto b = write("b.jsonl", "{\"text\": \"meh\", \"label\": 3}\n");
  const auto examples = read_text_examples(a.string() + "," + b.string(), TextColumns{});
  ASSERT_EQ(examples.size(), 3u);
  EXPECT_EQ(examples[1].label, "10");
  EXPECT_EQ(examples[1].where, a.string() + ":3");
  // Integer labels sort as numbers.
  EXPECT_EQ(label_classes(examples), (std::vector<std::string>{"2", "3", "10"}));

  const auto broken = write("broken.jsonl", "{\"text\": \"x\", \"label\": 1}\n{\"text\": \"y\", \n");
  const std::string error = error_of([&] { read_text_examples(broken.string(), TextColumns{}); });
  EXPECT_NE(error.find("line 2 is not valid JSON"), std::string::npos) << error;
  const auto no_label = write("nolabel.jsonl", "{\"text\": \"x\"}\n");
  EXPECT_NE(error_of([&] { read_text_examples(no_label.string(), TextColumns{}); }).find("no key 'label'"),
            std::string::npos);
  const auto unknown = write("data.parquet", "");
  EXPECT_NE(error_of([&] { read_text_examples(unknown.string(), TextColumns{}); }).find("--format"),
            std::string::npos);
}

TEST(TextData, LanguageModelDocuments) {
  const auto txt = write("play.txt", "ROMEO:\r\nBut soft!\n\nJULIET:\nAy me.\n");
  EXPECT_EQ(read_lm_documents(txt.string(), false).size(), 1u);
  EXPECT_EQ(read_lm_documents(txt.string(), true),
            (std::vector<std::string>{"ROMEO:", "But soft!", "JULIET:", "Ay me."}));
  const auto jsonl =
      write("chat.jsonl", "{\"text\": \"Q: who? A: me\"}\n{\"text\": \"Q: why? A: because\"}\n");
  EXPECT_EQ(read_lm_documents(jsonl.string(), false).size(), 2u);
  EXPECT_NE(
      error_of([&] { read_lm_documents(jsonl.string(), false, "content"); }).find("no string 'content'"),
      std::string::npos);
}

TEST(CausalLmLoss, ShiftsAndIgnoresPadding) {
  // Hand check: logits favouring the next token; the padded position (-100) is not counted.
  torch::Tensor logits = torch::zeros({1, 4, 3});
  logits[0][0][1] = 2.0;  // predicts labels[1] = 1
  logits[0][1][2] = 1.0;  // predicts labels[2] = 2
  logits[0][2][0] = 5.0;  // would predict labels[3], which is padding
  const torch::Tensor labels = torch::tensor({{0, 1, 2, -100}}, torch::kLong);
  const double e2 = std::exp(2.0), e1 = std::exp(1.0);
  const double expected = (-std::log(e2 / (e2 + 2)) - std::log(e1 / (e1 + 2))) / 2;
  EXPECT_NEAR(causal_lm_loss(logits, labels).item<double>(), expected, 1e-6);

  MetricsAccumulator accumulator;
  accumulator.add_tokens(logits, labels, expected);
  const Metrics m = accumulator.result();
  EXPECT_TRUE(m.token_level);
  EXPECT_EQ(m.samples, 2);  // two counted tokens
  EXPECT_DOUBLE_EQ(m.accuracy, 1.0);
  EXPECT_NEAR(m.perplexity(), std::exp(expected), 1e-9);
  EXPECT_THROW(accumulator.add(torch::zeros({1, 3}), torch::zeros({1}, torch::kLong), 0.0), Error);
  EXPECT_THROW(causal_lm_loss(torch::zeros({2, 3}), labels), Error);
}

}  // namespace
}  // namespace graft
