//! A client's load history as the API shows it (`GET /apis/thinfleet.io/v1/clients/{name}/history`):
//! one entry per minute the agent sampled (minutes without a sample are left out), with the time
//! the controller received it and whether it was received for this request.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use tc_proto::history::LoadHistory;

use crate::Timestamp;

/// The load history of a client.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ClientHistory {
    /// The client's name.
    pub client: String,
    /// When the controller received this history from the agent; absent when it never did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub collected: Option<Timestamp>,
    /// Seconds from `collected` to this answer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub age_seconds: Option<u64>,
    /// True when the agent sent it for this request; false when it is the last one stored (the
    /// client is offline, or did not answer within the wait).
    pub fresh: bool,
    /// Seconds between two samples (60 unless the agent is configured otherwise).
    pub interval_seconds: u32,
    /// The samples, oldest first; minutes without one (the agent was not running) are left out.
    pub samples: Vec<HistorySample>,
}

/// One sample of a client's load.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct HistorySample {
    /// When it was taken.
    pub time: Timestamp,
    /// CPU use over the interval before it, 0..=100.
    pub cpu_percent: u8,
    /// Memory in use, 0..=100.
    pub memory_percent: u8,
    /// System disk in use, 0..=100.
    pub disk_percent: u8,
    /// CPU temperature in °C; absent when the machine reports none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub temperature_celsius: Option<u8>,
}

impl ClientHistory {
    /// The history of `client` as shown at `now`: `stored` is the last one received (with when),
    /// `fresh` whether it was received for this request.
    pub fn new(
        client: &str,
        stored: Option<(Timestamp, &LoadHistory)>,
        fresh: bool,
        now: Timestamp,
    ) -> ClientHistory {
        let Some((collected, history)) = stored else {
            return ClientHistory {
                client: client.to_owned(),
                collected: None,
                age_seconds: None,
                fresh: false,
                interval_seconds: tc_proto::history::DEFAULT_INTERVAL_SECONDS,
                samples: vec![],
            };
        };
        let samples = history
            .samples
            .iter()
            .enumerate()
            .filter(|(_, sample)| !sample.is_gap())
            .map(|(index, sample)| HistorySample {
                time: history.time_of(index),
                cpu_percent: sample.cpu,
                memory_percent: sample.memory,
                disk_percent: sample.disk,
                temperature_celsius: sample.temperature_celsius(),
            })
            .collect();
        ClientHistory {
            client: client.to_owned(),
            collected: Some(collected),
            age_seconds: Some(now.since(collected).as_secs()),
            fresh,
            interval_seconds: history.interval_seconds,
            samples,
        }
    }
}

#[cfg(test)]
mod tests {
    use tc_proto::history::Sample;

    use super::*;

    #[test]
    fn gaps_are_left_out_and_times_kept() {
        let end = Timestamp::from_unix_millis(1_800_000_000_000);
        let history = LoadHistory {
            interval_seconds: 60,
            end,
            samples: vec![
                Sample::measured(10.0, 20.0, 30.0, Some(41.0)),
                Sample::GAP,
                Sample::measured(11.0, 21.0, 31.0, None),
            ],
        };
        let collected = end.plus(std::time::Duration::from_secs(5));
        let now = collected.plus(std::time::Duration::from_secs(90));
        let shown = ClientHistory::new("kiosk-1", Some((collected, &history)), false, now);
        assert_eq!(shown.age_seconds, Some(90));
        assert_eq!(shown.samples.len(), 2);
        assert_eq!(shown.samples[0].time, history.time_of(0));
        assert_eq!(shown.samples[1].time, end);
        let json = serde_json::to_value(&shown).unwrap();
        assert_eq!(json["samples"][0]["temperatureCelsius"], 41);
        assert_eq!(json["samples"][0]["cpuPercent"], 10);
        assert!(json["samples"][1].get("temperatureCelsius").is_none());
        assert_eq!(json["intervalSeconds"], 60);
        assert_eq!(json["fresh"], false);
        let none = ClientHistory::new("kiosk-2", None, false, now);
        assert!(none.samples.is_empty() && none.collected.is_none());
    }
}
