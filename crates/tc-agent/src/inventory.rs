//! The machine's inventory and load, gathered with sysinfo.
//!
//! The inventory holds what only changes when the machine does (and is sent only when its hash
//! changes); load and uptime move all the time and travel in [`Load`] with every heartbeat.

use sysinfo::{CpuRefreshKind, Disks, MemoryRefreshKind, Networks, RefreshKind, System};
use tc_proto::{Disk, Inventory, Load, NetworkInterface, Timestamp};

/// Version of this agent, reported in the inventory.
pub const AGENT_VERSION: &str = env!("CARGO_PKG_VERSION");

/// Free disk space is reported in whole multiples of this (64 MiB): it is part of the inventory,
/// whose hash must not change with every log line written, or the full inventory would travel
/// with nearly every heartbeat.
pub const DISK_SPACE_GRANULE: u64 = 64 << 20;

/// File systems that are not disks.
const VIRTUAL_FILE_SYSTEMS: &[&str] = &[
    "tmpfs",
    "devtmpfs",
    "overlay",
    "squashfs",
    "proc",
    "sysfs",
    "cgroup",
    "cgroup2",
    "devpts",
    "mqueue",
    "nsfs",
    "ramfs",
    "autofs",
    "fuse.lxcfs",
];

/// Keeps the sysinfo state needed to compute CPU use between two calls.
pub struct Collector {
    system: Option<System>,
}

impl Default for Collector {
    fn default() -> Self {
        Collector::new()
    }
}

impl Collector {
    /// Starts collecting; the first CPU figure covers the time until the first [`Collector::load`].
    pub fn new() -> Self {
        let refresh = RefreshKind::nothing()
            .with_cpu(CpuRefreshKind::nothing().with_usage())
            .with_memory(MemoryRefreshKind::nothing().with_ram());
        let system = match System::new_with_specifics(refresh) {
            Ok(system) => Some(system),
            Err(error) => {
                tracing::warn!(%error, "cannot read system information; the inventory will be sparse");
                None
            }
        };
        Collector { system }
    }

    /// The current inventory.
    pub fn inventory(&mut self) -> Inventory {
        let (cpu_model, cpu_cores, memory_total_bytes) = match &mut self.system {
            Some(system) => {
                if system.cpus().is_empty() || system.cpus()[0].brand().is_empty() {
                    system.refresh_cpu_list(CpuRefreshKind::nothing());
                }
                system.refresh_memory_specifics(MemoryRefreshKind::nothing().with_ram());
                let cpus = system.cpus();
                (
                    cpus.first()
                        .map(|cpu| cpu.brand().trim().to_owned())
                        .unwrap_or_default(),
                    u32::try_from(cpus.len()).unwrap_or(u32::MAX),
                    system.total_memory(),
                )
            }
            None => (String::new(), 0, 0),
        };
        let mut inventory = Inventory {
            hostname: hostname(),
            os_name: System::name().unwrap_or_default(),
            os_version: System::os_version().unwrap_or_default(),
            kernel_version: System::kernel_version().unwrap_or_default(),
            arch: arch(),
            cpu_model,
            cpu_cores,
            memory_total_bytes,
            disks: disks(),
            network_interfaces: network_interfaces(),
            boot_time: System::boot_time()
                .ok()
                .map(|seconds| Timestamp::from_unix_millis(seconds.saturating_mul(1000))),
            agent_version: AGENT_VERSION.to_owned(),
        };
        // Within what the controller accepts, so that an unusual machine (a hundred virtual
        // network interfaces) still heartbeats.
        tc_proto::limits::clamp_inventory(&mut inventory);
        inventory
    }

    /// CPU use since the previous call, memory in use and uptime.
    pub fn load(&mut self) -> Load {
        let Some(system) = &mut self.system else {
            return Load::default();
        };
        system.refresh_cpu_usage();
        system.refresh_memory_specifics(MemoryRefreshKind::nothing().with_ram());
        Load {
            cpu_percent: system.global_cpu_usage().clamp(0.0, 100.0),
            memory_used_bytes: system.used_memory(),
            uptime_seconds: System::uptime().unwrap_or_default(),
        }
    }
}

/// The machine's CPU architecture as the kernel reports it (`x86_64`, `aarch64`), falling back
/// to the architecture this binary was built for.
fn arch() -> String {
    let arch = System::cpu_arch();
    if arch.is_empty() || arch == "unknown" {
        std::env::consts::ARCH.to_owned()
    } else {
        arch
    }
}

/// The host name, or an empty string when it cannot be read.
pub fn hostname() -> String {
    System::host_name().unwrap_or_default()
}

fn disks() -> Vec<Disk> {
    let Ok(disks) = Disks::new_with_refreshed_list() else {
        return Vec::new();
    };
    let mut list: Vec<Disk> = disks
        .iter()
        .filter(|disk| {
            let file_system = disk.file_system().to_string_lossy();
            !VIRTUAL_FILE_SYSTEMS.contains(&file_system.as_ref())
        })
        .map(|disk| Disk {
            name: disk.name().to_string_lossy().into_owned(),
            mount_point: disk.mount_point().display().to_string(),
            file_system: disk.file_system().to_string_lossy().into_owned(),
            total_bytes: disk.total_space(),
            available_bytes: disk.available_space() / DISK_SPACE_GRANULE * DISK_SPACE_GRANULE,
        })
        .collect();
    list.sort_by(|a, b| a.mount_point.cmp(&b.mount_point));
    list.dedup_by(|a, b| a.mount_point == b.mount_point);
    list
}

fn network_interfaces() -> Vec<NetworkInterface> {
    let Ok(networks) = Networks::new_with_refreshed_list() else {
        return Vec::new();
    };
    let mut list: Vec<NetworkInterface> = networks
        .iter()
        .map(|(name, data)| {
            let mut addresses: Vec<String> = data
                .ip_networks()
                .iter()
                .map(|network| format!("{}/{}", network.addr, network.prefix))
                .collect();
            addresses.sort();
            NetworkInterface {
                name: name.to_string_lossy().into_owned(),
                mac: data.mac_address().to_string(),
                addresses,
            }
        })
        .filter(|interface| interface.name != "lo")
        .collect();
    list.sort_by(|a, b| a.name.cmp(&b.name));
    list
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inventory_describes_this_machine_and_is_stable() {
        let mut collector = Collector::new();
        let first = collector.inventory();
        assert_eq!(first.agent_version, AGENT_VERSION);
        assert!(!first.arch.is_empty());
        assert!(first.cpu_cores >= 1, "{first:?}");
        assert!(first.memory_total_bytes > 0, "{first:?}");
        assert!(!first.kernel_version.is_empty(), "{first:?}");
        let second = collector.inventory();
        // Only free disk space may move between two reads.
        let strip = |inventory: &Inventory| Inventory {
            disks: Vec::new(),
            ..inventory.clone()
        };
        assert_eq!(strip(&first), strip(&second));
    }

    #[test]
    fn load_reports_memory_and_uptime() {
        let mut collector = Collector::new();
        let load = collector.load();
        assert!(load.memory_used_bytes > 0);
        assert!((0.0..=100.0).contains(&load.cpu_percent));
        assert!(load.uptime_seconds > 0);
    }
}
