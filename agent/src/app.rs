//! Wires the agent's parts together from a validated [`Config`].

use aya::{programs::Program, EbpfLoader};

use crate::{
    capture::{self, CaptureError},
    config::Config,
};

/// What `weft-agent check` found: the kernel programs the verifier accepted.
#[derive(Debug)]
pub struct CheckReport {
    pub programs: Vec<String>,
}

/// Verifies that this kernel can run Weft: required features present and every kernel program
/// accepted by the verifier. Loads nothing it leaves behind: all is released on return.
pub fn check(config: &Config) -> Result<CheckReport, CaptureError> {
    let missing = capture::missing_kernel_features();
    if !missing.is_empty() {
        return Err(CaptureError::KernelFeature(missing.join("; ")));
    }
    // Pinned-by-name maps go to a throwaway folder beside the real pins, never the bpffs root.
    let scratch = config
        .bpffs_dir
        .with_file_name(format!("weft-check-{}", std::process::id()));
    std::fs::create_dir_all(&scratch).map_err(|e| {
        CaptureError::KernelFeature(format!("cannot create {}: {e}", scratch.display()))
    })?;
    let loaded = EbpfLoader::new()
        .default_map_pin_directory(&scratch)
        .load(capture::kernel_object()?);
    let _ = std::fs::remove_dir_all(&scratch);
    let mut ebpf = loaded?;
    let mut programs = Vec::new();
    for (name, program) in ebpf.programs_mut() {
        let result = match program {
            Program::CgroupSockAddr(p) => p.load(),
            Program::SockOps(p) => p.load(),
            Program::SkLookup(p) => p.load(),
            _ => continue,
        };
        result.map_err(|source| CaptureError::Program {
            name: name.to_owned(),
            source,
        })?;
        programs.push(name.to_owned());
    }
    programs.sort();
    Ok(CheckReport { programs })
}
