//! Limits on everything an agent sends, checked in this one place.
//!
//! The controller checks every enrolment, session and heartbeat request with these functions and
//! answers a [`LimitError`] with 400 (malformed) or 413 (too long or too many), naming the field;
//! nothing of a refused request is stored. The agent keeps what it sends within them
//! ([`clamp_inventory`]), so that a machine with an unusual inventory (a hundred virtual network
//! interfaces) still heartbeats.
//!
//! Label keys and values follow Kubernetes' rules.

use std::collections::BTreeMap;
use std::fmt;

use crate::{EnrollRequest, HeartbeatRequest, Inventory, SessionRequest};

/// Largest request body on the agent routes (enrolment, session, heartbeat). The largest valid
/// heartbeat ([`MAX_PACKAGE_REPORTS`] reports with the longest messages and the largest
/// inventory) fits.
pub const MAX_AGENT_BODY_BYTES: usize = 1 << 20;

/// Longest machine id.
pub const MAX_MACHINE_ID_BYTES: usize = 128;

/// Longest host name or requested client name (a DNS name's limit).
pub const MAX_HOSTNAME_BYTES: usize = 253;

/// Longest bootstrap token, session token, challenge, key or signature as sent.
pub const MAX_CREDENTIAL_BYTES: usize = 512;

/// Most labels an agent may declare.
pub const MAX_LABELS: usize = 64;

/// Most package reports in one heartbeat.
pub const MAX_PACKAGE_REPORTS: usize = 128;

/// Longest package name (a DNS label).
pub const MAX_PACKAGE_NAME_BYTES: usize = 63;

/// Longest version string.
pub const MAX_VERSION_BYTES: usize = 128;

/// Longest package report message (room for a hook's 4 KiB output tail and its explanation).
pub const MAX_MESSAGE_BYTES: usize = 6 * 1024;

/// Longest string of an inventory (OS name, CPU model, a disk's mount point, an address, ...).
pub const MAX_INVENTORY_STRING_BYTES: usize = 256;

/// Most disks in an inventory.
pub const MAX_DISKS: usize = 64;

/// Most network interfaces in an inventory.
pub const MAX_INTERFACES: usize = 64;

/// Most addresses of one network interface.
pub const MAX_ADDRESSES: usize = 32;

/// Longest inventory hash.
pub const MAX_INVENTORY_HASH_BYTES: usize = 64;

/// A request field beyond a limit, or malformed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LimitError {
    /// The field's path in the request (`inventory.networkInterfaces[3].addresses`).
    pub field: String,
    /// What is wrong with it.
    pub message: String,
    /// True when it is too long or has too many items (HTTP 413), false when it is malformed
    /// (HTTP 400).
    pub too_large: bool,
}

impl fmt::Display for LimitError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.field, self.message)
    }
}

impl std::error::Error for LimitError {}

fn too_long(field: impl Into<String>, length: usize, limit: usize) -> LimitError {
    LimitError {
        field: field.into(),
        message: format!("{length} bytes long; at most {limit} are accepted"),
        too_large: true,
    }
}

fn too_many(field: impl Into<String>, count: usize, limit: usize, what: &str) -> LimitError {
    LimitError {
        field: field.into(),
        message: format!("{count} {what}; at most {limit} are accepted"),
        too_large: true,
    }
}

fn malformed(field: impl Into<String>, message: impl Into<String>) -> LimitError {
    LimitError {
        field: field.into(),
        message: message.into(),
        too_large: false,
    }
}

fn check_length(text: &str, field: &str, limit: usize) -> Result<(), LimitError> {
    if text.len() > limit {
        return Err(too_long(field, text.len(), limit));
    }
    Ok(())
}

/// A string of at most `limit` bytes without control characters (a name shown in tables).
fn check_plain(text: &str, field: &str, limit: usize) -> Result<(), LimitError> {
    check_length(text, field, limit)?;
    if text.chars().any(char::is_control) {
        return Err(malformed(field, "must not contain control characters"));
    }
    Ok(())
}

/// True for a machine id: 1 to [`MAX_MACHINE_ID_BYTES`] ASCII letters, digits, `.`, `_`, `:`
/// and `-` (`/etc/machine-id` holds 32 hex digits; UUIDs fit too).
pub fn is_valid_machine_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= MAX_MACHINE_ID_BYTES
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._:-".contains(&b))
}

fn check_machine_id(id: &str, field: &str) -> Result<(), LimitError> {
    check_length(id, field, MAX_MACHINE_ID_BYTES)?;
    if !is_valid_machine_id(id) {
        return Err(malformed(
            field,
            "must be 1 to 128 ASCII letters, digits, `.`, `_`, `:` or `-`",
        ));
    }
    Ok(())
}

fn is_label_name(name: &str) -> bool {
    let bytes = name.as_bytes();
    !bytes.is_empty()
        && bytes.len() <= 63
        && bytes
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(b))
        && bytes[0].is_ascii_alphanumeric()
        && bytes[bytes.len() - 1].is_ascii_alphanumeric()
}

fn is_dns_subdomain(text: &str) -> bool {
    text.len() <= 253
        && text.split('.').all(|label| {
            let bytes = label.as_bytes();
            !bytes.is_empty()
                && bytes.len() <= 63
                && bytes
                    .iter()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'-')
                && bytes[0] != b'-'
                && bytes[bytes.len() - 1] != b'-'
        })
}

/// True for a Kubernetes label key: an optional DNS-subdomain prefix and `/`, then a name of at
/// most 63 alphanumerics, `-`, `_` and `.`, starting and ending with an alphanumeric.
pub fn is_label_key(key: &str) -> bool {
    match key.split_once('/') {
        Some((prefix, name)) => is_dns_subdomain(prefix) && is_label_name(name),
        None => is_label_name(key),
    }
}

/// True for a Kubernetes label value: empty, or like a label key's name part.
pub fn is_label_value(value: &str) -> bool {
    value.is_empty() || is_label_name(value)
}

/// Checks a label map: at most [`MAX_LABELS`] labels with valid keys and values.
pub fn check_labels(labels: &BTreeMap<String, String>, field: &str) -> Result<(), LimitError> {
    if labels.len() > MAX_LABELS {
        return Err(too_many(field, labels.len(), MAX_LABELS, "labels"));
    }
    for (key, value) in labels {
        if key.len() > 253 + 1 + 63 {
            return Err(too_long(format!("{field}.<key>"), key.len(), 253 + 1 + 63));
        }
        if !is_label_key(key) {
            return Err(malformed(
                format!("{field}[{key}]"),
                "invalid label key: use an optional DNS subdomain prefix and `/`, then at most 63 \
                 letters, digits, `-`, `_` or `.`, starting and ending with a letter or digit",
            ));
        }
        if value.len() > 63 {
            return Err(too_long(format!("{field}[{key}]"), value.len(), 63));
        }
        if !is_label_value(value) {
            return Err(malformed(
                format!("{field}[{key}]"),
                "invalid label value: use at most 63 letters, digits, `-`, `_` or `.`, starting \
                 and ending with a letter or digit",
            ));
        }
    }
    Ok(())
}

fn check_credential(text: &str, field: &str) -> Result<(), LimitError> {
    check_length(text, field, MAX_CREDENTIAL_BYTES)
}

/// Checks an enrolment request.
pub fn check_enroll(request: &EnrollRequest) -> Result<(), LimitError> {
    check_credential(&request.bootstrap_token, "bootstrapToken")?;
    check_machine_id(request.machine_id.trim(), "machineId")?;
    check_plain(&request.name, "name", MAX_HOSTNAME_BYTES)?;
    check_plain(&request.hostname, "hostname", MAX_HOSTNAME_BYTES)?;
    check_labels(&request.labels, "labels")?;
    check_credential(&request.public_key, "publicKey")?;
    check_credential(&request.signature, "signature")?;
    if let Some(token) = &request.previous_client_token {
        check_credential(token, "previousClientToken")?;
    }
    Ok(())
}

/// Checks a session request.
pub fn check_session(request: &SessionRequest) -> Result<(), LimitError> {
    check_plain(&request.client_name, "clientName", MAX_HOSTNAME_BYTES)?;
    check_credential(&request.challenge, "challenge")?;
    check_credential(&request.signature, "signature")?;
    Ok(())
}

/// Checks a heartbeat: the package reports and the inventory.
pub fn check_heartbeat(request: &HeartbeatRequest) -> Result<(), LimitError> {
    if request.packages.len() > MAX_PACKAGE_REPORTS {
        return Err(too_many(
            "packages",
            request.packages.len(),
            MAX_PACKAGE_REPORTS,
            "package reports",
        ));
    }
    for (index, report) in request.packages.iter().enumerate() {
        let field = |name: &str| format!("packages[{index}].{name}");
        check_plain(&report.name, &field("name"), MAX_PACKAGE_NAME_BYTES)?;
        check_plain(&report.version, &field("version"), MAX_VERSION_BYTES)?;
        if let Some(active) = &report.active_version {
            check_plain(active, &field("activeVersion"), MAX_VERSION_BYTES)?;
        }
        if let Some(message) = &report.message {
            check_length(message, &field("message"), MAX_MESSAGE_BYTES)?;
        }
    }
    check_length(
        &request.inventory_hash,
        "inventoryHash",
        MAX_INVENTORY_HASH_BYTES,
    )?;
    if let Some(inventory) = &request.inventory {
        check_inventory(inventory, "inventory")?;
    }
    Ok(())
}

/// Checks an inventory: its strings and lists.
pub fn check_inventory(inventory: &Inventory, field: &str) -> Result<(), LimitError> {
    check_plain(
        &inventory.hostname,
        &format!("{field}.hostname"),
        MAX_HOSTNAME_BYTES,
    )?;
    for (name, value) in [
        ("osName", &inventory.os_name),
        ("osVersion", &inventory.os_version),
        ("kernelVersion", &inventory.kernel_version),
        ("arch", &inventory.arch),
        ("cpuModel", &inventory.cpu_model),
        ("agentVersion", &inventory.agent_version),
    ] {
        check_length(
            value,
            &format!("{field}.{name}"),
            MAX_INVENTORY_STRING_BYTES,
        )?;
    }
    if inventory.disks.len() > MAX_DISKS {
        return Err(too_many(
            format!("{field}.disks"),
            inventory.disks.len(),
            MAX_DISKS,
            "disks",
        ));
    }
    for (index, disk) in inventory.disks.iter().enumerate() {
        for (name, value) in [
            ("name", &disk.name),
            ("mountPoint", &disk.mount_point),
            ("fileSystem", &disk.file_system),
        ] {
            check_length(
                value,
                &format!("{field}.disks[{index}].{name}"),
                MAX_INVENTORY_STRING_BYTES,
            )?;
        }
    }
    if inventory.network_interfaces.len() > MAX_INTERFACES {
        return Err(too_many(
            format!("{field}.networkInterfaces"),
            inventory.network_interfaces.len(),
            MAX_INTERFACES,
            "network interfaces",
        ));
    }
    for (index, interface) in inventory.network_interfaces.iter().enumerate() {
        let at = format!("{field}.networkInterfaces[{index}]");
        check_length(
            &interface.name,
            &format!("{at}.name"),
            MAX_INVENTORY_STRING_BYTES,
        )?;
        check_length(
            &interface.mac,
            &format!("{at}.mac"),
            MAX_INVENTORY_STRING_BYTES,
        )?;
        if interface.addresses.len() > MAX_ADDRESSES {
            return Err(too_many(
                format!("{at}.addresses"),
                interface.addresses.len(),
                MAX_ADDRESSES,
                "addresses",
            ));
        }
        for (n, address) in interface.addresses.iter().enumerate() {
            check_length(
                address,
                &format!("{at}.addresses[{n}]"),
                MAX_INVENTORY_STRING_BYTES,
            )?;
        }
    }
    Ok(())
}

/// Cuts `text` to at most `limit` bytes at a character boundary.
pub fn truncate(text: &mut String, limit: usize) {
    if text.len() > limit {
        let mut end = limit;
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        text.truncate(end);
    }
}

/// Brings an inventory within the limits (for the agent, before it hashes and sends it): long
/// strings are cut, and only the first disks, interfaces and addresses are kept.
pub fn clamp_inventory(inventory: &mut Inventory) {
    truncate(&mut inventory.hostname, MAX_HOSTNAME_BYTES);
    inventory.hostname.retain(|c| !c.is_control());
    for value in [
        &mut inventory.os_name,
        &mut inventory.os_version,
        &mut inventory.kernel_version,
        &mut inventory.arch,
        &mut inventory.cpu_model,
        &mut inventory.agent_version,
    ] {
        truncate(value, MAX_INVENTORY_STRING_BYTES);
    }
    inventory.disks.truncate(MAX_DISKS);
    for disk in &mut inventory.disks {
        for value in [&mut disk.name, &mut disk.mount_point, &mut disk.file_system] {
            truncate(value, MAX_INVENTORY_STRING_BYTES);
        }
    }
    inventory.network_interfaces.truncate(MAX_INTERFACES);
    for interface in &mut inventory.network_interfaces {
        truncate(&mut interface.name, MAX_INVENTORY_STRING_BYTES);
        truncate(&mut interface.mac, MAX_INVENTORY_STRING_BYTES);
        interface.addresses.truncate(MAX_ADDRESSES);
        for address in &mut interface.addresses {
            truncate(address, MAX_INVENTORY_STRING_BYTES);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Disk, Load, NetworkInterface, PackageReport, PackageState, Timestamp};

    fn enroll() -> EnrollRequest {
        EnrollRequest {
            protocol_version: crate::PROTOCOL_VERSION,
            bootstrap_token: "b".repeat(64),
            machine_id: "0123456789abcdef0123456789abcdef".into(),
            name: "kiosk-1".into(),
            hostname: "kiosk-1.example.com".into(),
            labels: BTreeMap::from([("site".to_string(), "berlin".to_string())]),
            public_key: "k".repeat(43),
            signature: "s".repeat(86),
            previous_client_token: None,
        }
    }

    fn report(name: &str) -> PackageReport {
        PackageReport {
            staged: None,
            name: name.into(),
            version: "1.0.0".into(),
            state: PackageState::Installed,
            active_version: None,
            message: None,
            since: Timestamp::EPOCH,
        }
    }

    fn heartbeat() -> HeartbeatRequest {
        HeartbeatRequest {
            protocol_version: crate::PROTOCOL_VERSION,
            observed_revision: 1,
            packages: vec![report("kiosk")],
            inventory_hash: "0123456789abcdef".into(),
            inventory: Some(Inventory {
                hostname: "kiosk-1".into(),
                disks: vec![Disk::default()],
                network_interfaces: vec![NetworkInterface {
                    name: "eth0".into(),
                    mac: "aa:bb:cc:dd:ee:ff".into(),
                    addresses: vec!["192.0.2.1/24".into()],
                }],
                ..Default::default()
            }),
            load: Load::default(),
            decommissioned: false,
        }
    }

    /// Expects `check` to refuse with `field`, as 413 (`too_large`) or 400.
    fn refused(result: Result<(), LimitError>, field: &str, too_large: bool) {
        let error = result.expect_err("refused");
        assert_eq!(error.field, field, "{error}");
        assert_eq!(error.too_large, too_large, "{error}");
    }

    #[test]
    fn valid_requests_pass() {
        check_enroll(&enroll()).unwrap();
        check_heartbeat(&heartbeat()).unwrap();
        check_session(&SessionRequest {
            protocol_version: 2,
            client_name: "kiosk-1".into(),
            challenge: String::new(),
            signature: String::new(),
        })
        .unwrap();
    }

    #[test]
    fn enrolment_strings_are_bounded_and_named() {
        let mut request = enroll();
        request.hostname = "h".repeat(20 << 20);
        refused(check_enroll(&request), "hostname", true);
        let mut request = enroll();
        request.name = "n".repeat(254);
        refused(check_enroll(&request), "name", true);
        let mut request = enroll();
        request.name = "kiosk\u{1b}[31m".into();
        refused(check_enroll(&request), "name", false);
        let mut request = enroll();
        request.machine_id = "m".repeat(129);
        refused(check_enroll(&request), "machineId", true);
        let mut request = enroll();
        request.machine_id = "a\nb".into();
        refused(check_enroll(&request), "machineId", false);
        let mut request = enroll();
        request.machine_id = String::new();
        refused(check_enroll(&request), "machineId", false);
        let mut request = enroll();
        request.bootstrap_token = "t".repeat(513);
        refused(check_enroll(&request), "bootstrapToken", true);
        let mut request = enroll();
        request.public_key = "k".repeat(600);
        refused(check_enroll(&request), "publicKey", true);
    }

    #[test]
    fn labels_follow_kubernetes_rules_and_are_counted() {
        let mut request = enroll();
        request.labels = (0..200_000)
            .map(|i| (format!("l{i}"), "v".to_string()))
            .collect();
        refused(check_enroll(&request), "labels", true);
        let cases = [
            ("site", "berlin", true),
            ("example.com/site", "", true),
            ("Site_1.x", "A-b_c.D", true),
            ("-site", "v", false),
            ("Example.com/site", "v", false),
            ("site", "bad value", false),
            ("site/", "v", false),
            ("a/b/c", "v", false),
        ];
        for (key, value, valid) in cases {
            let labels = BTreeMap::from([(key.to_string(), value.to_string())]);
            assert_eq!(
                check_labels(&labels, "labels").is_ok(),
                valid,
                "{key}={value}"
            );
        }
        let long_value = BTreeMap::from([("site".to_string(), "v".repeat(64))]);
        refused(check_labels(&long_value, "labels"), "labels[site]", true);
    }

    #[test]
    fn heartbeat_reports_and_inventory_are_bounded_and_named() {
        let mut request = heartbeat();
        request.packages = (0..1024).map(|i| report(&format!("p{i}"))).collect();
        refused(check_heartbeat(&request), "packages", true);
        let mut request = heartbeat();
        request.packages[0].message = Some("x".repeat(MAX_MESSAGE_BYTES + 1));
        refused(check_heartbeat(&request), "packages[0].message", true);
        let mut request = heartbeat();
        request.packages[0].version = "1".repeat(200);
        refused(check_heartbeat(&request), "packages[0].version", true);
        let mut request = heartbeat();
        request.inventory.as_mut().unwrap().cpu_model = "x".repeat(28 << 20);
        refused(check_heartbeat(&request), "inventory.cpuModel", true);
        let mut request = heartbeat();
        request.inventory.as_mut().unwrap().network_interfaces[0].addresses = vec!["a".into(); 33];
        refused(
            check_heartbeat(&request),
            "inventory.networkInterfaces[0].addresses",
            true,
        );
        let mut request = heartbeat();
        request.inventory.as_mut().unwrap().disks = vec![Disk::default(); 65];
        refused(check_heartbeat(&request), "inventory.disks", true);
        let mut request = heartbeat();
        request.inventory_hash = "h".repeat(65);
        refused(check_heartbeat(&request), "inventoryHash", true);
    }

    #[test]
    fn clamped_inventories_pass_the_checks() {
        let mut inventory = Inventory {
            hostname: format!("host\n{}", "é".repeat(300)),
            cpu_model: "c".repeat(1000),
            disks: vec![
                Disk {
                    mount_point: "/m".repeat(400),
                    ..Default::default()
                };
                100
            ],
            network_interfaces: vec![
                NetworkInterface {
                    name: "veth".into(),
                    mac: String::new(),
                    addresses: vec!["fe80::1/64".into(); 40],
                };
                150
            ],
            ..Default::default()
        };
        assert!(check_inventory(&inventory, "inventory").is_err());
        clamp_inventory(&mut inventory);
        check_inventory(&inventory, "inventory").unwrap();
        assert_eq!(inventory.network_interfaces.len(), MAX_INTERFACES);
        assert!(inventory.hostname.starts_with("host"));
    }

    #[test]
    fn machine_ids_are_plain_ascii() {
        assert!(is_valid_machine_id("0123456789abcdef0123456789abcdef"));
        assert!(is_valid_machine_id("4c4c4544-0051-3510-8051-b4c04f4e4a32"));
        assert!(is_valid_machine_id("host:42_a.b"));
        assert!(!is_valid_machine_id(""));
        assert!(!is_valid_machine_id("with space"));
        assert!(!is_valid_machine_id("ü"));
    }
}
