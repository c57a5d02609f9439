//! Kernel capture: the embedded eBPF object, the kernel features it needs, and (with the
//! capture issue) attaching its programs to enrolled pods.

pub mod kernel;

pub use kernel::{kernel_object, missing_kernel_features, CaptureError};
