//! Identities and inventories of simulated thin clients: deterministic from a seed and an index,
//! and as varied as a real mixed fleet (several hardware generations, operating systems, sites).

use std::collections::BTreeMap;

use tc_proto::{Disk, Inventory, NetworkInterface, Timestamp};

/// A splitmix64 step: a well-mixed 64-bit value from any input.
pub fn mix(mut value: u64) -> u64 {
    value = value.wrapping_add(0x9e37_79b9_7f4a_7c15);
    value = (value ^ (value >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    value = (value ^ (value >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    value ^ (value >> 31)
}

/// The `n`-th pseudo-random value of simulated client `index` in fleet `seed`.
pub fn draw(seed: u64, index: u64, n: u64) -> u64 {
    mix(mix(mix(seed) ^ index) ^ n.wrapping_mul(0x2545_f491_4f6c_dd1d))
}

/// A hardware model of the simulated fleet.
struct Hardware {
    /// CPU brand string.
    cpu: &'static str,
    arch: &'static str,
    cores: u32,
    /// Memory sizes in GiB to pick from.
    memory_gib: &'static [u64],
    /// Disk device name.
    disk: &'static str,
    /// Disk sizes in GB to pick from.
    disk_gb: &'static [u64],
}

/// Hardware generations found in thin-client fleets.
const HARDWARE: &[Hardware] = &[
    Hardware {
        cpu: "Intel(R) Celeron(R) J4125 CPU @ 2.00GHz",
        arch: "x86_64",
        cores: 4,
        memory_gib: &[4, 8],
        disk: "mmcblk0",
        disk_gb: &[16, 32, 64],
    },
    Hardware {
        cpu: "Intel(R) Atom(TM) x5-E3940 CPU @ 1.60GHz",
        arch: "x86_64",
        cores: 4,
        memory_gib: &[2, 4],
        disk: "mmcblk0",
        disk_gb: &[8, 16, 32],
    },
    Hardware {
        cpu: "AMD GX-420GI SOC with Radeon(TM) R7E Graphics",
        arch: "x86_64",
        cores: 4,
        memory_gib: &[4, 8],
        disk: "sda",
        disk_gb: &[16, 32],
    },
    Hardware {
        cpu: "Intel(R) Pentium(R) Silver N5030 CPU @ 1.10GHz",
        arch: "x86_64",
        cores: 4,
        memory_gib: &[4, 8],
        disk: "sda",
        disk_gb: &[32, 64, 128],
    },
    Hardware {
        cpu: "Intel(R) Celeron(R) N5105 @ 2.00GHz",
        arch: "x86_64",
        cores: 4,
        memory_gib: &[8, 16],
        disk: "nvme0n1",
        disk_gb: &[128, 256],
    },
    Hardware {
        cpu: "AMD Ryzen Embedded R1505G with Radeon Vega Gfx",
        arch: "x86_64",
        cores: 4,
        memory_gib: &[8, 16],
        disk: "nvme0n1",
        disk_gb: &[128, 256],
    },
    Hardware {
        cpu: "11th Gen Intel(R) Core(TM) i3-1115G4 @ 3.00GHz",
        arch: "x86_64",
        cores: 4,
        memory_gib: &[8, 16],
        disk: "nvme0n1",
        disk_gb: &[256, 512],
    },
    Hardware {
        cpu: "Cortex-A72",
        arch: "aarch64",
        cores: 4,
        memory_gib: &[2, 4, 8],
        disk: "mmcblk0",
        disk_gb: &[16, 32, 64],
    },
    Hardware {
        cpu: "Cortex-A76",
        arch: "aarch64",
        cores: 8,
        memory_gib: &[4, 8],
        disk: "mmcblk0",
        disk_gb: &[32, 64],
    },
];

/// Operating systems: (name, version, kernel).
const SYSTEMS: &[(&str, &str, &str)] = &[
    ("Debian GNU/Linux", "12", "6.1.0-27-amd64"),
    ("Debian GNU/Linux", "13", "6.12.48-1-amd64"),
    ("Ubuntu", "22.04", "5.15.0-125-generic"),
    ("Ubuntu", "24.04", "6.8.0-49-generic"),
    ("IGEL OS", "11.10", "5.15.74-igel"),
    ("IGEL OS", "12.5", "6.6.40-igel"),
    ("eLux RP", "6.13", "6.1.55-elux"),
];

/// Sites (with their private address block) and roles.
const SITES: &[(&str, u8)] = &[
    ("berlin", 16),
    ("paris", 17),
    ("madrid", 18),
    ("warsaw", 19),
    ("lisbon", 20),
    ("vienna", 21),
    ("oslo", 22),
    ("dublin", 23),
];
const ROLES: &[&str] = &["front-desk", "back-office", "kiosk", "warehouse", "lab"];

/// Where a simulated client sits and what it does (its agent labels).
pub fn site_and_role(seed: u64, index: u64) -> (&'static str, &'static str) {
    let site = SITES[(draw(seed, index, 1) % SITES.len() as u64) as usize].0;
    let role = ROLES[(draw(seed, index, 2) % ROLES.len() as u64) as usize];
    (site, role)
}

/// The labels a simulated agent reports at enrolment.
pub fn labels(seed: u64, index: u64) -> BTreeMap<String, String> {
    let (site, role) = site_and_role(seed, index);
    BTreeMap::from([
        ("site".to_string(), site.to_string()),
        ("role".to_string(), role.to_string()),
        ("thinfleet.io/simulated".to_string(), "true".to_string()),
    ])
}

/// The host name (also the client name) of a simulated client.
pub fn hostname(seed: u64, index: u64) -> String {
    let (site, role) = site_and_role(seed, index);
    format!("{site}-{role}-{index:07}")
}

/// A `/etc/machine-id`-like identity (32 hex digits).
pub fn machine_id(seed: u64, index: u64) -> String {
    format!("{:016x}{:016x}", draw(seed, index, 3), draw(seed, index, 4))
}

fn mac(seed: u64, index: u64, nic: u64) -> String {
    let bits = draw(seed, index, 10 + nic);
    // Locally administered, unicast.
    let first = ((bits >> 40) as u8 & 0xfc) | 0x02;
    format!(
        "{first:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
        (bits >> 32) as u8,
        (bits >> 24) as u8,
        (bits >> 16) as u8,
        (bits >> 8) as u8,
        bits as u8
    )
}

/// The full inventory of simulated client `index`: the same every time for the same seed.
pub fn inventory(seed: u64, index: u64) -> Inventory {
    let (site, _) = site_and_role(seed, index);
    let block = SITES
        .iter()
        .find(|(name, _)| *name == site)
        .map_or(16, |(_, block)| *block);
    let hardware = &HARDWARE[(draw(seed, index, 5) % HARDWARE.len() as u64) as usize];
    let (cpu, arch, cores, memories, disk, disk_sizes) = (
        hardware.cpu,
        hardware.arch,
        hardware.cores,
        hardware.memory_gib,
        hardware.disk,
        hardware.disk_gb,
    );
    let (os_name, os_version, kernel) =
        SYSTEMS[(draw(seed, index, 6) % SYSTEMS.len() as u64) as usize];
    let kernel = if arch == "aarch64" {
        kernel.replace("amd64", "arm64")
    } else {
        kernel.to_string()
    };
    let memory_gib = memories[(draw(seed, index, 7) % memories.len() as u64) as usize];
    let disk_gb = disk_sizes[(draw(seed, index, 8) % disk_sizes.len() as u64) as usize];
    let total_bytes = disk_gb * 1_000_000_000;
    let used_share = 20 + draw(seed, index, 9) % 60;
    let available_bytes = (total_bytes * (100 - used_share) / 100) & !((1 << 20) - 1);
    let partition = if disk.starts_with("nvme") || disk.starts_with("mmcblk") {
        format!("/dev/{disk}p2")
    } else {
        format!("/dev/{disk}2")
    };
    let mut disks = vec![Disk {
        name: partition,
        mount_point: "/".into(),
        file_system: "ext4".into(),
        total_bytes,
        available_bytes,
    }];
    if draw(seed, index, 20).is_multiple_of(4) {
        disks.push(Disk {
            name: "/dev/sdb1".into(),
            mount_point: "/media/usb".into(),
            file_system: "vfat".into(),
            total_bytes: 32_000_000_000,
            available_bytes: 30_000_000_000 & !((1 << 20) - 1),
        });
    }
    let host = (index % 65_000) + 2;
    let mut network_interfaces = vec![NetworkInterface {
        name: if arch == "aarch64" { "end0" } else { "enp1s0" }.into(),
        mac: mac(seed, index, 0),
        addresses: vec![
            format!("10.{block}.{}.{}/16", host / 256, host % 256),
            format!(
                "fe80::{:x}:{:x}/64",
                draw(seed, index, 12) as u16,
                index as u16
            ),
        ],
    }];
    if draw(seed, index, 21).is_multiple_of(3) {
        network_interfaces.push(NetworkInterface {
            name: "wlan0".into(),
            mac: mac(seed, index, 1),
            addresses: vec![format!(
                "172.{block}.{}.{}/20",
                (host / 256) % 16,
                host % 256
            )],
        });
    }
    let boot_offset_days = draw(seed, index, 22) % 40;
    Inventory {
        hostname: hostname(seed, index),
        os_name: os_name.into(),
        os_version: os_version.into(),
        kernel_version: kernel,
        arch: arch.into(),
        cpu_model: cpu.into(),
        cpu_cores: cores,
        memory_total_bytes: memory_gib << 30,
        disks,
        network_interfaces,
        boot_time: Some(Timestamp::from_unix_millis(
            1_795_000_000_000 - boot_offset_days * 86_400_000,
        )),
        agent_version: env!("CARGO_PKG_VERSION").into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeSet;

    #[test]
    fn inventories_are_stable_and_varied() {
        assert_eq!(inventory(1, 5), inventory(1, 5));
        assert_ne!(inventory(1, 5), inventory(2, 5));
        let sample: Vec<Inventory> = (0..400).map(|i| inventory(7, i)).collect();
        let distinct = |f: &dyn Fn(&Inventory) -> String| -> usize {
            sample.iter().map(f).collect::<BTreeSet<_>>().len()
        };
        assert_eq!(distinct(&|i| i.hostname.clone()), 400);
        assert_eq!(distinct(&|i| i.network_interfaces[0].mac.clone()), 400);
        assert!(distinct(&|i| i.cpu_model.clone()) >= 8);
        assert!(distinct(&|i| i.os_name.clone() + &i.os_version) >= 6);
        assert!(distinct(&|i| i.memory_total_bytes.to_string()) >= 4);
        assert!(distinct(&|i| i.arch.clone()) == 2);
        assert!(sample.iter().any(|i| i.network_interfaces.len() == 2));
        assert!(sample.iter().any(|i| i.disks.len() == 2));
        assert!(
            sample
                .iter()
                .all(|i| tc_api::validate::is_dns_label(&i.hostname))
        );
    }

    #[test]
    fn identities_are_distinct_per_index() {
        assert_ne!(machine_id(1, 1), machine_id(1, 2));
        assert_eq!(machine_id(1, 1).len(), 32);
        assert_eq!(labels(3, 4)["thinfleet.io/simulated"], "true");
    }
}
