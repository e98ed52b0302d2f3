//! The agent's recent log, kept in memory for `collectLogs`: the binary adds a second
//! `tracing_subscriber` formatting layer whose writer is [`RingWriter`], which appends each
//! formatted line to one bounded ring of [`LOG_RING_BYTES`] (the oldest lines go first).

use std::collections::VecDeque;
use std::io;
use std::sync::Mutex;

/// How many bytes of recent log lines are kept.
pub const LOG_RING_BYTES: usize = 128 * 1024;

static RING: Mutex<VecDeque<u8>> = Mutex::new(VecDeque::new());

/// Appends what it is given to the ring of recent log lines. `RingWriter::default` is a
/// `tracing_subscriber` `MakeWriter`.
#[derive(Clone, Copy, Debug, Default)]
pub struct RingWriter;

impl io::Write for RingWriter {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        let mut ring = RING.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        ring.extend(data);
        let excess = ring.len().saturating_sub(LOG_RING_BYTES);
        ring.drain(..excess);
        Ok(data.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// The recent log lines, oldest first (from the first whole line); `None` when nothing was
/// logged through a [`RingWriter`] (the agent runs inside another program).
pub fn recent() -> Option<String> {
    let ring = RING.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    if ring.is_empty() {
        return None;
    }
    let bytes: Vec<u8> = ring.iter().copied().collect();
    drop(ring);
    let start = if bytes.len() >= LOG_RING_BYTES {
        bytes
            .iter()
            .position(|byte| *byte == b'\n')
            .map_or(0, |at| at + 1)
    } else {
        0
    };
    Some(String::from_utf8_lossy(&bytes[start..]).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn the_ring_keeps_the_newest_whole_lines() {
        let mut writer = RingWriter;
        for index in 0..20_000 {
            writeln!(writer, "line {index}").unwrap();
        }
        let text = recent().unwrap();
        assert!(text.len() <= LOG_RING_BYTES);
        assert!(
            text.ends_with("line 19999\n"),
            "{}",
            &text[text.len() - 40..]
        );
        assert!(text.starts_with("line "), "{}", &text[..40]);
        assert!(!text.contains("line 0\n"));
    }
}
