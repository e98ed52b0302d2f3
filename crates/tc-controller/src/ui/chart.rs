//! Load history charts: the last 24 hours of CPU, memory, disk use and temperature of a client,
//! drawn on the server as SVG (axes, units, time labels; a gap in the samples is a gap in the
//! line, not an invented slope).
//!
//! The console takes the history as a [`History`] (what the `history` API answers:
//! one-minute samples, when it was collected, whether it is fresh). [`for_client`] is the one
//! place that fetches it.

use std::fmt::Write;

use tc_api::Timestamp;

use super::html::{ago, esc};
use crate::Controller;

/// One sample: percentages 0..=100 and °C, each absent when not measured.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Sample {
    /// When it was taken.
    pub time: Timestamp,
    /// CPU use, %.
    pub cpu_percent: Option<f32>,
    /// Memory in use, %.
    pub memory_percent: Option<f32>,
    /// System disk in use, %.
    pub disk_percent: Option<f32>,
    /// CPU temperature, °C (where the hardware reports it).
    pub temperature_celsius: Option<f32>,
}

/// A client's load history.
#[derive(Clone, Debug, PartialEq)]
pub struct History {
    /// When the agent sent it.
    pub collected: Timestamp,
    /// Fetched from the agent for this request (else the last one stored).
    pub fresh: bool,
    /// Seconds between two samples (60 unless the agent is configured otherwise).
    pub interval_seconds: u32,
    /// Samples, oldest first.
    pub samples: Vec<Sample>,
}

/// The load history of a client, if the controller has one, through the same function as the
/// `history` API (`Controller::client_history`): an online agent is asked for a fresh upload,
/// waited for up to `wait` (the page's first load waits; its live refreshes do not, and show
/// what the previous refresh's request brought), else the stored one is shown with its age.
pub async fn for_client(
    controller: &Controller,
    client: &str,
    wait: std::time::Duration,
) -> Option<History> {
    let history = controller.client_history(client, wait).await.ok()?;
    Some(History {
        collected: history.collected?,
        fresh: history.fresh,
        interval_seconds: history.interval_seconds,
        samples: history
            .samples
            .iter()
            .map(|s| Sample {
                time: s.time,
                cpu_percent: Some(f32::from(s.cpu_percent)),
                memory_percent: Some(f32::from(s.memory_percent)),
                disk_percent: Some(f32::from(s.disk_percent)),
                temperature_celsius: s.temperature_celsius.map(f32::from),
            })
            .collect(),
    })
}

/// Samples further apart than this are a gap (the agent was down).
const GAP_MILLIS: u64 = 150_000;

const WIDTH: f64 = 640.0;
const HEIGHT: f64 = 170.0;
const LEFT: f64 = 48.0;
const RIGHT: f64 = 12.0;
const TOP: f64 = 12.0;
const BOTTOM: f64 = 28.0;
const DAY_MILLIS: u64 = 24 * 3600 * 1000;

/// One chart's series.
struct Series {
    title: &'static str,
    unit: &'static str,
    class: &'static str,
    value: fn(&Sample) -> Option<f32>,
}

const SERIES: [Series; 4] = [
    Series {
        title: "CPU",
        unit: "%",
        class: "cpu",
        value: |s| s.cpu_percent,
    },
    Series {
        title: "Memory",
        unit: "%",
        class: "memory",
        value: |s| s.memory_percent,
    },
    Series {
        title: "System disk",
        unit: "%",
        class: "disk",
        value: |s| s.disk_percent,
    },
    Series {
        title: "CPU temperature",
        unit: "°C",
        class: "temperature",
        value: |s| s.temperature_celsius,
    },
];

/// `HH:MM` (UTC) of a time.
fn clock(millis: u64) -> String {
    let minutes = millis / 60_000 % (24 * 60);
    format!("{:02}:{:02}", minutes / 60, minutes % 60)
}

/// The charts section of a client page: four charts, or "no history yet".
pub fn section(history: Option<&History>, now: Timestamp) -> String {
    let mut out = String::from("<section class=\"charts\"><h2>Load, last 24 hours</h2>");
    let Some(history) = history.filter(|h| !h.samples.is_empty()) else {
        out.push_str("<p class=\"muted\">No history yet.</p></section>");
        return out;
    };
    let _ = write!(
        out,
        "<p class=\"muted\">Collected {} ({}){}; {}; times in UTC.</p>",
        esc(&history.collected.to_string()),
        ago(Some(history.collected), now),
        if history.fresh {
            ""
        } else {
            ", the last history known"
        },
        match history.interval_seconds {
            60 => "one sample a minute".to_string(),
            1 => "one sample a second".to_string(),
            seconds => format!("one sample every {seconds} s"),
        }
    );
    let end = history
        .samples
        .last()
        .map_or(history.collected, |s| s.time)
        .unix_millis();
    for series in &SERIES {
        if history.samples.iter().any(|s| (series.value)(s).is_some()) {
            out.push_str(&chart(series, &history.samples, end));
        } else {
            let _ = write!(
                out,
                "<p class=\"muted\">{}: not reported by this hardware.</p>",
                series.title
            );
        }
    }
    out.push_str("</section>");
    out
}

/// One chart over the 24 hours ending at `end` (unix milliseconds).
fn chart(series: &Series, samples: &[Sample], end: u64) -> String {
    let start = end.saturating_sub(DAY_MILLIS);
    let peak = samples
        .iter()
        .filter_map(|s| (series.value)(s))
        .fold(0f32, f32::max);
    // Percentages on 0..100; temperatures on 0..100 °C unless hotter.
    let top = if peak > 100.0 {
        (peak / 20.0).ceil() * 20.0
    } else {
        100.0
    } as f64;
    let plot_w = WIDTH - LEFT - RIGHT;
    let plot_h = HEIGHT - TOP - BOTTOM;
    let x = |millis: u64| LEFT + (millis.saturating_sub(start)) as f64 / DAY_MILLIS as f64 * plot_w;
    let y = |value: f32| TOP + plot_h - (value as f64).clamp(0.0, top) / top * plot_h;
    let mut out = String::new();
    let _ = write!(
        out,
        "<figure class=\"chart {class}\"><figcaption>{title} ({unit})</figcaption>\
         <svg xmlns=\"http://www.w3.org/2000/svg\" viewBox=\"0 0 {WIDTH} {HEIGHT}\" role=\"img\" \
         aria-label=\"{title} in {unit}, last 24 hours\">",
        class = series.class,
        title = series.title,
        unit = series.unit,
    );
    // Horizontal grid and the value axis.
    for step in 0..=4 {
        let value = top / 4.0 * step as f64;
        let gy = y(value as f32);
        let _ = write!(
            out,
            "<line class=\"grid\" x1=\"{LEFT}\" y1=\"{gy:.1}\" x2=\"{:.1}\" y2=\"{gy:.1}\"/>\
             <text class=\"axis\" x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"end\">{value:.0} {}</text>",
            WIDTH - RIGHT,
            LEFT - 4.0,
            gy + 4.0,
            series.unit
        );
    }
    // Time axis: a tick every 4 hours on the hour.
    let step = 4 * 3600 * 1000;
    let mut tick = start.div_ceil(step) * step;
    while tick <= end {
        let tx = x(tick);
        let _ = write!(
            out,
            "<line class=\"grid\" x1=\"{tx:.1}\" y1=\"{TOP}\" x2=\"{tx:.1}\" y2=\"{:.1}\"/>\
             <text class=\"axis\" x=\"{tx:.1}\" y=\"{:.1}\" text-anchor=\"middle\">{}</text>",
            TOP + plot_h,
            HEIGHT - 8.0,
            clock(tick)
        );
        tick += step;
    }
    let _ = write!(
        out,
        "<line class=\"axisline\" x1=\"{LEFT}\" y1=\"{:.1}\" x2=\"{:.1}\" y2=\"{:.1}\"/>",
        TOP + plot_h,
        WIDTH - RIGHT,
        TOP + plot_h
    );
    // The line, broken at gaps and missing values.
    let mut points = String::new();
    let mut previous: Option<u64> = None;
    let flush = |points: &mut String, out: &mut String| {
        if !points.is_empty() {
            let _ = write!(
                out,
                "<polyline class=\"line\" points=\"{}\"/>",
                points.trim_end()
            );
            points.clear();
        }
    };
    for sample in samples {
        let millis = sample.time.unix_millis();
        if millis < start {
            continue;
        }
        let value = (series.value)(sample);
        let gap = previous.is_some_and(|p| millis.saturating_sub(p) > GAP_MILLIS);
        if gap || value.is_none() {
            flush(&mut points, &mut out);
        }
        if let Some(value) = value {
            let _ = write!(points, "{:.1},{:.1} ", x(millis), y(value));
            previous = Some(millis);
        } else {
            previous = None;
        }
    }
    flush(&mut points, &mut out);
    out.push_str("</svg></figure>");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn day(end: u64, gap: std::ops::Range<usize>) -> History {
        let samples = (0..1440)
            .filter(|i| !gap.contains(i))
            .map(|i| Sample {
                time: Timestamp::from_unix_millis(end - (1439 - i as u64) * 60_000),
                cpu_percent: Some(50.0),
                memory_percent: Some((i % 100) as f32),
                disk_percent: Some(25.0),
                temperature_celsius: None,
            })
            .collect();
        History {
            collected: Timestamp::from_unix_millis(end),
            fresh: true,
            interval_seconds: 60,
            samples,
        }
    }

    #[test]
    fn no_history_says_so() {
        let now = Timestamp::from_unix_millis(10 * DAY_MILLIS);
        assert!(section(None, now).contains("No history yet"));
        let empty = History {
            collected: now,
            fresh: false,
            interval_seconds: 60,
            samples: vec![],
        };
        assert!(section(Some(&empty), now).contains("No history yet"));
    }

    #[test]
    fn charts_have_axes_units_time_labels_and_gaps() {
        // Ends at 12:00 UTC.
        let end = 20_000 * DAY_MILLIS + 12 * 3600 * 1000;
        let now = Timestamp::from_unix_millis(end);
        let svg = section(Some(&day(end, 600..660)), now);
        // Three charts drawn, temperature said to be missing.
        assert_eq!(svg.matches("<svg").count(), 3, "{svg}");
        assert!(svg.contains("CPU temperature: not reported"));
        assert!(svg.contains("CPU (%)") && svg.contains("100 %") && svg.contains(">0 %<"));
        // Ticks every four hours on the hour, from 16:00 the day before to 12:00.
        for label in ["16:00", "20:00", "00:00", "04:00", "08:00", "12:00"] {
            assert!(svg.contains(&format!(">{label}<")), "{label} missing");
        }
        // The hour without samples splits each line in two.
        assert_eq!(svg.matches("<polyline").count(), 6, "{svg}");
        // 50 % is half way down the plot: y = TOP + plot_h / 2.
        let half = TOP + (HEIGHT - TOP - BOTTOM) / 2.0;
        assert!(svg.contains(&format!(",{half:.1} ")), "{half}");
        // The last sample is at the right edge.
        assert!(svg.contains(&format!("{:.1},", WIDTH - RIGHT)));
    }

    #[test]
    fn hot_temperatures_raise_the_scale() {
        let end = 20_000 * DAY_MILLIS;
        let mut history = day(end, 0..0);
        for sample in &mut history.samples {
            sample.temperature_celsius = Some(105.0);
        }
        let svg = section(Some(&history), Timestamp::from_unix_millis(end));
        assert!(svg.contains("120 °C"), "{svg}");
    }
}
