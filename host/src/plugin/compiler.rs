//! Compiling untrusted components where it can be stopped: in a child
//! process with limits of time and memory.
//!
//! Compiling is plugin input driving the host's compiler: a small
//! generated component can take minutes and gigabytes, and a compile in the
//! host's own threads cannot be stopped. So the host runs itself again
//! (`eventhost compile-plugin`, hidden) on the component's bytes, with an
//! address-space limit and a CPU-time limit set before it starts, kills it
//! at the wall-clock limit, and takes back the compiled code. The code is
//! produced by the host's own binary and engine settings; what comes back
//! is loaded by the parent's engine, which checks that it is compatible.
//!
//! The child writes the code straight into a file the parent gives it as
//! its stdout, and the parent maps that file (`Component::deserialize_file`)
//! instead of reading it: compiled code can be tens of times the size of
//! its component and up to `compile_memory_mb`, and each compile running
//! at once would otherwise hold that much of the host's own memory, twice
//! (the bytes read, then wasmtime's copy).

use std::fs::File;
use std::io::{Read as _, Write as _};
use std::os::unix::process::{CommandExt as _, ExitStatusExt as _};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// The hidden subcommand the child runs.
pub const SUBCOMMAND: &str = "compile-plugin";

/// Most of the child's error output kept for the refusal's reason.
const MAX_STDERR: u64 = 16 << 10;

/// How a compile is limited.
#[derive(Debug, Clone, PartialEq)]
pub struct CompileLimits {
    /// The binary that compiles: this one (`std::env::current_exe`).
    pub exe: PathBuf,
    /// Wall-clock time (`[plugins] compile_timeout_s`).
    pub timeout: Duration,
    /// Address space of the child (`[plugins] compile_memory_mb`).
    pub memory_bytes: u64,
}

/// Compiles `bytes` (a component) in a child under `limits`, which writes
/// the compiled code into `out` (an empty file, then mapped by the caller);
/// why not, in words for a refusal.
pub fn compile(limits: &CompileLimits, bytes: &[u8], out: &File) -> Result<(), String> {
    let started = Instant::now();
    let memory = limits.memory_bytes;
    // The CPU limit backs the wall-clock one: every core may compile.
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get()) as u64;
    let cpu_seconds = limits.timeout.as_secs().max(1) * cores + 1;
    let out = out
        .try_clone()
        .map_err(|err| format!("cannot hand the compiler its output file: {err}"))?;
    let mut command = Command::new(&limits.exe);
    command
        .arg(SUBCOMMAND)
        .env_clear()
        .stdin(Stdio::piped())
        .stdout(Stdio::from(out))
        .stderr(Stdio::piped());
    // SAFETY: between fork and exec the closure only calls async-signal-safe
    // functions (setrlimit, open, write, close, prctl) on values computed
    // before the fork.
    unsafe {
        command.pre_exec(move || {
            let set = |resource, soft: u64, hard: u64| {
                let limit = libc::rlimit {
                    rlim_cur: soft,
                    rlim_max: hard,
                };
                if libc::setrlimit(resource, &limit) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            };
            set(libc::RLIMIT_AS, memory, memory)?;
            set(libc::RLIMIT_CPU, cpu_seconds, cpu_seconds + 1)?;
            set(libc::RLIMIT_CORE, 0, 0)?;
            // Several compiles may run at once, each up to its memory
            // limit: if the machine runs out, the kernel kills a compiler
            // (its build is refused), not the host. Best effort.
            let fd = libc::open(
                c"/proc/self/oom_score_adj".as_ptr(),
                libc::O_WRONLY | libc::O_CLOEXEC,
            );
            if fd >= 0 {
                libc::write(fd, b"1000".as_ptr().cast(), 4);
                libc::close(fd);
            }
            // Dies with the host, so a stopped host leaves no compiler.
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            Ok(())
        });
    }
    let mut child = command.spawn().map_err(|err| {
        format!(
            "cannot start the compiler ({}): {err}",
            limits.exe.display()
        )
    })?;
    let mut stdin = child.stdin.take().expect("piped");
    let stderr = child.stderr.take().expect("piped");
    let input = bytes.to_vec();
    let writer = std::thread::spawn(move || {
        // A child that died early closes the pipe: its status says why.
        let _ = stdin.write_all(&input);
    });
    let errors = std::thread::spawn(move || {
        let mut text = String::new();
        let _ = stderr.take(MAX_STDERR).read_to_string(&mut text);
        text
    });
    let mut killed = false;
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) if started.elapsed() >= limits.timeout => {
                let _ = child.kill();
                killed = true;
                break child
                    .wait()
                    .map_err(|err| format!("lost the compiler: {err}"))?;
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(5)),
            Err(err) => return Err(format!("lost the compiler: {err}")),
        }
    };
    let _ = writer.join();
    let errors = errors.join().expect("the error reader does not panic");
    let limit_words = || {
        format!(
            "({} s, {} MiB; [plugins] compile_timeout_s and compile_memory_mb)",
            limits.timeout.as_secs(),
            memory >> 20
        )
    };
    if killed {
        return Err(format!(
            "compiling it took longer than the limit of {} s; refused {}",
            limits.timeout.as_secs(),
            limit_words()
        ));
    }
    if status.success() {
        return Ok(());
    }
    // An allocation the address-space limit refused aborts the child.
    if status.signal() == Some(libc::SIGABRT) {
        return Err(format!(
            "compiling it needed more memory than the limit of {} MiB; refused {}",
            memory >> 20,
            limit_words()
        ));
    }
    if status.signal() == Some(libc::SIGXCPU) {
        return Err(format!(
            "compiling it used more CPU time than its limit; refused {}",
            limit_words()
        ));
    }
    // The CPU limit's hard end, or the kernel out of memory choosing the
    // compiler (it asks to be chosen first).
    if status.signal() == Some(libc::SIGKILL) {
        return Err(format!(
            "the compiler was killed: it used more CPU time than its limit, or the machine ran \
             out of memory; refused {}",
            limit_words()
        ));
    }
    match status.code() {
        Some(_) if !errors.trim().is_empty() => Err(errors.trim().to_string()),
        _ => Err(format!("the compiler failed ({status}): {}", errors.trim())),
    }
}

/// The child's side: reads a component on stdin, compiles it with the
/// host's engine settings, writes the compiled code on stdout (the file the
/// parent maps). Exit 1 with
/// the reason on stderr if it is not a valid component.
pub fn serve_child() -> std::process::ExitCode {
    let mut bytes = Vec::new();
    if let Err(err) = std::io::stdin().read_to_end(&mut bytes) {
        eprintln!("cannot read the component: {err}");
        return std::process::ExitCode::FAILURE;
    }
    let engine = match wasmtime::Engine::new(&super::engine::engine_config(None)) {
        Ok(engine) => engine,
        Err(err) => {
            eprintln!("cannot build the engine: {err:#}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match engine.precompile_component(&bytes) {
        Ok(code) => match std::io::stdout().lock().write_all(&code) {
            Ok(()) => std::process::ExitCode::SUCCESS,
            Err(err) => {
                eprintln!("cannot write the compiled code: {err}");
                std::process::ExitCode::FAILURE
            }
        },
        Err(err) => {
            eprintln!("not a valid component: {:#}", anyhow::Error::from(err));
            std::process::ExitCode::FAILURE
        }
    }
}
