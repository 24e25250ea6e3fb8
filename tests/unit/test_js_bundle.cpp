// TF.js models bundled as JavaScript (src/io/js_bundle): the literal parser on the forms a minifier
// emits, base64 against RFC 4648's test vectors, and bundles that are not what they claim.
#include <gtest/gtest.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>

#include "graft/errors.h"
#include "io/js_bundle.h"

namespace graft {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;

json parse(const std::string& text) {
  size_t pos = 0;
  json value = js::parse_literal(text, pos, "test.js");
  EXPECT_EQ(pos, text.size()) << text;
  return value;
}

std::string error_of_parse(const std::string& text) {
  try {
    parse(text);
  } catch (const FormatError& e) {
    return e.what();
  }
  return "";
}

std::string write_file(const std::string& name, const std::string& text) {
  const fs::path path = fs::temp_directory_path() / ("graft_js_" + std::to_string(::getpid()) + "_" + name);
  std::ofstream(path, std::ios::binary) << text;
  return path.string();
}

// The browserify standalone wrapper nsfwjs ships (shortened), around `payload`.
std::string bundle(const std::string& payload) {
  return "!function(e){if(\"object\"==typeof exports&&\"undefined\"!=typeof module)module.exports=e();"
         "else{(\"undefined\"!=typeof window?window:this).model=e()}}(function(){return function e(a,n,i)"
         "{var r=n[_]={exports:{}};return l}({1:[function(e,a,n){a.exports=" +
         payload + "},{}]},{},[1])(1)});";
}

TEST(JsLiteral, ValuesAsJson) {
  const json value = parse(
      "{modelTopology:{keras_version:\"2.2.4\",trainable:!1,sparse:!0,rate:.5,eps:1e-3,neg:-.25,"
      "big:12345678901,shape:[null,224,224,3],'quoted key':'it\\'s',esc:\"a\\n\\u00e9\\x41\",none:undefined,"
      "t:true,f:false,empty:{},list:[],trailing:[1,2,],0:\"numeric key\"}}");
  const json& t = value["modelTopology"];
  EXPECT_EQ(t["keras_version"], "2.2.4");
  EXPECT_EQ(t["trainable"], false);
  EXPECT_EQ(t["sparse"], true);
  EXPECT_DOUBLE_EQ(t["rate"].get<double>(), 0.5);
  EXPECT_DOUBLE_EQ(t["eps"].get<double>(), 1e-3);
  EXPECT_DOUBLE_EQ(t["neg"].get<double>(), -0.25);
  EXPECT_TRUE(t["big"].is_number_integer());
  EXPECT_EQ(t["big"].get<int64_t>(), 12345678901);
  EXPECT_EQ(t["shape"], json::parse("[null,224,224,3]"));
  EXPECT_EQ(t["quoted key"], "it's");
  EXPECT_EQ(t["esc"],
            "a\n\xc3\xa9"
            "A");
  EXPECT_TRUE(t["none"].is_null());
  EXPECT_EQ(t["t"], true);
  EXPECT_EQ(t["f"], false);
  EXPECT_TRUE(t["empty"].is_object() && t["empty"].empty());
  EXPECT_TRUE(t["list"].is_array() && t["list"].empty());
  EXPECT_EQ(t["trailing"], json::parse("[1,2]"));
  EXPECT_EQ(t["0"], "numeric key");
  EXPECT_EQ(parse("\"\\ud83d\\ude00\""), "\xf0\x9f\x98\x80");  // a surrogate pair is one code point
}

TEST(JsLiteral, RefusesWhatIsNotData) {
  EXPECT_NE(error_of_parse("{a:foo()}").find("'foo' is not a literal"), std::string::npos);
  EXPECT_NE(error_of_parse("{a:1").find("expected '}'"), std::string::npos);
  EXPECT_NE(error_of_parse("[1,2").find("expected ']'"), std::string::npos);
  EXPECT_NE(error_of_parse("\"open").find("not closed"), std::string::npos);
  EXPECT_NE(error_of_parse("1.2.3").find("two decimal points"), std::string::npos);
  EXPECT_NE(error_of_parse("1e").find("empty exponent"), std::string::npos);
  EXPECT_NE(error_of_parse("\"\\ud800x\"").find("unpaired"), std::string::npos);
  EXPECT_NE(error_of_parse(std::string(300, '[')).find("nested deeper than 256"), std::string::npos);
  const std::string message = error_of_parse("{a:[1,2,x]}");
  EXPECT_NE(message.find("test.js: at byte 8"), std::string::npos) << message;
}

TEST(JsBase64, Rfc4648Vectors) {
  const auto decode = [](const std::string& text) {
    const auto bytes = js::base64_decode(text, 0, text.size(), "b64");
    return std::string(bytes.begin(), bytes.end());
  };
  EXPECT_EQ(decode(""), "");
  EXPECT_EQ(decode("Zg=="), "f");
  EXPECT_EQ(decode("Zm8="), "fo");
  EXPECT_EQ(decode("Zm9v"), "foo");
  EXPECT_EQ(decode("Zm9vYg=="), "foob");
  EXPECT_EQ(decode("Zm9vYmE="), "fooba");
  EXPECT_EQ(decode("Zm9vYmFy"), "foobar");
  EXPECT_EQ(decode("Zm9vYmE"), "fooba");  // padding optional
  const auto bytes = js::base64_decode("/+8=", 0, 4, "b64");
  EXPECT_EQ(bytes, (std::vector<uint8_t>{0xff, 0xef}));
  EXPECT_THROW(decode("Zm9v!"), FormatError);
  EXPECT_THROW(decode("Zm9vY"), FormatError);  // 4k+1 characters
  EXPECT_THROW(decode("Zg==="), FormatError);
}

TEST(JsBundle, UnwrapsModelAndShard) {
  const std::string model =
      write_file("model.min.js", bundle("{format:\"layers-model\",weightsManifest:[]}"));
  EXPECT_EQ(js::read_bundled_json(model), json::parse(R"({"format":"layers-model","weightsManifest":[]})"));
  const std::string shard = write_file("group1-shard1of1.min.js", bundle("\"AAEC/w==\""));
  EXPECT_EQ(js::read_bundled_bytes(shard), (std::vector<uint8_t>{0, 1, 2, 255}));
  fs::remove(model);
  fs::remove(shard);
}

TEST(JsBundle, BadBundlesNameTheFile) {
  const auto error = [](const std::string& name, const std::string& text, bool bytes) {
    const std::string path = write_file(name, text);
    std::string message;
    try {
      if (bytes) {
        js::read_bundled_bytes(path);
      } else {
        js::read_bundled_json(path);
      }
    } catch (const FormatError& e) {
      message = e.what();
    }
    fs::remove(path);
    return message;
  };
  std::string message = error("plain.js", "module.exports = {a: 1};", false);
  EXPECT_NE(message.find("plain.js: no module 1"), std::string::npos) << message;
  message = error("code.js", bundle("{a:1};require('fs')"), false);
  EXPECT_NE(message.find("module 1 goes on after its exported value"), std::string::npos) << message;
  message = error("notstring.js", bundle("{a:1}"), true);
  EXPECT_NE(message.find("not a string literal"), std::string::npos) << message;
  message = error("array.js", bundle("[1,2]"), false);
  EXPECT_NE(message.find("not an object literal"), std::string::npos) << message;
  message = error("badb64.js", bundle("\"AA*A\""), true);
  EXPECT_NE(message.find("not a base64 character"), std::string::npos) << message;
  message = error("missing.js", "", false);
  EXPECT_NE(message.find("no module 1"), std::string::npos) << message;
  try {
    js::read_bundled_json("/nonexistent/model.min.js");
    ADD_FAILURE() << "no error for a missing file";
  } catch (const Error& e) {  // the file check every reader shares: a graft::Error naming the file
    EXPECT_NE(std::string(e.what()).find("/nonexistent/model.min.js: no such TF.js file"), std::string::npos)
        << e.what();
  }
}

}  // namespace
}  // namespace graft
