//! The console's fleet queries, sized for a million clients: one pass over the fleet in memory
//! (no store read, no clone of the fleet), bounded memory whatever the fleet's size.
//!
//! * The overview counts clients by phase in one pass (cached for a second, so several open
//!   consoles cost one pass a second at most).
//! * The clients page filters in one pass. Sorted by name (the fleet's own order) it keeps only
//!   the page's rows; sorted by another key it keeps the best `offset + page` keys in a bounded
//!   heap, never sorting the whole fleet, and pages of such a sort stop at
//!   [`MAX_SORTED_WINDOW`] rows (narrow the filter to go further).

use std::collections::{BinaryHeap, HashSet};
use std::sync::Arc;

use tc_api::{ClientPhase, LabelSelector, Timestamp};
use tc_proto::PackageState;

use crate::fleet::{Admission, ClientRuntime, ClientSlot, Fleet};

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

/// Counts the fleet by phase, in one pass.
pub fn overview(fleet: &Fleet) -> Overview {
    let mut counts = Overview::default();
    fleet.visit(|slot| {
        let state = slot.state.lock().expect("client lock");
        counts.total += 1;
        match state.status.phase {
            ClientPhase::Online => counts.online += 1,
            ClientPhase::Offline => counts.offline += 1,
            ClientPhase::Enrolled => counts.enrolled += 1,
            ClientPhase::Pending => counts.pending += 1,
            ClientPhase::Decommissioning => counts.decommissioning += 1,
        }
        match progress(&state) {
            Progress::Updating => counts.updating += 1,
            Progress::Failed => counts.failed += 1,
            Progress::UpToDate => {}
        }
        true
    });
    counts
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

fn matches(
    query: &ClientQuery,
    search: Option<&str>,
    slot: &ClientSlot,
    state: &ClientRuntime,
) -> bool {
    if let Some(selector) = &query.selector
        && !state.labels.matches(selector)
    {
        return false;
    }
    if let Some(selector) = &query.group
        && !(state.admission == Admission::Active && state.labels.matches(selector))
    {
        return false;
    }
    if let Some(filter) = query.phase {
        let ok = match filter {
            PhaseFilter::Phase(phase) => state.status.phase == phase,
            PhaseFilter::Updating => progress(state) == Progress::Updating,
            PhaseFilter::Failed => progress(state) == Progress::Failed,
        };
        if !ok {
            return false;
        }
    }
    if let Some((name, version)) = &query.package {
        let wanted = |n: &str, v: &str| n == name && version.as_deref().is_none_or(|w| w == v);
        let has = state
            .status
            .packages
            .iter()
            .any(|p| wanted(&p.name, &p.version))
            || state
                .status
                .desired
                .iter()
                .any(|p| wanted(&p.name, &p.version));
        if !has {
            return false;
        }
    }
    if let Some(search) = search {
        let by_name = contains_ignore_case(&slot.name, search)
            || state
                .labels
                .get("thinfleet.io/hostname")
                .is_some_and(|host| contains_ignore_case(host, search));
        let by_address = query
            .address_matches
            .as_ref()
            .is_some_and(|names| names.contains(&*slot.name));
        if !(by_name || by_address) {
            return false;
        }
    }
    true
}

/// `needle` must be lowercase.
fn contains_ignore_case(haystack: &str, needle: &str) -> bool {
    if haystack.is_ascii() {
        haystack
            .as_bytes()
            .windows(needle.len().max(1))
            .any(|window| window.eq_ignore_ascii_case(needle.as_bytes()))
            || needle.is_empty()
    } else {
        haystack.to_lowercase().contains(needle)
    }
}

fn row(slot: &ClientSlot, state: &ClientRuntime) -> Row {
    Row {
        name: slot.name.clone(),
        phase: state.status.phase,
        progress: progress(state),
        last_seen: state.status.last_heartbeat,
        hostname: state
            .labels
            .get("thinfleet.io/hostname")
            .map(str::to_string),
        packages: state
            .status
            .packages
            .iter()
            .map(|p| (p.name.clone(), p.version.clone(), p.state))
            .collect(),
    }
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

/// The clients page of `query`: one pass over the fleet.
pub fn clients(fleet: &Fleet, query: &ClientQuery) -> ClientPage {
    let limit = query.limit.max(1);
    let search = query
        .search
        .as_deref()
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_lowercase);
    let search = search.as_deref();
    let mut page = ClientPage::default();
    if query.sort == Sort::Name {
        // The fleet's order: keep only the rows of the page.
        let mut visit = |slot: &Arc<ClientSlot>| {
            let state = slot.state.lock().expect("client lock");
            if matches(query, search, slot, &state) {
                if page.matches >= query.offset && page.rows.len() < limit {
                    page.rows.push(row(slot, &state));
                }
                page.matches += 1;
            }
            true
        };
        if query.descending {
            fleet.visit_rev(&mut visit);
        } else {
            fleet.visit(&mut visit);
        }
        return page;
    }
    let mut offset = query.offset;
    if offset + limit > MAX_SORTED_WINDOW {
        offset = MAX_SORTED_WINDOW.saturating_sub(limit);
        page.clamped = true;
    }
    let keep = offset + limit;
    // A max-heap of the best `keep` keys: the worst kept is on top, replaced by a better one.
    // The key orders ascending; descending sorts negate it. The name breaks ties.
    let mut heap: BinaryHeap<(u64, Arc<str>)> = BinaryHeap::with_capacity(keep + 1);
    fleet.visit(|slot| {
        let state = slot.state.lock().expect("client lock");
        if !matches(query, search, slot, &state) {
            return true;
        }
        page.matches += 1;
        let primary = match query.sort {
            Sort::LastSeen => state
                .status
                .last_heartbeat
                .map_or(0, Timestamp::unix_millis),
            Sort::Phase => u64::from(phase_rank(state.status.phase)),
            Sort::Name => 0,
        };
        drop(state);
        let key = if query.descending {
            u64::MAX - primary
        } else {
            primary
        };
        if heap.len() < keep {
            heap.push((key, slot.name.clone()));
        } else if let Some(top) = heap.peek()
            && (key, &slot.name) < (top.0, &top.1)
        {
            heap.pop();
            heap.push((key, slot.name.clone()));
        }
        true
    });
    let sorted = heap.into_sorted_vec();
    for (_, name) in sorted.into_iter().skip(offset) {
        if let Some(slot) = fleet.get(&name) {
            let state = slot.state.lock().expect("client lock");
            page.rows.push(row(&slot, &state));
        }
    }
    page
}

#[cfg(test)]
mod tests {
    use super::*;
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
            fleet.insert(&client(
                &format!("tc-{i:07}"),
                phase,
                (i * 7919 % 1000) as u64,
                site,
            ));
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
            let page = clients(&fleet, &query);
            assert_eq!(page.matches, all.len());
            let names: Vec<String> = page.rows.iter().map(|r| r.name.to_string()).collect();
            let want: Vec<String> = expected[20..45].iter().map(|(_, n)| n.clone()).collect();
            assert_eq!(names, want, "descending {descending}");
        }
        let by_name = clients(
            &fleet,
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
        let counts = overview(&fleet);
        assert_eq!((counts.total, counts.offline), (500, 167));
    }

    #[test]
    fn a_deep_sorted_page_is_clamped() {
        let fleet = fleet(50);
        let page = clients(
            &fleet,
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
}
