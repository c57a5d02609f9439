//! Kernel capture: the embedded eBPF object, the kernel features it needs, loading or adopting
//! the pinned program and maps, which agent owns them, attaching the program to one pod's
//! netns, and that netns' capture routing.

pub mod kernel;
pub mod links;
pub mod owner;
pub mod programs;
pub mod routing;

pub use kernel::{kernel_object, missing_kernel_features, CaptureError};
pub use owner::Owner;
pub use programs::{Counters, Loaded, Maps, Programs};
