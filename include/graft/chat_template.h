// Chat templates: the Jinja template in tokenizer_config.json's "chat_template", rendered as Hugging Face's
// apply_chat_template renders it (transformers' ImmutableSandboxedEnvironment: trim_blocks, lstrip_blocks,
// loop controls, raise_exception, strftime_now and a tojson filter), so that a chat model is prompted and
// trained on exactly the text it was made with. graft implements the Jinja subset chat templates are
// written in: text, {{ }}, {% if / elif / else %}, {% for %} (loop.*, else, break, continue),
// {% set %} (namespace() attributes too), whitespace control, comments, Jinja's expressions (literals,
// lists, dicts, attribute and item access, slices, calls, filters, tests, arithmetic, comparison, `in`,
// `and`/`or`/`not`, `~`, conditional expressions) and Python's string and dict methods. Anything else
// ({% macro %}, {% include %}, ...) is refused by name when the template is read.
#pragma once
#include <map>
#include <memory>
#include <nlohmann/json_fwd.hpp>
#include <optional>
#include <string>
#include <utility>
#include <vector>

namespace graft {

class Tokenizer;

struct ChatMessage {
  std::string role;  // "system", "user", "assistant", ...
  std::string content;
};

class ChatTemplate {
 public:
  // Parses `source`. Throws FormatError naming `where` and the line for a syntax error or a construct graft
  // does not implement.
  ChatTemplate(const std::string& source, const std::string& where);
  ~ChatTemplate();
  ChatTemplate(const ChatTemplate&);
  ChatTemplate& operator=(const ChatTemplate&);

  // Renders with the variables of `context`, a JSON object (messages, add_generation_prompt, bos_token,
  // ...). Throws graft::Error naming the template's place and line for an error while rendering, and for
  // the template's own raise_exception().
  std::string render(const nlohmann::ordered_json& context) const;
  const std::string& where() const { return where_; }

 private:
  struct Program;
  std::shared_ptr<const Program> program_;
  std::string where_;
};

// apply_chat_template(messages, add_generation_prompt=..., tokenize=False): the template rendered with
// `messages`, `add_generation_prompt` and the tokenizer's special tokens by name (bos_token, eos_token,
// unk_token, pad_token, ... as `special_tokens` holds them).
std::string render_chat(const ChatTemplate& chat_template, const std::vector<ChatMessage>& messages,
                        bool add_generation_prompt, const std::map<std::string, std::string>& special_tokens);

// Where each assistant message of a conversation is in its rendering: byte ranges [begin, end) of
// render_chat(messages, false), one per assistant message, from the end of the prompt before it
// (messages before it, with the generation prompt) to the end of the rendering with it, so its end
// marker (eos, <|im_end|>) is included: the tokens a chat model is trained to produce. Throws graft::Error
// naming the message when the template does not render a conversation as the prefix of its continuation
// (then no such range exists).
std::vector<std::pair<size_t, size_t>> assistant_spans(
    const ChatTemplate& chat_template, const std::vector<ChatMessage>& messages,
    const std::map<std::string, std::string>& special_tokens);

// A tokenizer's special tokens by the names a template reads (transformers' special_tokens_map): bos_token,
// eos_token, unk_token, pad_token, cls_token, sep_token, mask_token, for those it has.
std::map<std::string, std::string> special_token_names(const Tokenizer& tokenizer);

// The chat template of a tokenizer_config.json: its "chat_template" string, or of a list of named
// templates the one named "default"; nullopt when the file has none. Throws FormatError naming the file.
std::optional<ChatTemplate> read_chat_template(const std::string& tokenizer_config_path);

}  // namespace graft
