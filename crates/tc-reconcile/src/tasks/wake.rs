//! Wake-on-LAN: which online neighbour sends each sleeping target's magic packet.
//!
//! The packet is an IPv4 broadcast on the target's segment, so the sender must have an
//! address in the same network (same prefix, same address under the mask). Candidates are
//! indexed by network once; each target then costs a lookup per address, so 50,000 targets
//! and candidates plan in one pass over each.

use std::collections::HashMap;
use std::net::Ipv4Addr;

use tc_api::Inventory;

/// A client to wake.
#[derive(Clone, Copy, Debug)]
pub struct WakeTarget<'a> {
    /// Its name.
    pub name: &'a str,
    /// Its last known inventory (interfaces, MACs, addresses).
    pub inventory: Option<&'a Inventory>,
    /// Whether it is online now.
    pub online: bool,
}

/// An online client that could send the packet.
#[derive(Clone, Copy, Debug)]
pub struct Candidate<'a> {
    /// Its name.
    pub name: &'a str,
    /// Its inventory.
    pub inventory: &'a Inventory,
}

/// What happens for one target.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum WakeOutcome {
    /// It is online: nothing to send.
    AlreadyOnline,
    /// No usable hardware address is known (no inventory, or only empty, all-zero, malformed
    /// or loopback interfaces).
    NoMac,
    /// No online client has an IPv4 address in any of the target's IPv4 networks (IPv6-only
    /// segments included: the packet is an IPv4 broadcast).
    NoNeighbour,
    /// `neighbour` sends the magic packet for `mac` to `broadcast`.
    Send {
        /// The client that sends it.
        neighbour: String,
        /// The target's hardware address, lowercase and colon-separated.
        mac: String,
        /// The segment's broadcast address (`192.0.2.255` for `192.0.2.10/24`).
        broadcast: Ipv4Addr,
    },
}

/// The plan for one target.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WakePlan {
    /// The target.
    pub target: String,
    /// What happens.
    pub outcome: WakeOutcome,
}

/// An IPv4 network: its address under the mask and its prefix length.
type Network = (u32, u8);

/// Parses `192.0.2.10/24` into the address and its network. Garbage, IPv6, a missing prefix
/// and prefixes without a broadcast address (/31, /32) give None.
fn ipv4_network(text: &str) -> Option<(Ipv4Addr, Network)> {
    let (address, prefix) = text.trim().split_once('/')?;
    let address: Ipv4Addr = address.parse().ok()?;
    let prefix: u8 = prefix.parse().ok()?;
    if prefix > 30 || address.is_loopback() {
        return None;
    }
    let mask = u32::MAX.checked_shl(32 - u32::from(prefix)).unwrap_or(0);
    Some((address, (address.to_bits() & mask, prefix)))
}

/// The broadcast address of a network.
fn broadcast((network, prefix): Network) -> Ipv4Addr {
    let mask = u32::MAX.checked_shl(32 - u32::from(prefix)).unwrap_or(0);
    Ipv4Addr::from_bits(network | !mask)
}

/// Normalizes a hardware address to `aa:bb:cc:dd:ee:ff`; None for empty, all-zero or
/// malformed ones.
fn normal_mac(text: &str) -> Option<String> {
    let text = text.trim();
    let octets: Vec<&str> = text.split([':', '-']).collect();
    if octets.len() != 6
        || octets
            .iter()
            .any(|octet| octet.len() != 2 || !octet.bytes().all(|b| b.is_ascii_hexdigit()))
    {
        return None;
    }
    if octets.iter().all(|octet| *octet == "00") {
        return None;
    }
    Some(octets.join(":").to_ascii_lowercase())
}

fn is_loopback_interface(name: &str) -> bool {
    name == "lo"
}

/// Chooses the sender of each target's magic packet, in the order of `targets` (pass them in
/// a stable order, e.g. by name, for a stable plan).
///
/// For each of the target's interfaces with a usable MAC, in inventory order, and each of its
/// IPv4 addresses: the online candidates with an address in that network, sorted by name,
/// take turns (round-robin per network across the targets), so a segment's targets are spread
/// over its neighbours; the target itself is never its own neighbour. The first interface and
/// address with a neighbour wins.
pub fn plan_wake(targets: &[WakeTarget<'_>], candidates: &[Candidate<'_>]) -> Vec<WakePlan> {
    let mut by_network: HashMap<Network, Vec<&str>> = HashMap::new();
    for candidate in candidates {
        for interface in &candidate.inventory.network_interfaces {
            if is_loopback_interface(&interface.name) {
                continue;
            }
            for address in &interface.addresses {
                if let Some((_, network)) = ipv4_network(address) {
                    by_network.entry(network).or_default().push(candidate.name);
                }
            }
        }
    }
    for names in by_network.values_mut() {
        names.sort_unstable();
        names.dedup();
    }
    let mut turns: HashMap<Network, usize> = HashMap::new();
    targets
        .iter()
        .map(|target| WakePlan {
            target: target.name.to_string(),
            outcome: plan_one(target, &by_network, &mut turns),
        })
        .collect()
}

fn plan_one(
    target: &WakeTarget<'_>,
    by_network: &HashMap<Network, Vec<&str>>,
    turns: &mut HashMap<Network, usize>,
) -> WakeOutcome {
    if target.online {
        return WakeOutcome::AlreadyOnline;
    }
    let Some(inventory) = target.inventory else {
        return WakeOutcome::NoMac;
    };
    let mut any_mac = false;
    for interface in &inventory.network_interfaces {
        if is_loopback_interface(&interface.name) {
            continue;
        }
        let Some(mac) = normal_mac(&interface.mac) else {
            continue;
        };
        any_mac = true;
        for address in &interface.addresses {
            let Some((_, network)) = ipv4_network(address) else {
                continue;
            };
            let Some(names) = by_network.get(&network) else {
                continue;
            };
            let others = names.len() - usize::from(names.binary_search(&target.name).is_ok());
            if others == 0 {
                continue;
            }
            let turn = turns.entry(network).or_default();
            let mut pick = names[*turn % names.len()];
            if pick == target.name {
                *turn += 1;
                pick = names[*turn % names.len()];
            }
            *turn += 1;
            return WakeOutcome::Send {
                neighbour: pick.to_string(),
                mac,
                broadcast: broadcast(network),
            };
        }
    }
    if any_mac {
        WakeOutcome::NoNeighbour
    } else {
        WakeOutcome::NoMac
    }
}
