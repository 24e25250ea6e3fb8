// One libFuzzer target per entry point of entry_points.h: GRAFT_FUZZ_TARGET(safetensors,
// read_safetensors_bytes). A hostile input may only end in graft::Error; any other exception
// (nlohmann::json's, c10::Error, std::out_of_range, ...) escaping a reader is a finding, reported by
// abort() so libFuzzer keeps the input. Crashes, leaks and UB are reported by the sanitizers.
#pragma once
#include <cstdio>
#include <cstdlib>
#include <exception>

#include "fuzz/entry_points.h"

#define GRAFT_FUZZ_TARGET(target, entry)                                               \
  extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {            \
    try {                                                                              \
      graft::fuzz::entry(std::string_view(reinterpret_cast<const char*>(data), size)); \
    } catch (const graft::Error&) {                                                    \
      /* refused with a message: the expected outcome for a bad file */                \
    } catch (const std::exception& e) {                                                \
      std::fprintf(stderr, #target ": a non-graft exception escaped: %s\n", e.what()); \
      std::abort();                                                                    \
    } catch (...) {                                                                    \
      std::fprintf(stderr, #target ": an unknown exception escaped\n");                \
      std::abort();                                                                    \
    }                                                                                  \
    return 0;                                                                          \
  }
