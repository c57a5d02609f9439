//! Kernel capture: the embedded eBPF object, the kernel features it needs, loading or adopting
//! the pinned programs and maps, and attaching them to one pod (its cgroup and its netns).

pub mod kernel;
pub mod links;
pub mod programs;

pub use kernel::{kernel_object, missing_kernel_features, CaptureError};
pub use programs::{Counters, Maps, Programs};
