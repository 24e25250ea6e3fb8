// Text data sets as people have them: labelled sentences in CSV, TSV or JSON Lines files (classification),
// and plain text or JSON Lines for language modelling. No libtorch here: tokenising and batching are in
// graft/text_task.h.
//
// Formats (chosen by extension unless named: .csv csv, .tsv/.txt tsv, .jsonl/.json jsonl):
//   csv    RFC 4180: comma-separated, fields may be quoted ("a, b" and "" for a quote, newlines inside
//          quotes); the first row names the columns unless header is false.
//   tsv    tab-separated, no quoting (a tab or newline cannot occur inside a field), e.g. the UCI
//          "Sentiment Labelled Sentences" files: `sentence<TAB>label`.
//   jsonl  one JSON object per line; a label may be a string or a number.
// Without a header, columns are named by their 0-based index: --text-column 0 --label-column 1.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "graft/chat_template.h"

namespace graft {

struct TextColumns {
  std::string format = "auto";  // auto | csv | tsv | jsonl
  std::string text = "text";    // column (or JSON key) holding the text
  std::string text_pair;        // optional second text (sentence pairs); empty: none
  std::string label = "label";  // column holding the class label
  bool header = true;           // csv/tsv: the first row names the columns
};

struct TextExample {
  std::string text, text_pair, label;
  std::string where;  // "file:line", for messages
  size_t lines = 1;   // lines of the file the record spans (a quoted CSV field may hold line breaks)
};

// Reads labelled examples. `path` may name several files separated by commas; they are read in order.
// Surrounding whitespace of text and label is trimmed. Throws graft::FormatError naming the file and line
// for a missing column, a row with too few fields, invalid JSON, invalid UTF-8, an empty label or one
// holding a control character (a NUL byte), a header that names a column twice, and a text column that is
// the label column.
std::vector<TextExample> read_text_examples(const std::string& path, const TextColumns& columns);

// The distinct labels, sorted: numerically when every label is an integer ("2" before "10"), else by bytes.
std::vector<std::string> label_classes(const std::vector<TextExample>& examples);

// Texts for language modelling: a .txt file is one document (or, line_by_line, one per non-empty line);
// a .jsonl file gives one document per line from the key `text_key`. Several comma-separated files are
// read in order.
std::vector<std::string> read_lm_documents(const std::string& path, bool line_by_line,
                                           const std::string& text_key = "text",
                                           const std::string& format = "auto");

// Whether the data is conversations: its first file is JSON Lines (by `format`, or its extension) whose
// first row holds "messages".
bool is_conversation_data(const std::string& paths, const std::string& format = "auto");

// Conversations for chat fine-tuning: JSON Lines whose rows hold "messages", a list of {"role": ...,
// "content": ...} (the conversational format of Hugging Face datasets and TRL's SFTTrainer). Several
// comma-separated files are read in order. Throws FormatError naming the file, line and message for a row
// without messages, a message without a string role and content, or invalid UTF-8.
std::vector<std::vector<ChatMessage>> read_conversations(const std::string& paths,
                                                         const std::string& format = "auto");

}  // namespace graft
