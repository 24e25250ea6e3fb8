// graft's chat-template renderer against Jinja2 itself: tests/models/make_chat_references.py renders
// templates in the shapes of the common chat formats, SmolLM2's and TinyLlama's own, and two that exercise
// Jinja's rules (filters, tests, loop controls, namespace, arithmetic, slicing, tojson; indentation with
// trim_blocks and lstrip_blocks) over conversations with and without a system message, multi-line and
// non-ASCII content, a wrong role order and none at all, in the environment transformers uses (ctest
// writes the file first: the `golden` fixture). graft must give the same text, and refuse where Jinja2
// raised (the templates' own raise_exception, or an undefined value used).
#include <gtest/gtest.h>

#include <fstream>
#include <nlohmann/json.hpp>

#include "graft/chat_template.h"
#include "graft/errors.h"

namespace graft {
namespace {

TEST(ChatJinja, RendersAsJinja2Does) {
  const std::string path = std::string(GRAFT_GOLDEN_DIR) + "/chat_templates.jsonl";
  std::ifstream in(path);
  ASSERT_TRUE(in) << path << " is missing; make it with `/usr/bin/python3 " << GRAFT_SOURCE_DIR
                  << "/tests/models/make_chat_references.py --out " << GRAFT_GOLDEN_DIR
                  << "` (ctest does this itself; it needs python3-jinja2)";
  std::string line;
  size_t rendered = 0, refused = 0;
  for (size_t n = 1; std::getline(in, line); ++n) {
    const auto record = nlohmann::ordered_json::parse(line);
    const std::string name = record["name"].get<std::string>();
    const ChatTemplate chat(record["template"].get<std::string>(), name);
    std::string got, error;
    try {
      got = chat.render(record["context"]);
    } catch (const Error& e) {
      error = e.what();
    }
    const std::string where = name + ", line " + std::to_string(n) + " of " + path;
    if (record.contains("error")) {
      EXPECT_NE(error, "") << where << ": Jinja2 raised " << record["error"] << ", graft rendered\n" << got;
      ++refused;
    } else {
      EXPECT_EQ(error, "") << where;
      EXPECT_EQ(got, record["rendered"].get<std::string>()) << where;
      ++rendered;
    }
  }
  EXPECT_GE(rendered, 80u);
  EXPECT_GE(refused, 8u);
}

}  // namespace
}  // namespace graft
