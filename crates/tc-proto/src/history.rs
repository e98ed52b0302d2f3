//! Load history: the last 24 hours of a client's CPU, memory, disk and temperature, sampled by
//! the agent once a minute, and how it travels to the controller.
//!
//! A sample is four bytes (CPU %, memory used %, system-disk used %, CPU temperature °C); a run
//! of samples has one interval and the time of its newest sample, so times are implied, never
//! stored. Minutes when the agent was not running are gap samples: they keep their place in the
//! run, so nothing is invented and nothing shifts.
//!
//! The controller asks an online agent for its history through the long-poll
//! ([`crate::DesiredResponse::send_history`]); the agent answers with one
//! `POST /agent/v1/history` ([`HistoryUpload`]), checked by [`check_upload`].

use serde::{Deserialize, Serialize};

use crate::Timestamp;
use crate::identity::{base64url_decode, base64url_encode};
use crate::limits::LimitError;

/// How many samples are kept: 24 hours at one a minute.
pub const HISTORY_CAPACITY: usize = 1440;

/// Bytes per encoded sample.
pub const SAMPLE_BYTES: usize = 4;

/// The byte that means "none": a missing temperature, or (in all four bytes) a gap.
pub const NONE: u8 = 255;

/// The sampling interval agents use unless configured otherwise, in seconds.
pub const DEFAULT_INTERVAL_SECONDS: u32 = 60;

/// The shortest interval accepted (tests sample every second).
pub const MIN_INTERVAL_SECONDS: u32 = 1;

/// The longest interval accepted.
pub const MAX_INTERVAL_SECONDS: u32 = 3600;

/// How far in the future the newest sample of an upload may lie (clocks differ a little).
pub const MAX_CLOCK_SKEW_SECONDS: u64 = 300;

/// The largest history upload body the controller reads: a full upload is about 7.8 KB.
pub const MAX_HISTORY_BODY_BYTES: usize = 16 * 1024;

/// One sample: whole percentages and degrees, or a gap.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Sample {
    /// CPU use, 0..=100 (255 in a gap).
    pub cpu: u8,
    /// Memory in use, 0..=100 (255 in a gap).
    pub memory: u8,
    /// System disk in use, 0..=100 (255 in a gap).
    pub disk: u8,
    /// CPU temperature in °C, 0..=254; 255 when the machine reports none (and in a gap).
    pub temperature: u8,
}

impl Sample {
    /// A minute without a sample (the agent was not running).
    pub const GAP: Sample = Sample {
        cpu: NONE,
        memory: NONE,
        disk: NONE,
        temperature: NONE,
    };

    /// A sample from measured figures: percentages are rounded and kept within 0..=100, a
    /// temperature within 0..=254 °C; a figure that is not a number counts as 0.
    pub fn measured(cpu: f32, memory: f32, disk: f32, temperature: Option<f32>) -> Sample {
        fn percent(value: f32) -> u8 {
            if value.is_nan() {
                0
            } else {
                value.round().clamp(0.0, 100.0) as u8
            }
        }
        Sample {
            cpu: percent(cpu),
            memory: percent(memory),
            disk: percent(disk),
            temperature: match temperature {
                Some(value) if !value.is_nan() => value.round().clamp(0.0, 254.0) as u8,
                _ => NONE,
            },
        }
    }

    /// True for a gap.
    pub fn is_gap(&self) -> bool {
        *self == Sample::GAP
    }

    /// The temperature, when one was measured.
    pub fn temperature_celsius(&self) -> Option<u8> {
        (self.temperature != NONE).then_some(self.temperature)
    }

    /// The four bytes of this sample.
    pub fn to_bytes(self) -> [u8; SAMPLE_BYTES] {
        [self.cpu, self.memory, self.disk, self.temperature]
    }

    /// A sample from its four bytes; `None` unless it is a gap or a sample whose percentages
    /// are within 0..=100.
    pub fn from_bytes(bytes: [u8; SAMPLE_BYTES]) -> Option<Sample> {
        let sample = Sample {
            cpu: bytes[0],
            memory: bytes[1],
            disk: bytes[2],
            temperature: bytes[3],
        };
        let valid = sample.is_gap()
            || [sample.cpu, sample.memory, sample.disk]
                .iter()
                .all(|p| *p <= 100);
        valid.then_some(sample)
    }
}

/// A run of samples at one interval, oldest first; the newest was taken at `end`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LoadHistory {
    /// Seconds between two samples.
    pub interval_seconds: u32,
    /// When the newest sample was taken.
    pub end: Timestamp,
    /// The samples, oldest first (at most [`HISTORY_CAPACITY`]).
    pub samples: Vec<Sample>,
}

impl LoadHistory {
    /// When the sample at `index` was taken.
    pub fn time_of(&self, index: usize) -> Timestamp {
        let back = self.samples.len().saturating_sub(index + 1) as u64;
        let millis = back.saturating_mul(u64::from(self.interval_seconds) * 1000);
        Timestamp::from_unix_millis(self.end.unix_millis().saturating_sub(millis))
    }

    /// The samples, four bytes each, oldest first.
    pub fn encode_samples(&self) -> Vec<u8> {
        self.samples.iter().flat_map(|s| s.to_bytes()).collect()
    }

    /// Samples from their bytes; says which sample is wrong.
    pub fn decode_samples(bytes: &[u8]) -> Result<Vec<Sample>, String> {
        if !bytes.len().is_multiple_of(SAMPLE_BYTES) {
            return Err(format!(
                "{} bytes is not a whole number of {SAMPLE_BYTES}-byte samples",
                bytes.len()
            ));
        }
        if bytes.len() / SAMPLE_BYTES > HISTORY_CAPACITY {
            return Err(format!(
                "{} samples; at most {HISTORY_CAPACITY} are accepted",
                bytes.len() / SAMPLE_BYTES
            ));
        }
        bytes
            .chunks_exact(SAMPLE_BYTES)
            .enumerate()
            .map(|(index, chunk)| {
                let raw: [u8; SAMPLE_BYTES] = chunk.try_into().expect("chunks of SAMPLE_BYTES");
                Sample::from_bytes(raw).ok_or_else(|| {
                    format!(
                        "sample {index} ({raw:?}) has a percentage above 100 and is not a gap \
                         (all four bytes 255)"
                    )
                })
            })
            .collect()
    }

    /// The upload of this history by `client_name`.
    pub fn to_upload(&self, client_name: &str) -> HistoryUpload {
        HistoryUpload {
            protocol_version: crate::PROTOCOL_VERSION,
            client_name: client_name.to_owned(),
            interval_seconds: self.interval_seconds,
            end: self.end,
            count: u32::try_from(self.samples.len()).unwrap_or(u32::MAX),
            samples: base64url_encode(&self.encode_samples()),
        }
    }
}

/// `POST /agent/v1/history`: the agent's load history, sent when the controller asked for it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schemars", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase")]
pub struct HistoryUpload {
    /// Protocol version spoken by the agent.
    pub protocol_version: u32,
    /// The client this history is of: the session's client.
    pub client_name: String,
    /// Seconds between two samples (1..=3600).
    pub interval_seconds: u32,
    /// When the newest sample was taken.
    pub end: Timestamp,
    /// How many samples `samples` holds (at most 1440).
    pub count: u32,
    /// The samples, oldest first, in base64url without padding: four bytes each, CPU %, memory
    /// used %, system disk used % (0..=100) and CPU temperature °C (0..=254, 255 when none). All
    /// four bytes 255 mark a gap (the agent was not running).
    pub samples: String,
}

/// Checks an upload from the client `session_client` received at `now`: its name, interval,
/// count, end time and every sample. Returns the history it carries.
pub fn check_upload(
    upload: &HistoryUpload,
    session_client: &str,
    now: Timestamp,
) -> Result<LoadHistory, LimitError> {
    let malformed = |field: &str, message: String| LimitError {
        field: field.to_owned(),
        message,
        too_large: false,
    };
    if upload.client_name != session_client {
        return Err(malformed(
            "clientName",
            format!(
                "this session is client {session_client:?}; a history of {:?} is not accepted",
                upload.client_name
            ),
        ));
    }
    if !(MIN_INTERVAL_SECONDS..=MAX_INTERVAL_SECONDS).contains(&upload.interval_seconds) {
        return Err(malformed(
            "intervalSeconds",
            format!(
                "{} is outside {MIN_INTERVAL_SECONDS}..={MAX_INTERVAL_SECONDS}",
                upload.interval_seconds
            ),
        ));
    }
    if upload.count as usize > HISTORY_CAPACITY {
        return Err(LimitError {
            field: "count".into(),
            message: format!(
                "{} samples; at most {HISTORY_CAPACITY} are accepted",
                upload.count
            ),
            too_large: true,
        });
    }
    let latest = now.plus(std::time::Duration::from_secs(MAX_CLOCK_SKEW_SECONDS));
    if upload.end > latest {
        return Err(malformed(
            "end",
            format!(
                "{} is more than {MAX_CLOCK_SKEW_SECONDS} s after the controller's clock ({now})",
                upload.end
            ),
        ));
    }
    let bytes = base64url_decode(&upload.samples)
        .ok_or_else(|| malformed("samples", "is not base64url without padding".to_owned()))?;
    let samples =
        LoadHistory::decode_samples(&bytes).map_err(|message| malformed("samples", message))?;
    if samples.len() != upload.count as usize {
        return Err(malformed(
            "samples",
            format!(
                "holds {} samples but count says {}",
                samples.len(),
                upload.count
            ),
        ));
    }
    Ok(LoadHistory {
        interval_seconds: upload.interval_seconds,
        end: upload.end,
        samples,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn history(samples: Vec<Sample>) -> LoadHistory {
        LoadHistory {
            interval_seconds: 60,
            end: Timestamp::from_unix_millis(1_800_000_000_000),
            samples,
        }
    }

    #[test]
    fn samples_round_and_clamp_and_keep_missing_temperatures_apart() {
        let sample = Sample::measured(12.6, 101.0, -3.0, Some(48.4));
        assert_eq!(sample.to_bytes(), [13, 100, 0, 48]);
        assert_eq!(
            Sample::measured(f32::NAN, 5.0, 5.0, None).to_bytes(),
            [0, 5, 5, 255]
        );
        assert_eq!(
            Sample::measured(1.0, 1.0, 1.0, Some(400.0)).temperature,
            254
        );
        assert_eq!(
            Sample::measured(1.0, 1.0, 1.0, None).temperature_celsius(),
            None
        );
        assert!(!Sample::measured(100.0, 100.0, 100.0, None).is_gap());
    }

    #[test]
    fn times_are_implied_by_the_end_and_the_interval() {
        let history = history(vec![Sample::GAP, Sample::measured(1.0, 2.0, 3.0, None)]);
        assert_eq!(history.time_of(1), history.end);
        assert_eq!(
            history.time_of(0).unix_millis(),
            history.end.unix_millis() - 60_000
        );
    }

    #[test]
    fn an_upload_round_trips_through_the_check() {
        let history = history(vec![
            Sample::measured(10.0, 20.0, 30.0, Some(40.0)),
            Sample::GAP,
            Sample::measured(100.0, 0.0, 50.0, None),
        ]);
        let upload = history.to_upload("kiosk-1");
        let json = serde_json::to_string(&upload).unwrap();
        let back: HistoryUpload = serde_json::from_str(&json).unwrap();
        assert_eq!(
            check_upload(&back, "kiosk-1", history.end).unwrap(),
            history
        );
    }

    #[test]
    fn hostile_uploads_are_refused_with_the_field() {
        let history = history(vec![Sample::measured(10.0, 20.0, 30.0, None); 3]);
        let now = history.end;
        let good = history.to_upload("kiosk-1");
        let refused = |upload: HistoryUpload| check_upload(&upload, "kiosk-1", now).unwrap_err();
        assert_eq!(refused(history.to_upload("kiosk-2")).field, "clientName");
        assert_eq!(
            refused(HistoryUpload {
                count: 4,
                ..good.clone()
            })
            .field,
            "samples"
        );
        assert!(
            refused(HistoryUpload {
                count: 5000,
                ..good.clone()
            })
            .too_large
        );
        assert_eq!(
            refused(HistoryUpload {
                interval_seconds: 0,
                ..good.clone()
            })
            .field,
            "intervalSeconds"
        );
        assert_eq!(
            refused(HistoryUpload {
                end: now.plus(std::time::Duration::from_secs(3600)),
                ..good.clone()
            })
            .field,
            "end"
        );
        let over = base64url_encode(&[10, 101, 10, 255]);
        let error = refused(HistoryUpload {
            count: 1,
            samples: over,
            ..good.clone()
        });
        assert!(error.message.contains("sample 0"), "{error}");
        let partial_gap = base64url_encode(&[255, 255, 255, 20]);
        assert!(
            check_upload(
                &HistoryUpload {
                    count: 1,
                    samples: partial_gap,
                    ..good.clone()
                },
                "kiosk-1",
                now
            )
            .is_err()
        );
        let ragged = base64url_encode(&[1, 2, 3]);
        assert!(
            refused(HistoryUpload {
                count: 1,
                samples: ragged,
                ..good.clone()
            })
            .message
            .contains("whole number")
        );
        assert_eq!(
            refused(HistoryUpload {
                samples: "not base64!".into(),
                ..good
            })
            .field,
            "samples"
        );
    }
}
