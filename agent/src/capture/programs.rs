//! Loads Weft's capture program once per node and pins it with its maps, or adopts what an
//! earlier agent pinned, so a restart never attaches duplicates and capture survives it.

use std::{
    fs,
    path::{Path, PathBuf},
};

use aya::{
    maps::{Array, HashMap, MapData, PerCpuArray, SockHash},
    programs::{Program, SkLookup},
    EbpfLoader,
};
use weft_common::{counter, DeliveryKey, PodConfig};

use super::{kernel_object, CaptureError};

/// The capture program, loaded or adopted, owned through its pin.
#[derive(Debug)]
pub struct Programs {
    pub sk_lookup: SkLookup,
    /// `true` when the program was already pinned by an earlier agent.
    pub adopted: bool,
    pub pin_dir: PathBuf,
}

/// The maps user space reads and writes.
pub struct Maps {
    pub pods: HashMap<MapData, u32, PodConfig>,
    pub excluded_ports: HashMap<MapData, u16, u8>,
    pub deliveries: HashMap<MapData, DeliveryKey, u8>,
    pub inbound_listeners: SockHash<MapData, u32>,
    pub outbound_listeners: SockHash<MapData, u32>,
    pub hbone_listeners: SockHash<MapData, u32>,
    pub counters: PerCpuArray<MapData, u64>,
}

/// What [`Programs::load_or_adopt`] hands the agent.
pub struct Loaded {
    pub programs: Programs,
    pub maps: Maps,
    /// Slot 0 of the pinned `OWNER` map: see [`super::owner`].
    pub owner: Array<MapData, u64>,
}

impl std::fmt::Debug for Maps {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Maps").finish_non_exhaustive()
    }
}

impl std::fmt::Debug for Loaded {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Loaded")
            .field("programs", &self.programs)
            .finish_non_exhaustive()
    }
}

/// Kernel counters summed over CPUs, by slot name.
pub type Counters = Vec<(&'static str, u64)>;

const PROGRAM: &str = "weft_sk_lookup";

/// The programs of the object the agent embeds: capture only. Test-only programs (the
/// harness probe) are built into an object of their own and must never be in this one.
pub const PROGRAMS: &[&str] = &[PROGRAM];

/// The maps of the object the agent embeds: those [`Programs::load_or_adopt`] takes.
pub const MAPS: &[&str] = &[
    "PODS",
    "EXCLUDED_PORTS",
    "DELIVERIES",
    "INBOUND_LISTENERS",
    "OUTBOUND_LISTENERS",
    "HBONE_LISTENERS",
    "COUNTERS",
    "OWNER",
];

/// Checks that `object` holds exactly [`PROGRAMS`] and [`MAPS`], so a test-only program or map
/// that found its way into the kernel crate fails the build (`cargo xtask build` runs this on
/// the object it built) instead of shipping. Parsing only: no kernel is involved.
pub fn check_object(object: &[u8]) -> Result<(), CaptureError> {
    let parsed =
        aya_obj::Object::parse(object).map_err(|e| CaptureError::ObjectContents(e.to_string()))?;
    let mut programs: Vec<&str> = parsed.programs.keys().map(String::as_str).collect();
    // Data sections (.rodata, .bss, .data) are the programs' globals, not maps of their own.
    let mut maps: Vec<&str> = parsed
        .maps
        .keys()
        .map(String::as_str)
        .filter(|name| !name.starts_with('.'))
        .collect();
    programs.sort_unstable();
    maps.sort_unstable();
    let mut expected_programs = PROGRAMS.to_vec();
    let mut expected_maps = MAPS.to_vec();
    expected_programs.sort_unstable();
    expected_maps.sort_unstable();
    if programs == expected_programs && maps == expected_maps {
        Ok(())
    } else {
        Err(CaptureError::ObjectContents(format!(
            "programs {programs:?} and maps {maps:?}, expected programs {expected_programs:?} and maps {expected_maps:?}"
        )))
    }
}

fn io_error(what: &str, path: &Path, e: impl std::fmt::Display) -> CaptureError {
    CaptureError::Pin(format!("{what} {}: {e}", path.display()))
}

impl Programs {
    /// Loads the object with its maps pinned under `<pin_dir>/maps`, and the program pinned at
    /// `<pin_dir>/progs/weft_sk_lookup`; a program already pinned there is adopted, not loaded
    /// again.
    #[expect(
        clippy::disallowed_methods,
        reason = "called from the agent's start-up on a blocking thread"
    )]
    pub fn load_or_adopt(pin_dir: &Path) -> Result<Loaded, CaptureError> {
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
        let pin = progs_dir.join(PROGRAM);
        let adopted = pin.exists();
        let program_error = |source| CaptureError::Program {
            name: PROGRAM.to_owned(),
            source,
        };
        if !adopted {
            let Some(Program::SkLookup(program)) = ebpf.program_mut(PROGRAM) else {
                return Err(CaptureError::MissingMap(PROGRAM));
            };
            program.load().map_err(program_error)?;
            program
                .pin(&pin)
                .map_err(|e| io_error("pinning", &pin, e))?;
        }
        let programs = Self {
            sk_lookup: SkLookup::from_pin(&pin).map_err(program_error)?,
            adopted,
            pin_dir: pin_dir.to_owned(),
        };
        let mut take =
            |name: &'static str| ebpf.take_map(name).ok_or(CaptureError::MissingMap(name));
        let maps = Maps {
            pods: HashMap::try_from(take("PODS")?)?,
            excluded_ports: HashMap::try_from(take("EXCLUDED_PORTS")?)?,
            deliveries: HashMap::try_from(take("DELIVERIES")?)?,
            inbound_listeners: SockHash::try_from(take("INBOUND_LISTENERS")?)?,
            outbound_listeners: SockHash::try_from(take("OUTBOUND_LISTENERS")?)?,
            hbone_listeners: SockHash::try_from(take("HBONE_LISTENERS")?)?,
            counters: PerCpuArray::try_from(take("COUNTERS")?)?,
        };
        let owner = Array::try_from(take("OWNER")?)?;
        Ok(Loaded {
            programs,
            maps,
            owner,
        })
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

    /// The kernel program's counters, summed over CPUs.
    pub fn counters(&self) -> Counters {
        (0..counter::COUNT)
            .map(|slot| {
                let total = self.counters.get(&slot, 0).map_or(0, |v| v.iter().sum());
                (counter::NAMES[slot as usize], total)
            })
            .collect()
    }
}

/// Removes everything pinned under `pin_dir`: pod links (which detaches them), the program and
/// the maps. Returns what was removed, for the operator.
#[expect(
    clippy::disallowed_methods,
    reason = "`weft-agent uninstall` is a synchronous command"
)]
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
