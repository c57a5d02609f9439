//! Loads Weft's kernel programs once per node and pins them with their maps, or adopts what an
//! earlier agent pinned, so a restart never attaches duplicates and capture survives it.

use std::{
    fs,
    path::{Path, PathBuf},
};

use aya::{
    maps::{HashMap, MapData, PerCpuArray, SockHash},
    programs::{CgroupSockAddr, CgroupSockAddrAttachType, Program, SkLookup, SockOps},
    EbpfLoader,
};
use weft_common::{counter, DeliveryKey, OrigDst, OrigDstKey, PodConfig};

use super::{kernel_object, CaptureError};

/// The loaded (or adopted) programs, each owned through its pin.
#[derive(Debug)]
pub struct Programs {
    pub connect4: CgroupSockAddr,
    pub connect6: CgroupSockAddr,
    pub getpeername4: CgroupSockAddr,
    pub sockops: SockOps,
    pub sk_lookup: SkLookup,
    /// `true` when the programs were already pinned by an earlier agent.
    pub adopted: bool,
    pub pin_dir: PathBuf,
}

/// The maps user space reads and writes.
pub struct Maps {
    pub pods: HashMap<MapData, u64, PodConfig>,
    pub orig_dst: HashMap<MapData, OrigDstKey, OrigDst>,
    pub excluded_ports: HashMap<MapData, u16, u8>,
    pub inbound_listeners: SockHash<MapData, u32>,
    pub deliveries: HashMap<MapData, DeliveryKey, u8>,
    pub counters: PerCpuArray<MapData, u64>,
}

impl std::fmt::Debug for Maps {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Maps").finish_non_exhaustive()
    }
}

/// Kernel counters summed over CPUs, by slot name.
pub type Counters = Vec<(&'static str, u64)>;

const CGROUP_PROGRAMS: [(&str, CgroupSockAddrAttachType); 3] = [
    ("weft_connect4", CgroupSockAddrAttachType::Connect4),
    ("weft_connect6", CgroupSockAddrAttachType::Connect6),
    ("weft_getpeername4", CgroupSockAddrAttachType::GetPeerName4),
];

fn io_error(what: &str, path: &Path, e: impl std::fmt::Display) -> CaptureError {
    CaptureError::Pin(format!("{what} {}: {e}", path.display()))
}

impl Programs {
    /// Loads the object with its maps pinned under `<pin_dir>/maps`, and each program pinned at
    /// `<pin_dir>/progs/<name>`; programs already pinned there are adopted, not loaded again.
    pub fn load_or_adopt(pin_dir: &Path) -> Result<(Self, Maps), CaptureError> {
        let missing = super::missing_kernel_features();
        if !missing.is_empty() {
            return Err(CaptureError::KernelFeature(missing.join("; ")));
        }
        let maps_dir = pin_dir.join("maps");
        let progs_dir = pin_dir.join("progs");
        for dir in [&maps_dir, &progs_dir] {
            fs::create_dir_all(dir).map_err(|e| io_error("creating", dir, e))?;
        }
        let mut ebpf = EbpfLoader::new()
            .default_map_pin_directory(&maps_dir)
            .load(kernel_object()?)?;
        let adopted = progs_dir.join("weft_sk_lookup").exists();
        for (name, program) in ebpf.programs_mut() {
            let pin = progs_dir.join(name);
            if pin.exists() || name.starts_with("weft_probe") {
                continue;
            }
            let loaded = match program {
                Program::CgroupSockAddr(p) => p.load(),
                Program::SockOps(p) => p.load(),
                Program::SkLookup(p) => p.load(),
                _ => continue,
            };
            loaded.map_err(|source| CaptureError::Program {
                name: name.to_owned(),
                source,
            })?;
            program
                .pin(&pin)
                .map_err(|e| io_error("pinning", &pin, e))?;
        }
        fn program_error(
            name: &'static str,
        ) -> impl Fn(aya::programs::ProgramError) -> CaptureError {
            move |source| CaptureError::Program {
                name: name.to_owned(),
                source,
            }
        }
        let [connect4, connect6, getpeername4] = CGROUP_PROGRAMS.map(|(name, attach)| {
            CgroupSockAddr::from_pin(progs_dir.join(name), attach).map_err(program_error(name))
        });
        let programs = Self {
            connect4: connect4?,
            connect6: connect6?,
            getpeername4: getpeername4?,
            sockops: SockOps::from_pin(progs_dir.join("weft_sockops"))
                .map_err(program_error("weft_sockops"))?,
            sk_lookup: SkLookup::from_pin(progs_dir.join("weft_sk_lookup"))
                .map_err(program_error("weft_sk_lookup"))?,
            adopted,
            pin_dir: pin_dir.to_owned(),
        };
        let mut take =
            |name: &'static str| ebpf.take_map(name).ok_or(CaptureError::MissingMap(name));
        let maps = Maps {
            pods: HashMap::try_from(take("PODS")?)?,
            orig_dst: HashMap::try_from(take("ORIG_DST")?)?,
            excluded_ports: HashMap::try_from(take("EXCLUDED_PORTS")?)?,
            inbound_listeners: SockHash::try_from(take("INBOUND_LISTENERS")?)?,
            deliveries: HashMap::try_from(take("DELIVERIES")?)?,
            counters: PerCpuArray::try_from(take("COUNTERS")?)?,
        };
        Ok((programs, maps))
    }
}

impl Maps {
    /// Makes the kernel's excluded-port set equal `ports`.
    pub fn set_excluded_ports(&mut self, ports: &[u16]) -> Result<(), CaptureError> {
        let stale: Vec<u16> = self
            .excluded_ports
            .keys()
            .filter_map(Result::ok)
            .filter(|p| !ports.contains(p))
            .collect();
        for port in stale {
            self.excluded_ports.remove(&port)?;
        }
        for port in ports {
            self.excluded_ports.insert(port, 1, 0)?;
        }
        Ok(())
    }

    /// Reads and removes the original destination of a captured outbound connection.
    pub fn take_orig_dst(
        &mut self,
        netns_cookie: u64,
        client_port: u16,
    ) -> Option<std::net::SocketAddrV4> {
        let key = OrigDstKey {
            netns_cookie,
            src_port: client_port,
            pad: [0; 6],
        };
        let orig = self.orig_dst.get(&key, 0).ok()?;
        let _ = self.orig_dst.remove(&key);
        Some(std::net::SocketAddrV4::new(
            std::net::Ipv4Addr::from(u32::from_be(orig.ip_be)),
            orig.port,
        ))
    }

    /// The kernel programs' counters, summed over CPUs.
    pub fn counters(&self) -> Counters {
        (0..counter::COUNT)
            .map(|slot| {
                let total = self
                    .counters
                    .get(&slot, 0)
                    .map(|v| v.iter().sum())
                    .unwrap_or(0);
                (counter::NAMES[slot as usize], total)
            })
            .collect()
    }
}

/// Removes everything pinned under `pin_dir`: pod links (which detaches them), programs and
/// maps. Returns what was removed, for the operator.
pub fn uninstall(pin_dir: &Path) -> Result<Vec<String>, CaptureError> {
    let mut removed = Vec::new();
    if !pin_dir.exists() {
        return Ok(removed);
    }
    removed.extend(super::links::detach_all(&pin_dir.join("pods"))?);
    for sub in ["progs", "maps"] {
        let dir = pin_dir.join(sub);
        let Ok(entries) = fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            fs::remove_file(entry.path()).map_err(|e| io_error("unpinning", &entry.path(), e))?;
            removed.push(format!("{sub}/{}", entry.file_name().to_string_lossy()));
        }
        fs::remove_dir(&dir).map_err(|e| io_error("removing", &dir, e))?;
    }
    fs::remove_dir(pin_dir).map_err(|e| io_error("removing", pin_dir, e))?;
    Ok(removed)
}
