//! `flexmodel:hook/log`: messages kept with the call (bounded in count and
//! length) and forwarded to `tracing` when the call completes.

use crate::hooks::bindings::flexmodel::hook::log::{Host, Level};
use crate::hooks::hook::LogLevel;
use crate::hooks::store::HostState;

impl Host for HostState {
    fn log(&mut self, level: Level, message: String) -> wasmtime::Result<()> {
        if self.call.logs.len() >= self.limits.max_log_messages {
            self.call.logs_dropped += 1;
            return Ok(());
        }
        let mut message = message;
        if message.len() > self.limits.max_log_message_bytes {
            let mut cut = self.limits.max_log_message_bytes;
            while !message.is_char_boundary(cut) {
                cut -= 1;
            }
            message.truncate(cut);
            message.push('…');
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
