//! Compiling an untrusted component to native code, bounded.
//!
//! Cranelift's time and memory grow with what a component contains: a few
//! dozen kilobytes of adversarial code (one function, many live locals,
//! nested loops) can take minutes and gigabytes. So a component is compiled
//! in a child process, the `flexmodel-compile` binary, under `RLIMIT_AS` (its
//! address space) and `RLIMIT_CPU`, and killed at a wall-clock deadline; any
//! of these ends in a typed [`LoadError::CompileLimit`] naming the plugin.
//! The child builds its engine from the same [`EngineSettings`] as the host,
//! so the artifact it returns deserialises in the host (which checks that).
//! The worker is its own small crate (`compiler/`), linking wasmtime only.

use std::io::{Read, Write};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Instant;

use super::error::LoadError;
use super::limits::CompileLimits;

pub use flexmodel_compile::{EXIT_INVALID, EXIT_OUT_OF_MEMORY, EngineSettings, WORKER};

/// Where the worker is: `$FLEXMODEL_COMPILER`, else next to the running
/// executable or one folder up (cargo puts test binaries in `deps/`).
pub fn find_worker() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("FLEXMODEL_COMPILER") {
        return Some(PathBuf::from(p));
    }
    let exe = std::env::current_exe().ok()?;
    let dir = exe.parent()?;
    [dir.join(WORKER), dir.parent()?.join(WORKER)]
        .into_iter()
        .find(|p| p.is_file())
}

fn set_limit(resource: libc::__rlimit_resource_t, value: u64) -> std::io::Result<()> {
    let r = libc::rlimit {
        rlim_cur: value,
        rlim_max: value,
    };
    // SAFETY: plain syscall on a valid struct; called between fork and exec.
    if unsafe { libc::setrlimit(resource, &r) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// Compile `bytes` in the worker under `limits`; returns the artifact.
/// `label` names the plugin in errors.
pub fn compile_isolated(
    settings: &EngineSettings,
    bytes: &[u8],
    limits: &CompileLimits,
    label: &str,
) -> Result<Vec<u8>, LoadError> {
    let worker = find_worker().ok_or_else(|| {
        LoadError::Runtime(format!(
            "the compile worker `{WORKER}` was not found next to this executable; build it \
             (`cargo build -p flexmodel --bins`), point FLEXMODEL_COMPILER at it, or set \
             `CompileLimits::isolate = false` for components you trust"
        ))
    })?;
    let settings_json =
        serde_json::to_string(settings).map_err(|e| LoadError::Runtime(e.to_string()))?;
    let mem = limits.max_memory_bytes;
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get()) as u64;
    let cpu_secs = limits
        .timeout
        .as_secs()
        .saturating_add(1)
        .saturating_mul(cores);
    let mut cmd = Command::new(&worker);
    cmd.arg(settings_json)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    // SAFETY: only async-signal-safe calls (setrlimit) between fork and exec.
    unsafe {
        cmd.pre_exec(move || {
            set_limit(libc::RLIMIT_AS, mem)?;
            set_limit(libc::RLIMIT_CPU, cpu_secs)?;
            set_limit(libc::RLIMIT_CORE, 0)
        });
    }
    let mut child = cmd
        .spawn()
        .map_err(|e| LoadError::Runtime(format!("cannot start {}: {e}", worker.display())))?;
    let mut stdin = child.stdin.take().expect("piped stdin");
    let stdout = child.stdout.take().expect("piped stdout");
    let stderr = child.stderr.take().expect("piped stderr");
    std::thread::scope(|scope| {
        // Feed the component without copying it (the scope borrows it).
        scope.spawn(move || {
            let _ = stdin.write_all(bytes);
        });
        wait_worker(&mut child, stdout, stderr, limits, label)
    })
}

/// Collect the worker's artifact and its verdict, killing it at the deadline.
fn wait_worker(
    child: &mut std::process::Child,
    mut stdout: std::process::ChildStdout,
    mut stderr: std::process::ChildStderr,
    limits: &CompileLimits,
    label: &str,
) -> Result<Vec<u8>, LoadError> {
    let reader = std::thread::spawn(move || {
        let mut out = Vec::new();
        let _ = stdout.read_to_end(&mut out);
        out
    });
    let err_reader = std::thread::spawn(move || {
        let mut out = Vec::new();
        let _ = (&mut stderr).take(64 * 1024).read_to_end(&mut out);
        out
    });
    let start = Instant::now();
    let status = loop {
        match child.try_wait() {
            Ok(Some(s)) => break Some(s),
            Ok(None) if start.elapsed() >= limits.timeout => {
                let _ = child.kill();
                let _ = child.wait();
                break None;
            }
            Ok(None) => std::thread::sleep(std::time::Duration::from_millis(5)),
            Err(e) => return Err(LoadError::Runtime(format!("waiting for the compiler: {e}"))),
        }
    };
    let out = reader.join().unwrap_or_default();
    let err = String::from_utf8_lossy(&err_reader.join().unwrap_or_default()).into_owned();
    let time_limit = || LoadError::CompileLimit {
        plugin: label.to_string(),
        limit: format!("time limit of {:?}", limits.timeout),
    };
    let memory_limit = || LoadError::CompileLimit {
        plugin: label.to_string(),
        limit: format!("memory limit of {} bytes", limits.max_memory_bytes),
    };
    let Some(status) = status else {
        return Err(time_limit());
    };
    if status.success() {
        return Ok(out);
    }
    match (status.code(), status.signal()) {
        (Some(EXIT_INVALID), _) => Err(LoadError::Invalid(err.trim().to_string())),
        (Some(EXIT_OUT_OF_MEMORY), _) => Err(memory_limit()),
        (_, Some(libc::SIGXCPU | libc::SIGKILL)) => Err(time_limit()),
        // Allocation failures abort; a failed mmap can also fault.
        (_, Some(libc::SIGABRT | libc::SIGSEGV | libc::SIGBUS)) => Err(memory_limit()),
        _ if err.contains("memory allocation") || err.contains("out of memory") => {
            Err(memory_limit())
        }
        (code, signal) => Err(LoadError::Runtime(format!(
            "the compiler failed (exit {code:?}, signal {signal:?}): {}",
            err.trim()
        ))),
    }
}
