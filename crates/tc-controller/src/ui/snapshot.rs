//! The console's view of the fleet: a compact snapshot built in one pass over the fleet in
//! memory, at most every [`REFRESH`] and only while someone asks (an open console), so that no
//! heartbeat pays anything for the console and a page of a million clients costs a scan of
//! contiguous arrays, not a million scattered slots.
//!
//! It holds, in name order, each client's slot, last heartbeat, phase, progress and whether it
//! is active; the counts by phase (the overview); posting lists of label values and of package
//! versions; and the lowercase names and host names in one buffer for searches. A request
//! uses the newest snapshot and, when it is older than [`REFRESH`], starts one rebuild in the
//! background (one at a time); only the very first request waits for a build. Rows are then
//! read from the live slots, so what a page shows of a client is current, while which clients
//! match is at most a few seconds old.
//!
//! Memory at a million clients: about 96 MiB measured (entries of 24 bytes, about 12 bytes of
//! text, 4 per indexed label and package, with the slack of growing vectors and tables), held
//! while the controller runs once a console was opened.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tc_api::{ClientPhase, Timestamp};

use super::query::{Overview, Progress, progress};
use crate::fleet::{Admission, ClientSlot, Fleet};

/// A snapshot older than this is rebuilt (in the background) when a page asks for one.
pub const REFRESH: Duration = Duration::from_secs(3);

/// The label key not indexed: every client has its own value (the search covers it).
pub const HOSTNAME_LABEL: &str = "thinfleet.io/hostname";

/// One client in the snapshot.
#[derive(Debug)]
pub struct Entry {
    /// Its slot (rows are read from it, live).
    pub slot: Arc<ClientSlot>,
    /// Last heartbeat, unix milliseconds (0: never).
    pub last_seen: u64,
    /// Its phase.
    pub phase: ClientPhase,
    /// Up to date, updating or failed.
    pub progress: Progress,
    /// Approved and not decommissioning (groups select only these).
    pub active: bool,
}

/// Positions in [`Snapshot::entries`], ascending.
pub type Postings = Vec<u32>;

/// See the module documentation.
#[derive(Debug, Default)]
pub struct Snapshot {
    /// Every client, by name.
    pub entries: Vec<Entry>,
    /// Counts by phase.
    pub overview: Overview,
    /// Label key → value → clients (merged labels: admin over agent over automatic).
    pub labels: HashMap<String, HashMap<String, Postings>>,
    /// Package name → version → clients reporting or assigned it.
    pub packages: StrMap<StrMap<Postings>>,
    /// `name\thostname\n` of every client, lowercase, in entry order.
    pub text: String,
    /// Where each entry's text starts.
    pub offsets: Vec<u32>,
    /// When it was built.
    pub built: Option<Instant>,
}

/// Hashes pointer pairs (interned strings are unique while in use): one multiply.
#[derive(Default)]
pub struct PtrHasher(u64);

impl Hasher for PtrHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for byte in bytes {
            self.0 = (self.0.rotate_left(5) ^ u64::from(*byte)).wrapping_mul(0x517c_c1b7_2722_0a95);
        }
    }

    fn write_usize(&mut self, value: usize) {
        self.0 = (self.0.rotate_left(5) ^ value as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    }
}

type PtrMap<V> = HashMap<(usize, usize), V, BuildHasherDefault<PtrHasher>>;

/// A map by short strings (package names and versions) with a cheap hash: they are looked up
/// for every client of a build, and come from the controller's own state.
pub type StrMap<V> = HashMap<String, V, BuildHasherDefault<PtrHasher>>;

fn ptr(text: &Arc<str>) -> usize {
    Arc::as_ptr(text) as *const u8 as usize
}

impl Snapshot {
    /// Builds a snapshot in one pass over `fleet`.
    pub fn build(fleet: &Fleet) -> Snapshot {
        let mut snapshot = Snapshot {
            entries: Vec::with_capacity(fleet.len()),
            ..Default::default()
        };
        let mut labels: PtrMap<(Arc<str>, Arc<str>, Postings)> = PtrMap::default();
        let counts = &mut snapshot.overview;
        let (entries, text, offsets, packages) = (
            &mut snapshot.entries,
            &mut snapshot.text,
            &mut snapshot.offsets,
            &mut snapshot.packages,
        );
        // The index's lock is held only to copy the slot list (enrolments wait that long).
        for slot in fleet.slots() {
            let slot = &slot;
            let at = entries.len() as u32;
            let state = slot.state.lock().expect("client lock");
            let status = &state.status;
            let client_progress = progress(&state);
            counts.total += 1;
            match status.phase {
                ClientPhase::Online => counts.online += 1,
                ClientPhase::Offline => counts.offline += 1,
                ClientPhase::Enrolled => counts.enrolled += 1,
                ClientPhase::Pending => counts.pending += 1,
                ClientPhase::Decommissioning => counts.decommissioning += 1,
            }
            match client_progress {
                Progress::Updating => counts.updating += 1,
                Progress::Failed => counts.failed += 1,
                Progress::UpToDate => {}
            }
            // Merged labels: admin over agent over automatic.
            let sources = [
                &state.labels.admin,
                &state.labels.agent,
                &state.labels.automatic,
            ];
            for (rank, source) in sources.iter().enumerate() {
                for (key, value) in source.iter() {
                    let shadowed = sources[..rank].iter().any(|s| s.get(key).is_some());
                    if shadowed || &**key == HOSTNAME_LABEL {
                        continue;
                    }
                    labels
                        .entry((ptr(key), ptr(value)))
                        .or_insert_with(|| (key.clone(), value.clone(), vec![]))
                        .2
                        .push(at);
                }
            }
            // What it runs or is to run, each (name, version) once.
            let reported = status.packages.iter().map(|p| (&p.name, &p.version));
            let assigned = status
                .desired
                .iter()
                .filter(|d| {
                    !status
                        .packages
                        .iter()
                        .any(|p| p.name == d.name && p.version == d.version)
                })
                .map(|p| (&p.name, &p.version));
            for (name, version) in reported.chain(assigned) {
                if !packages.contains_key(name.as_str()) {
                    packages.insert(name.clone(), StrMap::default());
                }
                let versions = packages.get_mut(name.as_str()).expect("inserted");
                match versions.get_mut(version.as_str()) {
                    Some(postings) => {
                        if postings.last() != Some(&at) {
                            postings.push(at);
                        }
                    }
                    None => {
                        versions.insert(version.clone(), vec![at]);
                    }
                }
            }
            offsets.push(text.len() as u32);
            push_lower(text, &slot.name);
            text.push('\t');
            if let Some(host) = state.labels.get(HOSTNAME_LABEL) {
                push_lower(text, host);
            }
            text.push('\n');
            entries.push(Entry {
                slot: slot.clone(),
                last_seen: status.last_heartbeat.map_or(0, Timestamp::unix_millis),
                phase: status.phase,
                progress: client_progress,
                active: state.admission == Admission::Active,
            });
        }
        for (_, (key, value, postings)) in labels {
            snapshot
                .labels
                .entry(key.to_string())
                .or_default()
                .insert(value.to_string(), postings);
        }
        snapshot.built = Some(Instant::now());
        snapshot
    }

    /// The entry whose text holds byte `at`.
    pub fn entry_at(&self, at: usize) -> usize {
        self.offsets.partition_point(|start| *start as usize <= at) - 1
    }

    /// The position of the client `name`.
    pub fn position(&self, name: &str) -> Option<usize> {
        self.entries
            .binary_search_by(|entry| (*entry.slot.name).cmp(name))
            .ok()
    }
}

fn push_lower(text: &mut String, value: &str) {
    if value.is_ascii() {
        text.extend(value.chars().map(|c| c.to_ascii_lowercase()));
    } else {
        text.push_str(&value.to_lowercase());
    }
}

/// The console's snapshot and its refresh.
#[derive(Debug, Default)]
pub struct Snapshots {
    current: Mutex<Option<Arc<Snapshot>>>,
    building: AtomicBool,
}

impl Snapshots {
    /// The newest snapshot; builds the first one (waiting for it), and starts a rebuild in the
    /// background when the newest is older than [`REFRESH`].
    pub async fn get(self: &Arc<Self>, fleet: &Arc<Fleet>) -> Arc<Snapshot> {
        let current = self.current.lock().expect("snapshot lock").clone();
        match current {
            Some(snapshot) => {
                let stale = snapshot.built.is_none_or(|at| at.elapsed() >= REFRESH);
                if stale && !self.building.swap(true, Ordering::AcqRel) {
                    let (this, fleet) = (self.clone(), fleet.clone());
                    tokio::task::spawn_blocking(move || {
                        let snapshot = Arc::new(Snapshot::build(&fleet));
                        *this.current.lock().expect("snapshot lock") = Some(snapshot);
                        this.building.store(false, Ordering::Release);
                    });
                }
                snapshot
            }
            None => {
                let fleet = fleet.clone();
                let snapshot = Arc::new(
                    tokio::task::spawn_blocking(move || Snapshot::build(&fleet))
                        .await
                        .unwrap_or_default(),
                );
                *self.current.lock().expect("snapshot lock") = Some(snapshot.clone());
                snapshot
            }
        }
    }

    /// Drops the snapshot, so that the next page builds a new one before it answers (after a
    /// change made through the console, which its next page must show).
    pub fn invalidate(&self) {
        *self.current.lock().expect("snapshot lock") = None;
    }
}
