// Error messages handed across the C boundary to Rust: a malloc'ed copy the Rust side
// frees through hist_free_message (ffi_message.cpp; src/ffi_message.rs).
#pragma once

#include <cstdlib>
#include <cstring>

namespace hist_ffi {

// A copy of `message` owned by the caller (free it with std::free); null if out of memory.
inline char* copy_message(const char* message) {
  const size_t n = std::strlen(message);
  char* out = static_cast<char*>(std::malloc(n + 1));
  if (out != nullptr) std::memcpy(out, message, n + 1);
  return out;
}

}  // namespace hist_ffi
