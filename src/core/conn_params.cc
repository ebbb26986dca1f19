#include "connthrottle/conn_params.h"

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"

namespace connthrottle {

ConnParams& ConnParams::Set(std::string keyword, std::string value) {
  for (auto& [k, v] : params_) {
    if (k == keyword) {
      v = std::move(value);
      return *this;
    }
  }
  params_.emplace_back(std::move(keyword), std::move(value));
  return *this;
}

const char* const* ConnParams::keywords() const {
  keywords_.clear();
  for (const auto& [k, v] : params_) keywords_.push_back(k.c_str());
  keywords_.push_back(nullptr);
  return keywords_.data();
}

const char* const* ConnParams::values() const {
  values_.clear();
  for (const auto& [k, v] : params_) values_.push_back(v.c_str());
  values_.push_back(nullptr);
  return values_.data();
}

std::string ConnParams::Get(const std::string& keyword) const {
  for (const auto& [k, v] : params_) {
    if (k == keyword) return v;
  }
  return "";
}

std::string ConnParams::ToString() const {
  std::vector<std::string> parts;
  for (const auto& [k, v] : params_) {
    if (k != "password") parts.push_back(absl::StrCat(k, "=", v));
  }
  return absl::StrJoin(parts, " ");
}

}  // namespace connthrottle
