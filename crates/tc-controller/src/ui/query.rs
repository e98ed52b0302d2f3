//! The console's fleet queries, sized for a million clients. They run on the console's
//! [`Snapshot`] (contiguous arrays and posting lists built in one pass over the fleet), so a
//! page costs set operations on bitmaps and a scan of small entries, never a walk over a million
//! scattered slots nor a sort of them:
//!
//! * the overview's counts are the snapshot's;
//! * label selectors, groups and packages are posting lists combined as bitmaps (the host-name
//!   label, not indexed, is checked on the live slots of the remaining candidates); searches scan
//!   one lowercase buffer of names and host names;
//! * sorted by name (the snapshot's order) a page keeps only its rows; sorted by another key it
//!   keeps the best `offset + page` keys in a bounded heap, and such pages stop at
//!   [`MAX_SORTED_WINDOW`] rows (narrow the filter to go further);
//! * rows are read from the live slots.

use std::collections::{BinaryHeap, HashSet};
use std::sync::Arc;

use tc_api::{ClientPhase, LabelSelector, SelectorOperator, Timestamp};
use tc_proto::PackageState;

use super::snapshot::{Entry, HOSTNAME_LABEL, Snapshot};
use crate::fleet::{Admission, ClientRuntime, ClientSlot};

/// Deepest row a page sorted by something other than the name may reach.
pub const MAX_SORTED_WINDOW: usize = 10_000;

/// Clients by phase.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Overview {
    /// Every client.
    pub total: usize,
    /// Heartbeating.
    pub online: usize,
    /// Missed three heartbeats.
    pub offline: usize,
    /// Enrolled, no heartbeat yet.
    pub enrolled: usize,
    /// Waiting for approval.
    pub pending: usize,
    /// Being decommissioned.
    pub decommissioning: usize,
    /// Assigned packages they do not run yet (and none failed).
    pub updating: usize,
    /// Reporting a failed package.
    pub failed: usize,
}

/// What the console shows as a client's state besides its phase.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Progress {
    /// Runs what it is assigned.
    UpToDate,
    /// Has an assignment it does not run yet.
    Updating,
    /// Reports a failed package.
    Failed,
}

/// Whether a client runs what it is assigned.
pub fn progress(state: &ClientRuntime) -> Progress {
    let status = &state.status;
    if status
        .packages
        .iter()
        .any(|p| p.state == PackageState::Failed)
    {
        return Progress::Failed;
    }
    if state.admission != Admission::Active {
        return Progress::UpToDate;
    }
    let behind = status.observed_revision < status.desired_revision
        || status.desired.iter().any(|desired| {
            !status.packages.iter().any(|p| {
                p.name == desired.name
                    && p.version == desired.version
                    && p.state == PackageState::Installed
            })
        });
    if behind {
        Progress::Updating
    } else {
        Progress::UpToDate
    }
}

/// The phase filter of the clients page.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PhaseFilter {
    /// A phase.
    Phase(ClientPhase),
    /// [`Progress::Updating`].
    Updating,
    /// [`Progress::Failed`].
    Failed,
}

impl PhaseFilter {
    /// Every filter with its query word.
    pub const ALL: [(&'static str, PhaseFilter); 7] = [
        ("online", PhaseFilter::Phase(ClientPhase::Online)),
        ("offline", PhaseFilter::Phase(ClientPhase::Offline)),
        ("updating", PhaseFilter::Updating),
        ("failed", PhaseFilter::Failed),
        ("enrolled", PhaseFilter::Phase(ClientPhase::Enrolled)),
        ("pending", PhaseFilter::Phase(ClientPhase::Pending)),
        (
            "decommissioning",
            PhaseFilter::Phase(ClientPhase::Decommissioning),
        ),
    ];

    /// The filter of a query word.
    pub fn parse(word: &str) -> Option<PhaseFilter> {
        Self::ALL
            .iter()
            .find(|(name, _)| *name == word)
            .map(|(_, filter)| *filter)
    }
}

/// How the clients page is sorted.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Sort {
    /// By name (the fleet's order).
    #[default]
    Name,
    /// By last heartbeat.
    LastSeen,
    /// By phase, then name.
    Phase,
}

impl Sort {
    /// Every sort with its query word.
    pub const ALL: [(&'static str, Sort); 3] = [
        ("name", Sort::Name),
        ("lastSeen", Sort::LastSeen),
        ("phase", Sort::Phase),
    ];
}

/// A query of the clients page.
#[derive(Clone, Debug, Default)]
pub struct ClientQuery {
    /// Part of the name or host name (case-insensitive).
    pub search: Option<String>,
    /// Clients whose inventory has the searched address (IP or MAC), found by the caller.
    pub address_matches: Option<HashSet<String>>,
    /// Label selector.
    pub selector: Option<LabelSelector>,
    /// Phase or progress.
    pub phase: Option<PhaseFilter>,
    /// Members of a group: its selector (members are active clients it selects).
    pub group: Option<LabelSelector>,
    /// A package (`name`, or `name` and version) reported or assigned.
    pub package: Option<(String, Option<String>)>,
    /// Order.
    pub sort: Sort,
    /// Reverse order.
    pub descending: bool,
    /// Rows skipped.
    pub offset: usize,
    /// Rows per page.
    pub limit: usize,
}

/// One row of the clients page, from memory.
#[derive(Clone, Debug)]
pub struct Row {
    /// Name.
    pub name: Arc<str>,
    /// Phase.
    pub phase: ClientPhase,
    /// Up to date, updating or failed.
    pub progress: Progress,
    /// Last heartbeat.
    pub last_seen: Option<Timestamp>,
    /// The `thinfleet.io/hostname` label.
    pub hostname: Option<String>,
    /// The `thinfleet.io/agent-version` label: the version the agent reports.
    pub agent_version: Option<String>,
    /// Packages as reported: name, version, state.
    pub packages: Vec<(String, String, PackageState)>,
}

/// A page of the clients page.
#[derive(Clone, Debug, Default)]
pub struct ClientPage {
    /// Clients matching the filters.
    pub matches: usize,
    /// The page's rows.
    pub rows: Vec<Row>,
    /// The offset was beyond [`MAX_SORTED_WINDOW`] and was brought back.
    pub clamped: bool,
}

/// A set of snapshot positions.
#[derive(Clone, Debug)]
struct Bits(Vec<u64>);

impl Bits {
    fn empty(len: usize) -> Bits {
        Bits(vec![0; len.div_ceil(64)])
    }

    fn full(len: usize) -> Bits {
        let mut bits = Bits(vec![u64::MAX; len.div_ceil(64)]);
        if !len.is_multiple_of(64)
            && let Some(last) = bits.0.last_mut()
        {
            *last = (1u64 << (len % 64)) - 1;
        }
        bits
    }

    fn set(&mut self, at: usize) {
        self.0[at / 64] |= 1 << (at % 64);
    }

    fn get(&self, at: usize) -> bool {
        self.0[at / 64] & (1 << (at % 64)) != 0
    }

    fn add(&mut self, postings: &[u32]) {
        for at in postings {
            self.set(*at as usize);
        }
    }

    fn and(&mut self, other: &Bits) {
        for (a, b) in self.0.iter_mut().zip(&other.0) {
            *a &= b;
        }
    }

    /// The complement within `len` positions.
    fn not(mut self, len: usize) -> Bits {
        let full = Bits::full(len);
        for (a, b) in self.0.iter_mut().zip(&full.0) {
            *a = !*a & b;
        }
        self
    }
}

/// The clients a selector selects, as far as the snapshot's labels tell, and what is left to
/// check on the live slots (requirements on the host name, which is not indexed).
fn select(snapshot: &Snapshot, selector: &LabelSelector) -> (Bits, Option<LabelSelector>) {
    let len = snapshot.entries.len();
    let mut bits = Bits::full(len);
    let mut live = LabelSelector::default();
    let values = |key: &str| snapshot.labels.get(key);
    for (key, value) in &selector.match_labels {
        if key == HOSTNAME_LABEL {
            live.match_labels.insert(key.clone(), value.clone());
            continue;
        }
        let mut set = Bits::empty(len);
        if let Some(postings) = values(key).and_then(|v| v.get(value)) {
            set.add(postings);
        }
        bits.and(&set);
    }
    for requirement in &selector.match_expressions {
        if requirement.key == HOSTNAME_LABEL {
            live.match_expressions.push(requirement.clone());
            continue;
        }
        let mut union = Bits::empty(len);
        if let Some(by_value) = values(&requirement.key) {
            for (value, postings) in by_value {
                let counted = match requirement.operator {
                    SelectorOperator::In | SelectorOperator::NotIn => {
                        requirement.values.contains(value)
                    }
                    SelectorOperator::Exists | SelectorOperator::DoesNotExist => true,
                    // Compared once per distinct version, not once per client.
                    _ => requirement.matches_with(|_| Some(value.as_str())),
                };
                if counted {
                    union.add(postings);
                }
            }
        }
        let set = match requirement.operator {
            SelectorOperator::NotIn | SelectorOperator::DoesNotExist => union.not(len),
            _ => union,
        };
        bits.and(&set);
    }
    (bits, (!live.is_empty()).then_some(live))
}

/// The candidates of a query's indexed filters (`None`: every client), and the selectors left
/// to check on live slots.
fn candidates(snapshot: &Snapshot, query: &ClientQuery) -> (Option<Bits>, Vec<LabelSelector>) {
    let len = snapshot.entries.len();
    let mut bits: Option<Bits> = None;
    let mut live = vec![];
    let narrow = |set: Bits, bits: &mut Option<Bits>| match bits {
        Some(bits) => bits.and(&set),
        None => *bits = Some(set),
    };
    for selector in [&query.selector, &query.group].into_iter().flatten() {
        let (set, rest) = select(snapshot, selector);
        narrow(set, &mut bits);
        live.extend(rest);
    }
    if let Some((name, version)) = &query.package {
        let mut set = Bits::empty(len);
        if let Some(versions) = snapshot.packages.get(name) {
            for (v, postings) in versions {
                if version.as_deref().is_none_or(|wanted| wanted == v) {
                    set.add(postings);
                }
            }
        }
        narrow(set, &mut bits);
    }
    let search = query
        .search
        .as_deref()
        .map(|s| s.trim().to_lowercase().replace(['\t', '\n'], ""))
        .filter(|s| !s.is_empty());
    if let Some(needle) = search {
        let mut set = Bits::empty(len);
        let mut last = usize::MAX;
        for (at, _) in snapshot.text.match_indices(&needle) {
            let entry = snapshot.entry_at(at);
            if entry != last {
                set.set(entry);
                last = entry;
            }
        }
        for name in query.address_matches.iter().flatten() {
            if let Some(at) = snapshot.position(name) {
                set.set(at);
            }
        }
        narrow(set, &mut bits);
    }
    (bits, live)
}

fn row(slot: &ClientSlot, state: &ClientRuntime) -> Row {
    Row {
        name: slot.name.clone(),
        phase: state.status.phase,
        progress: progress(state),
        last_seen: state.status.last_heartbeat,
        hostname: state.labels.get(HOSTNAME_LABEL).map(str::to_string),
        agent_version: state
            .labels
            .get(tc_api::resources::AGENT_VERSION_LABEL)
            .map(str::to_string),
        packages: state
            .status
            .packages
            .iter()
            .map(|p| (p.name.clone(), p.version.clone(), p.state))
            .collect(),
    }
}

fn live_row(entry: &Entry) -> Row {
    let state = entry.slot.state.lock().expect("client lock");
    row(&entry.slot, &state)
}

fn phase_rank(phase: ClientPhase) -> u8 {
    match phase {
        ClientPhase::Online => 0,
        ClientPhase::Offline => 1,
        ClientPhase::Enrolled => 2,
        ClientPhase::Pending => 3,
        ClientPhase::Decommissioning => 4,
    }
}

/// The clients page of `query` on `snapshot`.
pub fn clients(snapshot: &Snapshot, query: &ClientQuery) -> ClientPage {
    let limit = query.limit.max(1);
    let (bits, live) = candidates(snapshot, query);
    let keep = |at: usize, entry: &Entry| {
        if bits.as_ref().is_some_and(|bits| !bits.get(at)) {
            return false;
        }
        if query.group.is_some() && !entry.active {
            return false;
        }
        let phase_ok = match query.phase {
            None => true,
            Some(PhaseFilter::Phase(phase)) => entry.phase == phase,
            Some(PhaseFilter::Updating) => entry.progress == Progress::Updating,
            Some(PhaseFilter::Failed) => entry.progress == Progress::Failed,
        };
        if !phase_ok {
            return false;
        }
        if live.is_empty() {
            return true;
        }
        let state = entry.slot.state.lock().expect("client lock");
        live.iter().all(|selector| state.labels.matches(selector))
    };
    let mut page = ClientPage::default();
    let entries = &snapshot.entries;
    if query.sort == Sort::Name {
        // The snapshot's order: keep only the rows of the page.
        let mut visit = |at: usize| {
            let entry = &entries[at];
            if keep(at, entry) {
                if page.matches >= query.offset && page.rows.len() < limit {
                    page.rows.push(live_row(entry));
                }
                page.matches += 1;
            }
        };
        if query.descending {
            (0..entries.len()).rev().for_each(&mut visit);
        } else {
            (0..entries.len()).for_each(&mut visit);
        }
        return page;
    }
    let mut offset = query.offset;
    if offset + limit > MAX_SORTED_WINDOW {
        offset = MAX_SORTED_WINDOW.saturating_sub(limit);
        page.clamped = true;
    }
    let wanted = offset + limit;
    // A max-heap of the best `wanted` (key, position): the worst kept is on top. Descending
    // sorts invert the key; the position (name order) breaks ties.
    let mut heap: BinaryHeap<(u64, usize)> = BinaryHeap::with_capacity(wanted + 1);
    for (at, entry) in entries.iter().enumerate() {
        if !keep(at, entry) {
            continue;
        }
        page.matches += 1;
        let primary = match query.sort {
            Sort::LastSeen => entry.last_seen,
            Sort::Phase => u64::from(phase_rank(entry.phase)),
            Sort::Name => 0,
        };
        let key = if query.descending {
            u64::MAX - primary
        } else {
            primary
        };
        if heap.len() < wanted {
            heap.push((key, at));
        } else if heap.peek().is_some_and(|top| (key, at) < *top) {
            heap.pop();
            heap.push((key, at));
        }
    }
    for (_, at) in heap.into_sorted_vec().into_iter().skip(offset) {
        page.rows.push(live_row(&entries[at]));
    }
    page
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fleet::Fleet;
    use std::collections::BTreeMap;
    use tc_api::{Client, ClientSpec};

    fn client(name: &str, phase: ClientPhase, seen: u64, site: &str) -> Client {
        let mut client = Client::new(
            name,
            ClientSpec {
                machine_id: format!("machine-{name}"),
                agent_labels: BTreeMap::from([("site".to_string(), site.to_string())]),
                ..Default::default()
            },
        );
        if name.ends_with('7') {
            client.spec.admin_labels = BTreeMap::from([
                ("site".to_string(), "c".to_string()),
                (HOSTNAME_LABEL.to_string(), format!("host-{name}")),
            ]);
        }
        client.status.phase = phase;
        client.status.last_heartbeat = Some(Timestamp::from_unix_millis(seen));
        client.refresh_labels();
        client
    }

    fn fleet(count: usize) -> Fleet {
        let fleet = Fleet::default();
        for i in 0..count {
            let phase = if i % 3 == 0 {
                ClientPhase::Offline
            } else {
                ClientPhase::Online
            };
            let site = if i % 2 == 0 { "a" } else { "b" };
            let mut client = client(&format!("tc-{i:07}"), phase, (i * 7919 % 1000) as u64, site);
            // Agents of several versions, one that is not semver, and some that report none.
            let version = ["0.1.0", "0.2.0-rc.1", "0.2.0", "0.10.0", "dev", ""][i % 6];
            client.status.inventory = Some(tc_proto::Inventory {
                agent_version: version.into(),
                ..Default::default()
            });
            client.refresh_labels();
            fleet.insert(&client);
        }
        fleet
    }

    #[test]
    fn pages_filter_and_sort_like_a_full_sort() {
        let fleet = fleet(500);
        let selector = LabelSelector::parse("site=a").unwrap();
        let mut all: Vec<(u64, String)> = vec![];
        fleet.visit(|slot| {
            let state = slot.state.lock().unwrap();
            if state.labels.matches(&selector) && state.status.phase == ClientPhase::Online {
                all.push((
                    state.status.last_heartbeat.unwrap().unix_millis(),
                    slot.name.to_string(),
                ));
            }
            true
        });
        all.sort();
        for descending in [false, true] {
            let mut expected = all.clone();
            if descending {
                expected.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)));
            }
            let query = ClientQuery {
                selector: Some(selector.clone()),
                phase: Some(PhaseFilter::Phase(ClientPhase::Online)),
                sort: Sort::LastSeen,
                descending,
                offset: 20,
                limit: 25,
                ..Default::default()
            };
            let page = clients(&Snapshot::build(&fleet), &query);
            assert_eq!(page.matches, all.len());
            let names: Vec<String> = page.rows.iter().map(|r| r.name.to_string()).collect();
            let want: Vec<String> = expected[20..45].iter().map(|(_, n)| n.clone()).collect();
            assert_eq!(names, want, "descending {descending}");
        }
        let by_name = clients(
            &Snapshot::build(&fleet),
            &ClientQuery {
                search: Some("TC-00001".into()),
                descending: true,
                limit: 3,
                ..Default::default()
            },
        );
        assert_eq!(by_name.matches, 100);
        let names: Vec<&str> = by_name.rows.iter().map(|r| &*r.name).collect();
        assert_eq!(names, ["tc-0000199", "tc-0000198", "tc-0000197"]);
        let counts = Snapshot::build(&fleet).overview;
        assert_eq!((counts.total, counts.offline), (500, 167));
    }

    #[test]
    fn a_deep_sorted_page_is_clamped() {
        let fleet = fleet(50);
        let page = clients(
            &Snapshot::build(&fleet),
            &ClientQuery {
                sort: Sort::Phase,
                offset: MAX_SORTED_WINDOW,
                limit: 10,
                ..Default::default()
            },
        );
        assert!(page.clamped);
        assert_eq!(page.matches, 50);
    }

    #[test]
    fn selectors_on_the_index_select_what_the_labels_select() {
        let fleet = fleet(300);
        let snapshot = Snapshot::build(&fleet);
        for text in [
            "site=a",
            "site!=a",
            "site in (a,c)",
            "site notin (b)",
            "site",
            "!site",
            "site=c,thinfleet.io/hostname=host-tc-0000017",
            "thinfleet.io/hostname",
            "nothing=here",
            "thinfleet.io/agent-version<0.2.0",
            "thinfleet.io/agent-version<=0.2.0",
            "thinfleet.io/agent-version>0.2.0-rc.1",
            "thinfleet.io/agent-version>=0.2.0,site=a",
            "thinfleet.io/agent-version!=0.2.0",
            "!thinfleet.io/agent-version",
        ] {
            let selector = LabelSelector::parse(text).unwrap();
            let mut expected = 0;
            fleet.visit(|slot| {
                expected += usize::from(slot.state.lock().unwrap().labels.matches(&selector));
                true
            });
            let page = clients(
                &snapshot,
                &ClientQuery {
                    selector: Some(selector),
                    limit: 10,
                    ..Default::default()
                },
            );
            assert_eq!(page.matches, expected, "{text}");
            if text.contains("agent-version") {
                assert!(expected > 0 && expected < 300, "{text} selects {expected}");
            }
        }
        let found = clients(
            &snapshot,
            &ClientQuery {
                search: Some("HOST-tc-000001".into()),
                limit: 10,
                ..Default::default()
            },
        );
        let names: Vec<&str> = found.rows.iter().map(|r| &*r.name).collect();
        assert_eq!(names, ["tc-0000017"], "a search finds host names too");
    }
}
