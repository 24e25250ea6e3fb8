// Precompiled header: the heavy third-party headers every graft translation unit uses.
// Only third-party headers belong here, so that editing graft never invalidates it.
#pragma once
#include <torch/torch.h>

#include <algorithm>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <unordered_map>
#include <vector>
