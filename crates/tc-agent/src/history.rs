//! The load history: a sample of CPU, memory, system disk and CPU temperature every interval (60 s
//! unless configured), the last [`HISTORY_CAPACITY`] kept in a ring of four bytes per sample, and
//! saved in the state directory now and then so that a restart keeps it.
//!
//! Times are implied by the time of the newest sample and the interval. When samples are missing
//! (the agent was not running, or the machine slept), gap samples take their places: nothing is
//! invented and nothing shifts. A clock stepped back past the newest sample starts the ring anew,
//! since its times would no longer be true.
//!
//! The file (`history.bin`) is written every [`SAVE_EVERY`] samples and at shutdown, not every
//! sample (flash wear); a file that cannot be read is set aside (`history.bin.corrupt`), never
//! fatal.

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::time::Duration;

use sysinfo::{Components, CpuRefreshKind, MemoryRefreshKind, RefreshKind, System};
use tc_proto::Timestamp;
use tc_proto::history::{HISTORY_CAPACITY, LoadHistory, SAMPLE_BYTES, Sample};

use crate::state::{StateDir, StateError, read_file, write_atomic};

/// The ring is saved every this many samples (15 minutes at one a minute).
pub const SAVE_EVERY: u32 = 15;

/// First bytes of `history.bin`.
const MAGIC: &[u8; 4] = b"TCLH";
/// Version of the file layout.
const FILE_VERSION: u8 = 1;
/// Magic, version, interval (u32), newest sample time (u64 ms), count (u16).
const HEADER_BYTES: usize = 4 + 1 + 4 + 8 + 2;
/// FNV-1a 64 of everything before it.
const CHECKSUM_BYTES: usize = 8;

/// The last samples, oldest first, with the time of the newest.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Ring {
    interval_seconds: u32,
    end: Timestamp,
    samples: VecDeque<Sample>,
}

impl Ring {
    /// An empty ring of samples taken every `interval_seconds`.
    pub fn new(interval_seconds: u32) -> Ring {
        Ring {
            interval_seconds: interval_seconds.max(1),
            end: Timestamp::EPOCH,
            samples: VecDeque::with_capacity(HISTORY_CAPACITY),
        }
    }

    /// How many samples (gaps included) are held.
    pub fn len(&self) -> usize {
        self.samples.len()
    }

    /// True when no sample is held.
    pub fn is_empty(&self) -> bool {
        self.samples.is_empty()
    }

    /// Adds a sample taken at `at`, in the slot of the interval grid nearest to it. The slots
    /// since the newest sample that have none become gaps; a sample in the newest one's slot
    /// replaces it; a clock stepped back (or more than the whole ring missing) starts the ring
    /// anew.
    pub fn push(&mut self, sample: Sample, at: Timestamp) {
        let interval_ms = u64::from(self.interval_seconds) * 1000;
        if self.samples.is_empty() {
            self.samples.push_back(sample);
            self.end = at;
            return;
        }
        if at.unix_millis() + interval_ms / 2 < self.end.unix_millis() {
            tracing::warn!(newest = %self.end, now = %at,
                "the clock went back past the newest load sample: the load history starts anew");
            self.samples.clear();
            self.samples.push_back(sample);
            self.end = at;
            return;
        }
        let elapsed = at.unix_millis().saturating_sub(self.end.unix_millis());
        let steps = (elapsed + interval_ms / 2) / interval_ms;
        // The times stay on the grid of the first sample: a late tick is the same minute, and
        // a time is never off by more than half an interval.
        self.end = Timestamp::from_unix_millis(
            self.end
                .unix_millis()
                .saturating_add(steps.saturating_mul(interval_ms)),
        );
        if steps == 0 {
            *self.samples.back_mut().expect("not empty") = sample;
            return;
        }
        let gaps = steps - 1;
        if gaps >= HISTORY_CAPACITY as u64 {
            self.samples.clear();
        } else {
            for _ in 0..gaps {
                self.samples.push_back(Sample::GAP);
            }
        }
        self.samples.push_back(sample);
        while self.samples.len() > HISTORY_CAPACITY {
            self.samples.pop_front();
        }
    }

    /// The history as it travels.
    pub fn history(&self) -> LoadHistory {
        LoadHistory {
            interval_seconds: self.interval_seconds,
            end: self.end,
            samples: self.samples.iter().copied().collect(),
        }
    }

    /// The file's bytes: header, samples, checksum.
    pub fn encode(&self) -> Vec<u8> {
        let mut bytes =
            Vec::with_capacity(HEADER_BYTES + self.samples.len() * SAMPLE_BYTES + CHECKSUM_BYTES);
        bytes.extend_from_slice(MAGIC);
        bytes.push(FILE_VERSION);
        bytes.extend_from_slice(&self.interval_seconds.to_le_bytes());
        bytes.extend_from_slice(&self.end.unix_millis().to_le_bytes());
        let count = u16::try_from(self.samples.len()).expect("at most HISTORY_CAPACITY samples");
        bytes.extend_from_slice(&count.to_le_bytes());
        for sample in &self.samples {
            bytes.extend_from_slice(&sample.to_bytes());
        }
        let checksum = fnv1a(&bytes);
        bytes.extend_from_slice(&checksum.to_le_bytes());
        bytes
    }

    /// A ring from the file's bytes; says what is wrong with them.
    pub fn decode(bytes: &[u8]) -> Result<Ring, String> {
        if bytes.len() < HEADER_BYTES + CHECKSUM_BYTES {
            return Err(format!("{} bytes is shorter than the header", bytes.len()));
        }
        let (body, checksum) = bytes.split_at(bytes.len() - CHECKSUM_BYTES);
        if fnv1a(body).to_le_bytes() != checksum {
            return Err("the checksum does not match".into());
        }
        if &body[..4] != MAGIC {
            return Err("not a load history file".into());
        }
        if body[4] != FILE_VERSION {
            return Err(format!("layout version {} is not known", body[4]));
        }
        let interval_seconds = u32::from_le_bytes(body[5..9].try_into().expect("4 bytes"));
        let end = u64::from_le_bytes(body[9..17].try_into().expect("8 bytes"));
        let count = usize::from(u16::from_le_bytes(
            body[17..19].try_into().expect("2 bytes"),
        ));
        let samples = LoadHistory::decode_samples(&body[HEADER_BYTES..])?;
        if samples.len() != count {
            return Err(format!(
                "holds {} samples, the header says {count}",
                samples.len()
            ));
        }
        if interval_seconds == 0 {
            return Err("the interval is 0".into());
        }
        Ok(Ring {
            interval_seconds,
            end: Timestamp::from_unix_millis(end),
            samples: samples.into(),
        })
    }

    /// Loads the ring saved in `dir` for samples every `interval_seconds`. No file, or one of
    /// another interval, is an empty ring; a file that cannot be read is set aside
    /// (`history.bin.corrupt`) and is an empty ring too.
    pub fn load(dir: &StateDir, interval_seconds: u32) -> Ring {
        let path = dir.history();
        let fresh = Ring::new(interval_seconds);
        let bytes = match read_file(&path) {
            Ok(Some(bytes)) => bytes,
            Ok(None) => return fresh,
            Err(error) => {
                tracing::warn!(%error, "cannot read the load history; starting a new one");
                set_aside(&path);
                return fresh;
            }
        };
        match Ring::decode(&bytes) {
            Ok(ring) if ring.interval_seconds == fresh.interval_seconds => ring,
            Ok(ring) => {
                tracing::info!(
                    saved = ring.interval_seconds,
                    configured = fresh.interval_seconds,
                    "the load history was sampled at another interval; starting a new one"
                );
                fresh
            }
            Err(message) => {
                tracing::warn!(path = %path.display(), %message,
                    "the load history file is unreadable; set aside, starting a new one");
                set_aside(&path);
                fresh
            }
        }
    }

    /// Saves the ring in `dir` (atomically).
    pub fn save(&self, dir: &StateDir) -> Result<(), StateError> {
        write_atomic(&dir.history(), &self.encode(), 0o600)
    }
}

/// Moves an unreadable file out of the way (best effort: a file that cannot be moved is
/// replaced by the next save anyway).
fn set_aside(path: &Path) {
    let aside = path.with_extension("bin.corrupt");
    if let Err(error) = std::fs::rename(path, &aside) {
        tracing::warn!(%error, path = %path.display(), "cannot set the load history file aside");
    }
}

/// 64-bit FNV-1a.
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |hash, byte| {
        (hash ^ u64::from(*byte)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// Takes the samples: keeps the sysinfo state CPU use is computed from between two samples.
pub struct Sampler {
    system: Option<System>,
    components: Option<Components>,
    /// Where the system disk is looked at when `/` cannot be.
    fallback_disk: PathBuf,
}

impl Sampler {
    /// Starts sampling; the first sample's CPU use covers the time from now to it.
    pub fn new(fallback_disk: &Path) -> Sampler {
        let refresh = RefreshKind::nothing()
            .with_cpu(CpuRefreshKind::nothing().with_usage())
            .with_memory(MemoryRefreshKind::nothing().with_ram());
        let system = System::new_with_specifics(refresh)
            .map_err(|error| tracing::warn!(%error, "cannot read CPU and memory use"))
            .ok();
        let components = Components::new_with_refreshed_list().ok();
        Sampler {
            system,
            components,
            fallback_disk: fallback_disk.to_owned(),
        }
    }

    /// A sample now.
    pub fn sample(&mut self) -> Sample {
        let (cpu, memory) = match &mut self.system {
            Some(system) => {
                system.refresh_cpu_usage();
                system.refresh_memory_specifics(MemoryRefreshKind::nothing().with_ram());
                let total = system.total_memory();
                let memory = if total == 0 {
                    0.0
                } else {
                    (system.used_memory() as f64 * 100.0 / total as f64) as f32
                };
                (system.global_cpu_usage(), memory)
            }
            None => (0.0, 0.0),
        };
        let disk = disk_used_percent(Path::new("/"))
            .or_else(|| disk_used_percent(&self.fallback_disk))
            .unwrap_or(0.0);
        let temperature = self.components.as_mut().and_then(cpu_temperature);
        Sample::measured(cpu, memory, disk, temperature)
    }
}

/// The share of a file system in use, as `df` counts it (blocks reserved for root excluded).
fn disk_used_percent(path: &Path) -> Option<f32> {
    let stats = rustix::fs::statvfs(path).ok()?;
    let used = stats.f_blocks.saturating_sub(stats.f_bfree);
    let usable = used + stats.f_bavail;
    (usable > 0).then(|| (used as f64 * 100.0 / usable as f64) as f32)
}

/// The hottest CPU-like sensor (coretemp, k10temp, `cpu_thermal`, ...), when there is one.
fn cpu_temperature(components: &mut Components) -> Option<f32> {
    components.refresh(false);
    components
        .iter()
        .filter(|component| is_cpu_sensor(component.label()))
        .filter_map(|component| component.temperature())
        .filter(|value| value.is_finite())
        .reduce(f32::max)
}

/// True for the label of a sensor that measures the CPU.
pub fn is_cpu_sensor(label: &str) -> bool {
    let label = label.to_ascii_lowercase();
    [
        "cpu", "core", "package", "tctl", "tdie", "k10temp", "coretemp", "soc",
    ]
    .iter()
    .any(|word| label.contains(word))
}

/// Samples every `interval` into `ring` and saves it in `dir` every [`SAVE_EVERY`] samples, until
/// the future is dropped (the caller saves once more at shutdown).
pub async fn sample_forever(ring: &std::sync::Mutex<Ring>, dir: &StateDir, interval: Duration) {
    let mut sampler = Sampler::new(dir.root());
    let mut ticks = tokio::time::interval_at(tokio::time::Instant::now() + interval, interval);
    // A machine that slept misses ticks: they are gaps, not a burst of samples.
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut unsaved = 0u32;
    loop {
        ticks.tick().await;
        let sample = sampler.sample();
        let snapshot = {
            let mut ring = ring.lock().expect("history lock");
            ring.push(sample, Timestamp::now());
            unsaved += 1;
            (unsaved >= SAVE_EVERY).then(|| ring.clone())
        };
        if let Some(ring) = snapshot {
            unsaved = 0;
            if let Err(error) = ring.save(dir) {
                tracing::warn!(%error, "cannot save the load history");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINUTE: u64 = 60_000;

    fn at(minutes: u64) -> Timestamp {
        Timestamp::from_unix_millis(1_800_000_000_000 + minutes * MINUTE)
    }

    fn load(value: u8) -> Sample {
        Sample::measured(f32::from(value), 50.0, 40.0, Some(45.0))
    }

    #[test]
    fn the_ring_keeps_the_last_day_and_drops_the_oldest() {
        let mut ring = Ring::new(60);
        for minute in 0..(HISTORY_CAPACITY as u64 + 10) {
            ring.push(load((minute % 100) as u8), at(minute));
        }
        let history = ring.history();
        assert_eq!(history.samples.len(), HISTORY_CAPACITY);
        assert_eq!(history.samples[0].cpu, 10);
        assert_eq!(history.end, at(HISTORY_CAPACITY as u64 + 9));
        assert_eq!(history.time_of(0), at(10));
    }

    #[test]
    fn missed_minutes_become_gaps_and_late_ticks_do_not_shift_times() {
        let mut ring = Ring::new(60);
        ring.push(load(1), at(0));
        // A tick 20 s late is still the next minute.
        ring.push(
            load(2),
            Timestamp::from_unix_millis(at(1).unix_millis() + 20_000),
        );
        // Down for minutes 2, 3 and 4; the next tick is 10 s early.
        ring.push(
            load(3),
            Timestamp::from_unix_millis(at(5).unix_millis() - 10_000),
        );
        let history = ring.history();
        let cpus: Vec<u8> = history.samples.iter().map(|s| s.cpu).collect();
        assert_eq!(cpus, [1, 2, 255, 255, 255, 3]);
        assert!(history.samples[2..5].iter().all(Sample::is_gap));
        assert_eq!(history.time_of(5), at(5));
        assert_eq!(history.time_of(1), at(1));
        assert_eq!(history.time_of(0), at(0));
    }

    #[test]
    fn a_sample_within_half_an_interval_replaces_the_newest() {
        let mut ring = Ring::new(60);
        ring.push(load(1), at(0));
        ring.push(
            load(2),
            Timestamp::from_unix_millis(at(0).unix_millis() + 10_000),
        );
        assert_eq!(ring.len(), 1);
        assert_eq!(ring.history().samples[0].cpu, 2);
        assert_eq!(ring.history().end, at(0));
    }

    #[test]
    fn a_clock_stepped_back_or_a_day_away_starts_anew() {
        let mut ring = Ring::new(60);
        ring.push(load(1), at(10));
        ring.push(load(2), at(11));
        ring.push(load(3), at(2));
        assert_eq!(ring.history().samples, [load(3)]);
        ring.push(load(4), at(2 + 2 * HISTORY_CAPACITY as u64));
        assert_eq!(ring.history().samples, [load(4)]);
    }

    #[test]
    fn the_file_round_trips_and_costs_four_bytes_a_sample() {
        let mut ring = Ring::new(60);
        for minute in 0..100 {
            ring.push(load(minute as u8), at(minute * 2));
        }
        let bytes = ring.encode();
        assert_eq!(
            bytes.len(),
            HEADER_BYTES + ring.len() * SAMPLE_BYTES + CHECKSUM_BYTES
        );
        assert_eq!(Ring::decode(&bytes).unwrap(), ring);
    }

    #[test]
    fn damaged_files_are_refused_with_a_reason() {
        let mut ring = Ring::new(60);
        ring.push(load(5), at(0));
        let bytes = ring.encode();
        let mut flipped = bytes.clone();
        flipped[HEADER_BYTES] ^= 1;
        assert!(Ring::decode(&flipped).unwrap_err().contains("checksum"));
        assert!(Ring::decode(&bytes[..10]).unwrap_err().contains("shorter"));
        assert!(Ring::decode(b"").is_err());
    }

    #[test]
    fn the_ring_survives_a_restart_and_an_unreadable_file_is_set_aside() {
        let temp = tempfile::tempdir().unwrap();
        let dir = StateDir::new(temp.path());
        assert!(Ring::load(&dir, 60).is_empty());
        let mut ring = Ring::new(60);
        ring.push(load(7), at(0));
        ring.push(load(8), at(1));
        ring.save(&dir).unwrap();
        assert_eq!(Ring::load(&dir, 60), ring);
        // Another interval: the saved times do not fit, a new ring starts (the file stays).
        assert!(Ring::load(&dir, 30).is_empty());
        std::fs::write(dir.history(), b"garbage that is long enough to be read").unwrap();
        assert!(Ring::load(&dir, 60).is_empty());
        assert!(!dir.history().exists());
        assert_eq!(
            std::fs::read(dir.history().with_extension("bin.corrupt")).unwrap(),
            b"garbage that is long enough to be read"
        );
    }

    #[test]
    fn a_sample_of_this_machine_is_within_range() {
        let temp = tempfile::tempdir().unwrap();
        let mut sampler = Sampler::new(temp.path());
        let sample = sampler.sample();
        assert!(!sample.is_gap());
        assert!(sample.cpu <= 100 && sample.memory <= 100 && sample.disk <= 100);
        // Every machine has memory in use and a root file system with something on it.
        assert!(sample.memory > 0 && sample.disk > 0, "{sample:?}");
    }

    #[test]
    fn cpu_sensors_are_told_from_others() {
        for label in [
            "coretemp Package id 0",
            "k10temp Tctl",
            "cpu_thermal temp1",
            "Core 0",
        ] {
            assert!(is_cpu_sensor(label), "{label}");
        }
        for label in ["nvme Composite", "amdgpu edge", "iwlwifi_1 temp1"] {
            assert!(!is_cpu_sensor(label), "{label}");
        }
    }
}
