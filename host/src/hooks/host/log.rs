//! `flexmodel:hook/log`: messages kept with the call (bounded in count and
//! length; the whole message is charged to fuel before it is cut) and
//! forwarded when the call completes. Messages are escaped here, once:
//! control characters (newlines, carriage returns, terminal escapes) become
//! visible `\n`, `\u{1b}`, ... so a plugin cannot forge other lines; whoever
//! prints them prefixes them with the plugin, hook point and rank.

use crate::hooks::bindings::flexmodel::hook::log::{Host, Level};
use crate::hooks::hook::LogLevel;
use crate::hooks::store::HostState;

/// `message` with every control character escaped, cut to at most `max`
/// bytes of the escaped text (on a character boundary, `…` appended).
pub(crate) fn escape_log(message: &str, max: usize) -> String {
    let mut out = String::with_capacity(message.len().min(max) + 4);
    for c in message.chars() {
        let piece: String = if c.is_control() || c == '\u{2028}' || c == '\u{2029}' {
            c.escape_default().collect()
        } else {
            c.to_string()
        };
        if out.len() + piece.len() > max {
            out.push('…');
            return out;
        }
        out.push_str(&piece);
    }
    out
}

impl Host for HostState {
    fn log(&mut self, level: Level, message: String) -> wasmtime::Result<()> {
        self.charge(message.len() as u64);
        if self.limits.fault_injection && message == "flexmodel-test-fault" {
            panic!("fault injected into the log host function");
        }
        if self.call.logs.len() >= self.limits.max_log_messages {
            self.call.logs_dropped += 1;
            return Ok(());
        }
        let message = escape_log(&message, self.limits.max_log_message_bytes);
        if self
            .hold("a log message", message.len() as u64 + 32)
            .is_err()
        {
            // Over the call's host-memory cap: the call fails when it returns.
            return Ok(());
        }
        let level = match level {
            Level::Trace => LogLevel::Trace,
            Level::Debug => LogLevel::Debug,
            Level::Info => LogLevel::Info,
            Level::Warn => LogLevel::Warn,
            Level::Error => LogLevel::Error,
        };
        self.call.logs.push((level, message));
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::escape_log;

    #[test]
    fn control_characters_are_escaped_and_cut() {
        assert_eq!(escape_log("a\nb\r\x1b[31m", 100), "a\\nb\\r\\u{1b}[31m");
        assert_eq!(escape_log("plain", 100), "plain");
        let cut = escape_log(&"x".repeat(50), 10);
        assert_eq!(cut, format!("{}…", "x".repeat(10)));
        assert!(!escape_log("\u{1b}\u{7}\n", 3).contains('\u{1b}'));
    }
}
