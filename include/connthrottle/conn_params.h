// connthrottle/conn_params.h — libpq connection parameters as keyword/value
// pairs. Connections are always made with PQconnectdbParams-style arrays,
// never by pasting strings into a conninfo, so no host or database name can
// inject options (DESIGN.md, "Boundaries").
//
// A value type: copyable, thread-compatible.

#ifndef CONNTHROTTLE_CONN_PARAMS_H_
#define CONNTHROTTLE_CONN_PARAMS_H_

#include <string>
#include <utility>
#include <vector>

namespace connthrottle {

class ConnParams {
 public:
  // Sets (or replaces) one keyword.
  ConnParams& Set(std::string keyword, std::string value);
  // nullptr-terminated arrays for PQconnectdbParams / PQconnectStartParams,
  // valid until this object changes or is destroyed.
  const char* const* keywords() const;
  const char* const* values() const;
  // The value of `keyword`, or "" when unset.
  std::string Get(const std::string& keyword) const;
  // "keyword=value ..." for messages; never shows a password.
  std::string ToString() const;

 private:
  std::vector<std::pair<std::string, std::string>> params_;
  mutable std::vector<const char*> keywords_, values_;
};

}  // namespace connthrottle

#endif  // CONNTHROTTLE_CONN_PARAMS_H_
