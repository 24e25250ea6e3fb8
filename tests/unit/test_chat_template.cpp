// Chat templates: the SmolLM2 (ChatML) and TinyLlama (Zephyr) templates rendered as transformers renders
// them, against the references in shared/tokenizers/*/chat_dev.jsonl (made by @huggingface/jinja 0.5.13 with
// trim_blocks and lstrip_blocks, equal to transformers.js' apply_chat_template, and tokenized by the Rust
// tokenizers); then Jinja's rules one by one on small templates whose output Jinja's documentation fixes,
// Llama 3's template, where each assistant turn lies, and the errors.
#include <gtest/gtest.h>

#include <fstream>
#include <nlohmann/json.hpp>

#include "graft/chat_template.h"
#include "graft/errors.h"
#include "graft/tokenizer.h"
#include "transfer/text_tensors.h"

namespace graft {
namespace {

const std::string kDir = std::string(GRAFT_SHARED_DIR) + "/tokenizers/";

std::vector<ChatMessage> messages_of(const nlohmann::json& list) {
  std::vector<ChatMessage> out;
  for (const auto& m : list) out.push_back({m["role"].get<std::string>(), m["content"].get<std::string>()});
  return out;
}

// Every conversation of chat_dev.jsonl: the rendered text, and its ids encoded without special tokens.
void check_chat_golden(const std::string& name) {
  const auto tokenizer = load_tokenizer(kDir + name);
  const std::optional<ChatTemplate> chat = read_chat_template(kDir + name + "/tokenizer_config.json");
  ASSERT_TRUE(chat) << name << ": tokenizer_config.json has a chat_template";
  const auto special = special_token_names(*tokenizer);
  std::ifstream in(kDir + name + "/chat_dev.jsonl");
  ASSERT_TRUE(in);
  std::string line;
  size_t checked = 0;
  for (size_t n = 1; std::getline(in, line); ++n) {
    if (line.empty()) continue;
    const nlohmann::json doc = nlohmann::json::parse(line);
    const std::string rendered =
        render_chat(*chat, messages_of(doc["messages"]), doc["add_generation_prompt"].get<bool>(), special);
    EXPECT_EQ(rendered, doc["rendered"].get<std::string>()) << name << "/chat_dev.jsonl:" << n;
    EncodeOptions options;
    options.add_special_tokens = false;
    EXPECT_EQ(tokenizer->encode(rendered, options).ids, doc["ids"].get<std::vector<int64_t>>())
        << name << "/chat_dev.jsonl:" << n;
    ++checked;
  }
  EXPECT_EQ(checked, 5u);
}

TEST(ChatTemplate, SmolLM2ChatMLMatchesTheReference) {
  check_chat_golden("smollm2_135m_instruct");
}

TEST(ChatTemplate, TinyLlamaZephyrMatchesTheReference) {
  check_chat_golden("tinyllama_chat");
}

std::string render(const std::string& source,
                   const nlohmann::ordered_json& context = nlohmann::ordered_json::object()) {
  return ChatTemplate(source, "test").render(context);
}

// Whitespace as transformers' environment has it: trim_blocks drops the newline after a block tag,
// lstrip_blocks the indentation before one, '-' all whitespace on its side, and {{ }} neither.
TEST(ChatTemplate, WhitespaceRulesAreJinjas) {
  EXPECT_EQ(render("{% if true %}\nyes\n{% endif %}\nafter"), "yes\nafter");
  EXPECT_EQ(render("  {% if true %}x{% endif %}"), "x");
  EXPECT_EQ(render("a\n    {% if true %}\n    b\n    {% endif %}\nc"), "a\n    b\nc");
  EXPECT_EQ(render("a  {%- if true -%}  b  {%- endif %}"), "ab");
  EXPECT_EQ(render("{{ 'x' }}\n{{ 'y' }}"), "x\ny");
  EXPECT_EQ(render("a {{- ' b ' -}} c"), "a b c");
  EXPECT_EQ(render("{# a comment #}\nz"), "z");
  EXPECT_EQ(render("a {%+ if true %}b{% endif %}"), "a b");
}

// Expressions with Python's values and Jinja's precedence: filters and tests bind tighter than operators;
// `~` converts, `+` does not; and/or return an operand.
TEST(ChatTemplate, ExpressionsFollowJinja) {
  nlohmann::ordered_json context = {
      {"m", {{"role", "user"}, {"content", "  Hi  "}}}, {"xs", {1, 2, 3}}, {"n", nullptr}};
  EXPECT_EQ(render("{{ 'a' + m['content'] | trim + 'b' }}", context), "aHib");
  EXPECT_EQ(render("{{ m.role ~ 1 ~ n }}", context), "user1None");
  EXPECT_EQ(render("{{ xs | length }} {{ xs[-1] }} {{ xs[1:] }} {{ xs[::-1] | join(',') }}", context),
            "3 3 [2, 3] 3,2,1");
  EXPECT_EQ(render("{{ 7 // 2 }} {{ 7 / 2 }} {{ -7 % 3 }} {{ 2 ** 3 }} {{ 1 + 2 * 3 }}"), "3 3.5 2 8 7");
  EXPECT_EQ(
      render("{{ missing is defined }} {{ n is none }} {{ m is mapping }} {{ 'x' is string }}", context),
      "False True True True");
  EXPECT_EQ(render("{{ n or 'fallback' }} {{ 0 and 1 }} {{ not xs }}", context), "fallback 0 False");
  EXPECT_EQ(render("{{ 'yes' if 2 in xs else 'no' }} {{ 'ell' in 'hello' }} {{ 'b' not in m }}", context),
            "yes True True");
  EXPECT_EQ(render("{{ m.content.strip().upper() }} {{ 'a,b'.split(',') }} {{ m.get('x', 'd') }}", context),
            "HI ['a', 'b'] d");
  EXPECT_EQ(render("{{ {'a': [1, 2.5, none, true], 'b': 'é\"'} | tojson }}"),
            "{\"a\": [1, 2.5, null, true], \"b\": \"é\\\"\"}");
  EXPECT_EQ(render("{{ {'a': 1} | tojson(indent=2) }}"), "{\n  \"a\": 1\n}");
  EXPECT_EQ(render("{{ missing | default('d') }}{{ '' | default('e', true) }}{{ 'x' | default('f') }}"),
            "dex");
  try {
    render("{{ 'a' + 1 }}");
    ADD_FAILURE() << "str + int is a TypeError in Python";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("line 1: unsupported operand types for +: str and int"),
              std::string::npos)
        << e.what();
  }
}

// Loops: loop.*, filters, else, break/continue (transformers loads loopcontrols), `set` scoped to an
// iteration, and namespace() to carry state out of one.
TEST(ChatTemplate, LoopsAndAssignmentsFollowJinja) {
  nlohmann::ordered_json context = {{"xs", {"a", "b", "c"}}, {"d", {{"k", 1}, {"j", 2}}}};
  EXPECT_EQ(render("{% for x in xs %}{{ loop.index }}{{ x }}{% if loop.first %}^{% endif %}"
                   "{% if loop.last %}${% endif %}{% endfor %}",
                   context),
            "1a^2b3c$");
  EXPECT_EQ(render("{% for x in xs if x != 'b' %}{{ loop.index0 }}{{ x }}{% endfor %}", context), "0a1c");
  EXPECT_EQ(render("{% for x in [] %}x{% else %}empty{% endfor %}"), "empty");
  EXPECT_EQ(render("{% for x in xs %}{% if x == 'b' %}{% continue %}{% endif %}{% if x == 'c' %}{% break %}"
                   "{% endif %}{{ x }}{% endfor %}",
                   context),
            "a");
  EXPECT_EQ(render("{% for k, v in d.items() %}{{ k }}={{ v }};{% endfor %}", context), "k=1;j=2;");
  EXPECT_EQ(render("{% set n = 0 %}{% for x in xs %}{% set n = n + 1 %}{% endfor %}{{ n }}", context), "0");
  EXPECT_EQ(
      render("{% set ns = namespace(n=0) %}{% for x in xs %}{% set ns.n = ns.n + 1 %}{% endfor %}{{ ns.n }}",
             context),
      "3");
  EXPECT_EQ(render("{% for i in range(2, 7, 2) %}{{ i }}{% endfor %}"), "246");
}

// Llama 3's template (Meta-Llama-3-8B-Instruct's tokenizer_config.json): the content trimmed, the bos
// token before the first message, each turn closed by <|eot_id|>.
TEST(ChatTemplate, Llama3TemplateRendersItsFormat) {
  const std::string llama3 =
      "{% set loop_messages = messages %}{% for message in loop_messages %}{% set content = "
      "'<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n'+ message['content'] | trim + "
      "'<|eot_id|>' %}{% if loop.index0 == 0 %}{% set content = bos_token + content %}{% endif %}{{ content "
      "}}"
      "{% endfor %}{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}"
      "{% endif %}";
  const ChatTemplate chat(llama3, "llama3");
  const std::map<std::string, std::string> special = {{"bos_token", "<|begin_of_text|>"},
                                                      {"eos_token", "<|eot_id|>"}};
  EXPECT_EQ(render_chat(chat, {{"system", "Be brief."}, {"user", " Who won? \n"}}, true, special),
            "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nBe brief.<|eot_id|>"
            "<|start_header_id|>user<|end_header_id|>\n\nWho won?<|eot_id|>"
            "<|start_header_id|>assistant<|end_header_id|>\n\n");
}

// The assistant turns of a conversation: from the end of the prompt before each to the end of the
// rendering through it, its end marker included.
TEST(ChatTemplate, AssistantSpansCoverEachReplyAndItsEnd) {
  const auto tokenizer = load_tokenizer(kDir + "smollm2_135m_instruct");
  const ChatTemplate chat = *read_chat_template(kDir + "smollm2_135m_instruct/tokenizer_config.json");
  const std::vector<ChatMessage> messages = {{"user", "Name a striker."},
                                             {"assistant", "Erling Haaland"},
                                             {"user", "Another?"},
                                             {"assistant", "Mbappé"}};
  const auto special = special_token_names(*tokenizer);
  const std::string full = render_chat(chat, messages, false, special);
  const auto spans = assistant_spans(chat, messages, special);
  ASSERT_EQ(spans.size(), 2u);
  EXPECT_EQ(full.substr(spans[0].first, spans[0].second - spans[0].first), "Erling Haaland<|im_end|>\n");
  EXPECT_EQ(full.substr(spans[1].first, spans[1].second - spans[1].first), "Mbappé<|im_end|>\n");
  EXPECT_EQ(full.substr(0, spans[0].first).substr(full.substr(0, spans[0].first).size() - 22),
            "<|im_start|>assistant\n");
  // A template that puts the assistant's turn before the prompt's end (here: a counter of turns written
  // at the top) has no such spans, and says so.
  const ChatTemplate counted("{{ messages | length }}{% for m in messages %}{{ m.content }}{% endfor %}",
                             "counted");
  EXPECT_THROW(assistant_spans(counted, messages, special), Error);
}

// Chat fine-tuning rows: the labels are the ids of the assistant turns (with their <|im_end|> and newline)
// and -100 everywhere else, padding included; a conversation without an assistant turn is left out.
TEST(ChatTemplate, ChatTensorsLabelOnlyTheAssistantTurns) {
  const auto tokenizer = load_tokenizer(kDir + "smollm2_135m_instruct");
  const ChatTemplate chat = *read_chat_template(kDir + "smollm2_135m_instruct/tokenizer_config.json");
  const std::vector<std::vector<ChatMessage>> conversations = {
      {{"user", "Who won in 2014?"}, {"assistant", "Germany."}, {"user", "Where?"}, {"assistant", "Brazil."}},
      {{"system", "Be brief."}, {"user", "Only a question"}},
      {{"user", "Hi"}, {"assistant", "Hello!"}}};
  ChatCounts counts;
  const ClassifyTensors set = chat_tensors(*tokenizer, chat, conversations, 256, "chats.jsonl", &counts);
  EXPECT_EQ(counts.conversations, 2);
  EXPECT_EQ(counts.skipped, 1);
  ASSERT_EQ(set.inputs.size(0), 2);
  const auto labelled = [&](int64_t row) {
    std::vector<int64_t> ids;
    for (int64_t t = 0; t < set.labels.size(1); ++t)
      if (set.labels[row][t].item<int64_t>() != -100) ids.push_back(set.labels[row][t].item<int64_t>());
    return tokenizer->decode(ids, false);
  };
  EXPECT_EQ(labelled(0), "Germany.<|im_end|>\nBrazil.<|im_end|>\n");
  EXPECT_EQ(labelled(1), "Hello!<|im_end|>\n");
  // Where a label is set it is the input id; padding is masked and labelled -100.
  const torch::Tensor ids = set.inputs.select(1, 0), mask = set.inputs.select(1, 1);
  const torch::Tensor set_at = set.labels.ne(-100);
  EXPECT_TRUE(set.labels.masked_select(set_at).equal(ids.masked_select(set_at)));
  EXPECT_TRUE(mask.eq(0).logical_and(set_at).any().item<bool>() == false);
  EXPECT_GT(mask.eq(0).sum().item<int64_t>(), 0) << "the shorter row is padded";
  EXPECT_THROW(chat_tensors(*tokenizer, chat, {conversations[1]}, 256, "chats.jsonl"), Error);
}

// What graft does not implement, and broken templates, are named with their line; the template's own
// raise_exception reaches the user; undefined values fail where Jinja's do.
TEST(ChatTemplate, ErrorsNameTheLine) {
  auto message_of = [](const std::string& source, const nlohmann::ordered_json& context) -> std::string {
    try {
      ChatTemplate(source, "tokenizer_config.json").render(context);
    } catch (const Error& e) {
      return e.what();
    }
    return "";
  };
  const nlohmann::ordered_json none = nlohmann::ordered_json::object();
  EXPECT_NE(message_of("a\n{% macro f() %}{% endmacro %}", none)
                .find("tokenizer_config.json: chat template, line 2: {% macro %} is not implemented"),
            std::string::npos);
  EXPECT_NE(message_of("{% if x %}", none).find("expected {% endif %}"), std::string::npos);
  EXPECT_NE(message_of("{{ x ", none).find("never closes"), std::string::npos);
  EXPECT_NE(message_of("{% endfor %}", none).find("without the block"), std::string::npos);
  EXPECT_NE(message_of("\n\n{{ raise_exception('Conversation roles must alternate') }}", none)
                .find("line 3: the template raised: Conversation roles must alternate"),
            std::string::npos);
  EXPECT_NE(message_of("{{ messages[0]['role'] }}", {{"messages", nlohmann::ordered_json::array()}})
                .find("an undefined value has no item 'role'"),
            std::string::npos);
  EXPECT_NE(message_of("{% for i in range(100000) %}{% for j in range(1000) %}{% endfor %}{% endfor %}", none)
                .find("iterations"),
            std::string::npos);
  // A string that doubles every iteration stops at the output bound, long before memory does.
  EXPECT_NE(message_of("{% set ns = namespace(s='ab') %}{% for i in range(40) %}{% set ns.s = ns.s ~ ns.s %}"
                       "{% endfor %}",
                       none)
                .find("a string of more than 64 MiB"),
            std::string::npos);
  EXPECT_NE(message_of("{{ 9223372036854775807 + 1 }}", none).find("integer overflow"), std::string::npos);
  EXPECT_NE(
      message_of("{% set ns = namespace() %}{% set ns.me = [ns] %}", none).find("namespace cannot hold"),
      std::string::npos);
  EXPECT_FALSE(read_chat_template(kDir + "gpt2/encoder.json").has_value());
}

}  // namespace
}  // namespace graft
