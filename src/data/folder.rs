//! Reader for a user's labelled folders (one sub-folder of JPEG/PNG images per class).
