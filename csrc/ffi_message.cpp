// The one way back for the error messages that csrc/ hands to Rust (see ffi_message.h).
#include <cstdlib>

// Frees a message returned by any csrc/ entry point.
extern "C" void hist_free_message(char* message) { std::free(message); }
