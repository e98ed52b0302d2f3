//! A scenario's figures: a readable table, and the same figures as one JSON object.

use serde_json::{Map, Value};

use crate::process::OpenFiles;

enum Row {
    Section(String),
    Figure { label: String, value: String },
}

/// The figures of one scenario run.
pub struct Report {
    scenario: String,
    rows: Vec<Row>,
    json: Map<String, Value>,
}

impl Report {
    /// An empty report of `scenario`.
    pub fn new(scenario: &str) -> Report {
        let mut json = Map::new();
        json.insert("scenario".into(), Value::from(scenario));
        Report {
            scenario: scenario.to_string(),
            rows: vec![],
            json,
        }
    }

    /// Starts a group of rows in the table.
    pub fn section(&mut self, title: &str) {
        self.rows.push(Row::Section(title.to_string()));
    }

    /// Sets `key` (dots make nested objects) in the JSON without a table row.
    pub fn set(&mut self, key: &str, value: impl Into<Value>) {
        let mut object = &mut self.json;
        let mut parts: Vec<&str> = key.split('.').collect();
        let last = parts.pop().expect("a key");
        for part in parts {
            object = object
                .entry(part.to_string())
                .or_insert_with(|| Value::Object(Map::new()))
                .as_object_mut()
                .expect("nested keys are objects");
        }
        object.insert(last.to_string(), value.into());
    }

    fn row(&mut self, label: &str, value: String) {
        self.rows.push(Row::Figure {
            label: label.to_string(),
            value,
        });
    }

    /// A number with a unit and a number of decimals.
    pub fn number(&mut self, key: &str, label: &str, value: f64, decimals: usize, unit: &str) {
        let value = if value.is_finite() { value } else { 0.0 };
        self.set(key, value);
        let shown = format!("{value:.decimals$}");
        self.row(
            label,
            if unit.is_empty() {
                shown
            } else {
                format!("{shown} {unit}")
            },
        );
    }

    /// A count.
    pub fn count(&mut self, key: &str, label: &str, value: u64) {
        self.set(key, value);
        self.row(label, value.to_string());
    }

    /// A piece of text.
    pub fn text(&mut self, key: &str, label: &str, value: &str) {
        self.set(key, value);
        self.row(label, value.to_string());
    }

    /// A target, met or missed, with the figure it was judged on.
    pub fn target(&mut self, key: &str, description: &str, met: bool, detail: &str) {
        self.set(&format!("targets.{key}"), met);
        self.row(
            &format!("target: {description}"),
            format!("{} ({detail})", if met { "met" } else { "MISSED" }),
        );
    }

    /// The machine the figures were taken on.
    pub fn machine(&mut self, open_files: OpenFiles) {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let model = cpuinfo
            .lines()
            .find_map(|l| l.strip_prefix("model name"))
            .map(|rest| rest.trim_start_matches([' ', '\t', ':']).to_string())
            .unwrap_or_else(|| "unknown".into());
        let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
        let memory_kib: u64 = meminfo
            .lines()
            .find_map(|l| l.strip_prefix("MemTotal:"))
            .and_then(|r| r.split_whitespace().next())
            .and_then(|n| n.parse().ok())
            .unwrap_or(0);
        let load = std::fs::read_to_string("/proc/loadavg")
            .unwrap_or_default()
            .split_whitespace()
            .take(3)
            .collect::<Vec<_>>()
            .join(" ");
        self.section("machine");
        self.count("machine.cpus", "CPUs", crate::process::cpus() as u64);
        self.text("machine.cpu_model", "CPU model", &model);
        self.number(
            "machine.memory_gib",
            "memory",
            memory_kib as f64 / (1024.0 * 1024.0),
            1,
            "GiB",
        );
        self.text(
            "machine.load_average",
            "load average at the end (1, 5, 15 min)",
            &load,
        );
        self.count(
            "machine.open_files_limit",
            "open files limit",
            open_files.soft,
        );
    }

    /// Prints the table, and with `json` the JSON object as the last line.
    pub fn print(&self, json: bool) {
        let width = self
            .rows
            .iter()
            .map(|row| match row {
                Row::Figure { label, .. } => label.chars().count(),
                Row::Section(_) => 0,
            })
            .max()
            .unwrap_or(0);
        println!("tc-bench {}", self.scenario);
        for row in &self.rows {
            match row {
                Row::Section(title) => println!("\n  {title}"),
                Row::Figure { label, value } => {
                    let pad = width - label.chars().count();
                    println!("    {label}{}  {value}", " ".repeat(pad));
                }
            }
        }
        if json {
            println!("{}", Value::Object(self.json.clone()));
        }
    }
}
