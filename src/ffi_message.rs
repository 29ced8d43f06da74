//! Error messages handed across the C boundary by csrc/ (csrc/ffi_message.h): a malloc'ed
//! string, or null for success.
use std::ffi::{c_char, CStr};

/// The text of `message`, which is freed; `None` for null (success).
///
/// # Safety
/// `message` must be null or a message returned by a csrc/ entry point that nothing else
/// frees.
pub(crate) unsafe fn take(message: *mut c_char) -> Option<String> {
    if message.is_null() {
        return None;
    }
    // SAFETY: per the contract, a NUL-terminated string from malloc, freed once here.
    let text = unsafe { CStr::from_ptr(message) }.to_string_lossy().into_owned();
    unsafe { hist_free_message(message) };
    Some(text)
}

extern "C" {
    /// csrc/ffi_message.cpp.
    fn hist_free_message(message: *mut c_char);
}
