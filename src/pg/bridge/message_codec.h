// The byte codec of the messages a backend and the communicator exchange
// (pool_message.cc, copy_message.cc): a Writer that appends to a fixed area
// and a Reader that checks every length against it. Plain C++.

#ifndef CONNTHROTTLE_SRC_PG_BRIDGE_MESSAGE_CODEC_H_
#define CONNTHROTTLE_SRC_PG_BRIDGE_MESSAGE_CODEC_H_

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <string>
#include <utility>

#include "absl/strings/string_view.h"
#include "connthrottle/conn_params.h"

namespace connthrottle::pg {

// Appends to a fixed area; once something does not fit, every later write
// is dropped and ok() stays false. With a null area it only counts.
class Writer {
 public:
  Writer(char* out, size_t capacity) : out_(out), capacity_(capacity) {}

  template <typename T>
  void Put(T value) {
    Bytes(&value, sizeof(value));
  }
  void String(absl::string_view s) {
    Put(static_cast<uint32_t>(s.size()));
    Bytes(s.data(), s.size());
  }
  bool ok() const { return ok_; }
  size_t size() const { return size_; }

 private:
  void Bytes(const void* p, size_t n) {
    if (!ok_ || n > capacity_ - size_) {
      ok_ = false;
      return;
    }
    // An empty string's data() may be null: no memcpy of 0 bytes.
    if (n > 0 && out_ != nullptr) std::memcpy(out_ + size_, p, n);
    size_ += n;
  }

  char* out_;
  size_t capacity_;
  size_t size_ = 0;
  bool ok_ = true;
};

// Reads what Writer wrote; any read past the end sets !ok() and yields zeros.
class Reader {
 public:
  Reader(const char* in, size_t size) : in_(in), size_(size) {}

  template <typename T>
  T Get() {
    T value{};
    Bytes(&value, sizeof(value));
    return value;
  }
  std::string String() {
    const uint32_t n = Get<uint32_t>();
    if (!ok_ || n > size_ - pos_) {
      ok_ = false;
      return {};
    }
    std::string s(in_ + pos_, n);
    pos_ += n;
    return s;
  }
  // A string's bytes where they are, without a copy: valid while `in` is.
  absl::string_view View() {
    const uint32_t n = Get<uint32_t>();
    if (!ok_ || n > size_ - pos_) {
      ok_ = false;
      return {};
    }
    absl::string_view s(in_ + pos_, n);
    pos_ += n;
    return s;
  }
  bool ok() const { return ok_; }
  size_t pos() const { return pos_; }  // bytes read so far
  // Counts, checked against the bytes left (each item takes at least `min` bytes).
  uint32_t Count(size_t min) {
    const uint32_t n = Get<uint32_t>();
    if (ok_ && min > 0 && n > (size_ - pos_) / min) ok_ = false;
    return ok_ ? n : 0;
  }

 private:
  void Bytes(void* p, size_t n) {
    if (!ok_ || n > size_ - pos_) {
      ok_ = false;
      return;
    }
    std::memcpy(p, in_ + pos_, n);
    pos_ += n;
  }

  const char* in_;
  size_t size_;
  size_t pos_ = 0;
  bool ok_ = true;
};

// A node's connection parameters, as keyword/value pairs.
inline void PutParams(Writer& w, const ConnParams& params) {
  uint32_t n = 0;
  for (const char* const* k = params.keywords(); *k != nullptr; ++k) ++n;
  w.Put(n);
  for (uint32_t j = 0; j < n; ++j) {
    w.String(params.keywords()[j]);
    w.String(params.values()[j]);
  }
}

inline ConnParams GetParams(Reader& r) {
  ConnParams params;
  const uint32_t pairs = r.Count(8);
  for (uint32_t j = 0; j < pairs && r.ok(); ++j) {
    std::string k = r.String();
    std::string v = r.String();
    params.Set(std::move(k), std::move(v));
  }
  return params;
}

}  // namespace connthrottle::pg

#endif  // CONNTHROTTLE_SRC_PG_BRIDGE_MESSAGE_CODEC_H_
