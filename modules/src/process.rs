//! The process runner: the one way halite runs a program — `cmd.run`,
//! the `service` module, deploy hooks and health commands, and the Lua
//! host's `halite.run` all come here, so every command streams its lines
//! live, honours its timeout and the job's cancellation, and is killed
//! with everything it started.
//!
//! The command runs in its own process group (unix) so that a timeout or a
//! cancellation kills everything it started, not only the shell. After the
//! shell exits, output still arriving from processes it left in the
//! background is read for [`DRAIN_GRACE`] and then the call returns without
//! waiting for them (Salt would hang until they close their output).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::{ExitStatus, Stdio};
use std::time::{Duration, Instant};

use futures::future::BoxFuture;
use serde_json::{json, Value};
use thiserror::Error;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio_util::sync::CancellationToken;

use crate::{EventSink, Outcome, RETCODE_ERROR, RETCODE_TIMEOUT};

/// Bytes kept per stream unless `output_cap` says otherwise (1 MiB).
pub(crate) const DEFAULT_OUTPUT_CAP: u64 = 1024 * 1024;

/// A line longer than this is sent as progress in pieces of this size.
const MAX_EVENT_LINE: usize = 64 * 1024;

/// How long output is still read after the shell exited, for processes it
/// left behind that keep the pipes open.
pub(crate) const DRAIN_GRACE: Duration = Duration::from_secs(2);

/// Which operating system's shell conventions to use.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Os {
    /// Linux, macOS, BSD: `sh -c`.
    Unix,
    /// Windows: `cmd.exe /S /C "..."`.
    Windows,
}

impl Os {
    /// The system this minion runs on.
    pub(crate) fn current() -> Os {
        if cfg!(windows) {
            Os::Windows
        } else {
            Os::Unix
        }
    }
}

/// One argument of a shell invocation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Arg {
    /// Passed as one argument (quoted as needed by the platform).
    Quoted(String),
    /// Appended to the Windows command line as is: `cmd.exe` does not
    /// follow the quoting rules other programs use. Elsewhere the same as
    /// [`Arg::Quoted`].
    Verbatim(String),
}

/// Program and arguments that run a command line through a shell.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct ShellCommand {
    /// The shell.
    pub(crate) program: String,
    /// Its arguments, the command last.
    pub(crate) args: Vec<Arg>,
}

/// Decides how `cmd` is run through `shell` (or the default one) on `os`.
/// Kept free of `cfg` so both platforms' rules are tested everywhere.
pub(crate) fn shell_argv(os: Os, shell: Option<&str>, cmd: &str) -> ShellCommand {
    let q = |s: &str| Arg::Quoted(s.to_owned());
    match os {
        Os::Unix => {
            let program = shell.unwrap_or("/bin/sh").to_owned();
            ShellCommand {
                program,
                args: vec![q("-c"), q(cmd)],
            }
        }
        Os::Windows => {
            let program = shell.unwrap_or("cmd.exe").to_owned();
            let base = program
                .rsplit(['/', '\\'])
                .next()
                .unwrap_or(&program)
                .to_ascii_lowercase();
            let base = base.strip_suffix(".exe").unwrap_or(&base);
            let args = match base {
                // /S: strip exactly the outer quotes we add, keep the rest verbatim.
                "cmd" => vec![q("/S"), q("/C"), Arg::Verbatim(format!("\"{cmd}\""))],
                "powershell" | "pwsh" => {
                    vec![q("-NoProfile"), q("-NonInteractive"), q("-Command"), q(cmd)]
                }
                _ => vec![q("-c"), q(cmd)],
            };
            ShellCommand { program, args }
        }
    }
}

/// What to run, and how: a parsed `cmd.run`/`cmd.run_all` call, or a
/// command another module runs.
#[derive(Debug)]
pub(crate) struct CmdSpec {
    pub(crate) fun: &'static str,
    pub(crate) cmd: String,
    /// Run this program with these arguments directly, without a shell
    /// (`cmd` is then only the text for messages).
    pub(crate) argv: Option<Vec<String>>,
    pub(crate) cwd: Option<PathBuf>,
    pub(crate) stdin: Option<String>,
    pub(crate) shell: Option<String>,
    pub(crate) env: BTreeMap<String, String>,
    pub(crate) timeout: Option<Duration>,
    pub(crate) output_cap: u64,
}

/// Why a command did not run to its end.
#[derive(Debug, Error)]
pub(crate) enum CmdError {
    /// The working directory is missing or not a directory.
    #[error("{fun}: working directory `{cwd}` cannot be used: {reason}")]
    Cwd {
        fun: &'static str,
        cwd: String,
        reason: String,
    },
    /// The shell could not be started.
    #[error("{fun}: cannot start `{program}`: {source}")]
    Spawn {
        fun: &'static str,
        program: String,
        source: std::io::Error,
    },
    /// Waiting for the process failed (should not happen).
    #[error("{fun}: waiting for the command failed: {source}")]
    Wait {
        fun: &'static str,
        source: std::io::Error,
    },
    /// The `timeout` argument expired; the process group was killed.
    #[error("timed out after {}s", secs(*.0))]
    TimedOut(Duration),
    /// The job was cancelled; the process group was killed.
    #[error("cancelled after {}s", secs(*.0))]
    Cancelled(Duration),
}

impl From<CmdError> for Outcome {
    fn from(err: CmdError) -> Outcome {
        let retcode = match err {
            CmdError::TimedOut(_) | CmdError::Cancelled(_) => RETCODE_TIMEOUT,
            _ => RETCODE_ERROR,
        };
        Outcome::failed(retcode, err.to_string())
    }
}

/// Seconds for a message: `5`, `0.5`, `2.25`.
fn secs(d: Duration) -> String {
    let text = format!("{:.3}", d.as_secs_f64());
    text.trim_end_matches('0').trim_end_matches('.').to_owned()
}

/// Output kept from one stream, up to the cap.
#[derive(Debug, Default)]
struct Captured {
    bytes: Vec<u8>,
    truncated: bool,
}

/// Both streams as captured, and both interleaved by line (for `cmd.run`).
#[derive(Debug)]
struct Capture {
    cap: u64,
    stdout: Captured,
    stderr: Captured,
    combined: Vec<u8>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Stream {
    Stdout,
    Stderr,
}

impl Stream {
    fn name(self) -> &'static str {
        match self {
            Stream::Stdout => "stdout",
            Stream::Stderr => "stderr",
        }
    }
}

impl Capture {
    fn new(cap: u64) -> Capture {
        Capture {
            cap,
            stdout: Captured::default(),
            stderr: Captured::default(),
            combined: Vec::new(),
        }
    }

    /// Sends the line live, then keeps what fits under the cap.
    fn push(&mut self, stream: Stream, line: &[u8], events: &EventSink) {
        let text = String::from_utf8_lossy(line);
        let text = text.strip_suffix('\n').unwrap_or(&text);
        let text = text.strip_suffix('\r').unwrap_or(text);
        events.progress(stream.name(), text);

        let captured = match stream {
            Stream::Stdout => &mut self.stdout,
            Stream::Stderr => &mut self.stderr,
        };
        let room = usize::try_from(self.cap.saturating_sub(captured.bytes.len() as u64))
            .unwrap_or(usize::MAX);
        let kept = &line[..line.len().min(room)];
        captured.bytes.extend_from_slice(kept);
        self.combined.extend_from_slice(kept);
        if kept.len() < line.len() {
            captured.truncated = true;
        }
    }
}

/// Splits a pipe into lines (pieces of at most [`MAX_EVENT_LINE`]);
/// cancel-safe, so it can sit in a `select!`.
struct LineReader<R> {
    inner: R,
    buf: Vec<u8>,
    scanned: usize,
    chunk: Vec<u8>,
    eof: bool,
}

impl<R: AsyncRead + Unpin> LineReader<R> {
    fn new(inner: R) -> Self {
        LineReader {
            inner,
            buf: Vec::new(),
            scanned: 0,
            chunk: vec![0; 8192],
            eof: false,
        }
    }

    /// The next line with its newline, a piece of an over-long line, the
    /// unterminated rest at the end, or `None` at end of stream.
    async fn next_line(&mut self) -> Option<Vec<u8>> {
        loop {
            if let Some(at) = self.buf[self.scanned..].iter().position(|b| *b == b'\n') {
                let end = self.scanned + at + 1;
                self.scanned = 0;
                return Some(self.buf.drain(..end).collect());
            }
            self.scanned = self.buf.len();
            if self.buf.len() >= MAX_EVENT_LINE {
                self.scanned = 0;
                return Some(self.buf.drain(..MAX_EVENT_LINE).collect());
            }
            if self.eof {
                self.scanned = 0;
                return (!self.buf.is_empty()).then(|| std::mem::take(&mut self.buf));
            }
            match self.inner.read(&mut self.chunk).await {
                Ok(0) => self.eof = true,
                Ok(n) => self.buf.extend_from_slice(&self.chunk[..n]),
                Err(err) if err.kind() == std::io::ErrorKind::Interrupted => {}
                Err(err) => {
                    tracing::debug!(%err, "reading command output failed; treating as end");
                    self.eof = true;
                }
            }
        }
    }
}

/// Reads one optional stream; never ready once it is gone (guarded in `select!`).
async fn next_line<R: AsyncRead + Unpin>(reader: &mut Option<LineReader<R>>) -> Option<Vec<u8>> {
    match reader {
        Some(r) => r.next_line().await,
        None => None,
    }
}

/// Kills the command's whole process tree if dropped while armed, so a call
/// abandoned mid-run (future dropped) leaves nothing behind.
struct TreeGuard {
    pid: Option<u32>,
}

impl TreeGuard {
    fn disarm(&mut self) {
        self.pid = None;
    }
}

impl Drop for TreeGuard {
    fn drop(&mut self) {
        if let Some(pid) = self.pid.take() {
            kill_tree(pid);
        }
    }
}

/// Kills the process group led by `pid` (unix) or the process tree under
/// `pid` (Windows, through `taskkill /T`).
fn kill_tree(pid: u32) {
    #[cfg(unix)]
    {
        use nix::errno::Errno;
        use nix::sys::signal::{killpg, Signal};
        use nix::unistd::Pid;
        let Ok(raw) = i32::try_from(pid) else { return };
        match killpg(Pid::from_raw(raw), Signal::SIGKILL) {
            Ok(()) | Err(Errno::ESRCH) => {}
            Err(err) => tracing::warn!(pid, %err, "cannot kill the command's process group"),
        }
    }
    #[cfg(not(unix))]
    {
        let spawned = std::process::Command::new("taskkill")
            .args(["/F", "/T", "/PID", &pid.to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn();
        if let Err(err) = spawned {
            tracing::warn!(pid, %err, "cannot run taskkill for the command's process tree");
        }
    }
}

/// Appends an argument that must reach the program exactly as written.
fn add_verbatim(command: &mut tokio::process::Command, arg: &str) {
    #[cfg(windows)]
    command.raw_arg(arg);
    #[cfg(not(windows))]
    command.arg(arg);
}

/// A command that ran to its exit.
#[derive(Debug)]
pub(crate) struct Finished {
    pid: Option<u32>,
    status: ExitStatus,
    capture: Capture,
}

/// The exit code like a shell reports it: the code, or 128 + signal.
fn exit_code(status: ExitStatus) -> i32 {
    if let Some(code) = status.code() {
        return code;
    }
    #[cfg(unix)]
    {
        use std::os::unix::process::ExitStatusExt;
        if let Some(signal) = status.signal() {
            return 128 + signal;
        }
    }
    RETCODE_ERROR
}

/// Output as text without the trailing newlines (like Salt's rstrip).
fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes)
        .trim_end_matches(['\n', '\r'])
        .to_owned()
}

impl Finished {
    fn retcode(&self) -> i32 {
        exit_code(self.status)
    }

    /// `cmd.run`: stdout and stderr interleaved by line, as text.
    pub(crate) fn run_outcome(&self) -> Outcome {
        let retcode = self.retcode();
        Outcome {
            success: retcode == 0,
            retcode,
            data: json!(text(&self.capture.combined)),
        }
    }

    /// `cmd.run_all`: each stream apart, with pid, retcode and truncation.
    pub(crate) fn run_all_outcome(&self) -> Outcome {
        let retcode = self.retcode();
        Outcome {
            success: retcode == 0,
            retcode,
            data: json!({
                "pid": self.pid,
                "retcode": retcode,
                "stdout": text(&self.capture.stdout.bytes),
                "stderr": text(&self.capture.stderr.bytes),
                "truncated": self.capture.stdout.truncated || self.capture.stderr.truncated,
            }),
        }
    }
}

/// How a shell command run for another module ended: its exit code and
/// its output (stdout and stderr interleaved, capped like `cmd.run`).
#[derive(Debug)]
pub(crate) struct ShellResult {
    /// 0 on success; 128 + signal when killed by one.
    pub(crate) retcode: i32,
    /// The output, trailing newlines trimmed.
    pub(crate) output: String,
}

/// Runs `cmd` through the platform shell in `cwd` with `env` added, its
/// lines streamed to `events` as they come — the one way every module runs
/// a hook or a check command, so they all time out, cancel and kill
/// process groups like `cmd.run`. Err is a message (did not start, timed
/// out, cancelled).
pub(crate) async fn run_shell(
    fun: &'static str,
    cmd: &str,
    cwd: &std::path::Path,
    env: BTreeMap<String, String>,
    timeout: Duration,
    events: &EventSink,
    cancel: &CancellationToken,
) -> Result<ShellResult, String> {
    let spec = CmdSpec {
        fun,
        cmd: cmd.to_owned(),
        argv: None,
        cwd: Some(cwd.to_path_buf()),
        stdin: None,
        shell: None,
        env,
        timeout: Some(timeout),
        output_cap: DEFAULT_OUTPUT_CAP,
    };
    let finished = execute(&spec, events, cancel)
        .await
        .map_err(|e| e.to_string())?;
    Ok(ShellResult {
        retcode: finished.retcode(),
        output: text(&finished.capture.combined),
    })
}

/// A command a Lua module runs (`halite.run`): a program and its
/// arguments, or a shell command line.
#[derive(Debug, Default)]
pub(crate) struct CommandRequest {
    /// Program and arguments, run without a shell.
    pub(crate) argv: Option<Vec<String>>,
    /// A command line for the platform shell.
    pub(crate) shell_cmd: Option<String>,
    /// Working directory.
    pub(crate) cwd: Option<PathBuf>,
    /// Variables added to the environment.
    pub(crate) env: BTreeMap<String, String>,
    /// Text written to its stdin.
    pub(crate) stdin: Option<String>,
    /// How long it may run.
    pub(crate) timeout: Duration,
}

/// Runs a command for another module the way `cmd.run_all` does (lines
/// streamed live, timeout and cancellation kill the process group) and
/// answers `cmd.run_all`'s data: `pid`, `retcode`, `stdout`, `stderr`,
/// `truncated`. Err: it did not start, timed out or was cancelled.
pub(crate) async fn run_request(
    fun: &'static str,
    request: CommandRequest,
    events: &EventSink,
    cancel: &CancellationToken,
) -> Result<Value, String> {
    let (cmd, argv) = match (request.argv, request.shell_cmd) {
        (Some(argv), None) if !argv.is_empty() && !argv[0].is_empty() => {
            (argv.join(" "), Some(argv))
        }
        (None, Some(cmd)) if !cmd.trim().is_empty() => (cmd, None),
        _ => {
            return Err(format!(
                "{fun}: give either argv (a non-empty list) or cmd (a command line)"
            ))
        }
    };
    let spec = CmdSpec {
        fun,
        cmd,
        argv,
        cwd: request.cwd,
        stdin: request.stdin,
        shell: None,
        env: request.env,
        timeout: Some(request.timeout),
        output_cap: DEFAULT_OUTPUT_CAP,
    };
    let finished = execute(&spec, events, cancel)
        .await
        .map_err(|e| e.to_string())?;
    Ok(finished.run_all_outcome().data)
}

/// Runs the command to its end, its timeout or the call's cancellation.
pub(crate) async fn execute(
    spec: &CmdSpec,
    events: &EventSink,
    cancel: &CancellationToken,
) -> Result<Finished, CmdError> {
    let fun = spec.fun;
    let started = Instant::now();
    if cancel.is_cancelled() {
        return Err(CmdError::Cancelled(Duration::ZERO));
    }
    if let Some(cwd) = &spec.cwd {
        let reason = match tokio::fs::metadata(cwd).await {
            Ok(meta) if meta.is_dir() => None,
            Ok(_) => Some("not a directory".to_owned()),
            Err(err) => Some(err.to_string()),
        };
        if let Some(reason) = reason {
            return Err(CmdError::Cwd {
                fun,
                cwd: cwd.display().to_string(),
                reason,
            });
        }
    }

    let argv = match &spec.argv {
        Some(direct) => ShellCommand {
            program: direct.first().cloned().unwrap_or_default(),
            args: direct.iter().skip(1).cloned().map(Arg::Quoted).collect(),
        },
        None => shell_argv(Os::current(), spec.shell.as_deref(), &spec.cmd),
    };
    let mut command = tokio::process::Command::new(&argv.program);
    for arg in &argv.args {
        match arg {
            Arg::Quoted(a) => {
                command.arg(a);
            }
            Arg::Verbatim(a) => add_verbatim(&mut command, a),
        }
    }
    command
        .envs(&spec.env)
        .stdin(if spec.stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    if let Some(cwd) = &spec.cwd {
        command.current_dir(cwd);
    }
    #[cfg(unix)]
    command.process_group(0);

    let mut child = command.spawn().map_err(|source| CmdError::Spawn {
        fun,
        program: argv.program.clone(),
        source,
    })?;
    let pid = child.id();
    let mut guard = TreeGuard { pid };
    tracing::debug!(fun, ?pid, "command started");

    let mut stdout = child.stdout.take().map(LineReader::new);
    let mut stderr = child.stderr.take().map(LineReader::new);
    let mut stdin_write: BoxFuture<'static, ()> = match (child.stdin.take(), spec.stdin.clone()) {
        (Some(mut pipe), Some(input)) => Box::pin(async move {
            if let Err(err) = pipe.write_all(input.as_bytes()).await {
                tracing::debug!(%err, "command did not read all of its stdin");
            }
            // Dropping the pipe closes it: the command sees end of input.
        }),
        _ => Box::pin(futures::future::pending()),
    };
    let mut stdin_pending = spec.stdin.is_some();

    let mut capture = Capture::new(spec.output_cap);
    let mut status: Option<ExitStatus> = None;
    let far = tokio::time::Instant::now() + Duration::from_secs(86_400 * 365);
    let timeout_at = spec
        .timeout
        .map_or(far, |t| tokio::time::Instant::now() + t);
    let mut drain_until = far;

    let stop = loop {
        if status.is_some() && stdout.is_none() && stderr.is_none() {
            break None;
        }
        tokio::select! {
            line = next_line(&mut stdout), if stdout.is_some() => match line {
                Some(line) => capture.push(Stream::Stdout, &line, events),
                None => stdout = None,
            },
            line = next_line(&mut stderr), if stderr.is_some() => match line {
                Some(line) => capture.push(Stream::Stderr, &line, events),
                None => stderr = None,
            },
            () = &mut stdin_write, if stdin_pending => stdin_pending = false,
            exited = child.wait(), if status.is_none() => {
                status = Some(exited.map_err(|source| CmdError::Wait { fun, source })?);
                drain_until = tokio::time::Instant::now() + DRAIN_GRACE;
                // The shell is gone; what is left of its group is not ours to kill.
                guard.disarm();
            },
            () = tokio::time::sleep_until(drain_until), if status.is_some() => {
                tracing::debug!(fun, ?pid, "command exited but its output is still open; not waiting for it");
                break None;
            },
            () = tokio::time::sleep_until(timeout_at), if status.is_none() => {
                break Some(CmdError::TimedOut(spec.timeout.unwrap_or_default()));
            },
            () = cancel.cancelled(), if status.is_none() => {
                break Some(CmdError::Cancelled(started.elapsed()));
            },
        }
    };

    if let Some(err) = stop {
        if let Some(pid) = pid {
            kill_tree(pid);
        }
        guard.disarm();
        if let Err(err) = child.start_kill() {
            tracing::debug!(%err, "command already gone");
        }
        // Reap it; kill_on_drop covers the (unlikely) case this takes too long.
        let _ = tokio::time::timeout(Duration::from_secs(5), child.wait()).await;
        return Err(err);
    }
    let status = status.ok_or(CmdError::Wait {
        fun,
        source: std::io::Error::other("command output ended without an exit status"),
    })?;
    if capture.stdout.truncated || capture.stderr.truncated {
        tracing::info!(fun, ?pid, cap = spec.output_cap, "command output truncated");
    }
    tracing::debug!(fun, ?pid, %status, elapsed_ms = started.elapsed().as_millis() as u64, "command finished");
    Ok(Finished {
        pid,
        status,
        capture,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unix_argv_is_sh_dash_c() {
        assert_eq!(
            shell_argv(Os::Unix, None, "echo 'a b'"),
            ShellCommand {
                program: "/bin/sh".into(),
                args: vec![Arg::Quoted("-c".into()), Arg::Quoted("echo 'a b'".into())]
            }
        );
        assert_eq!(
            shell_argv(Os::Unix, Some("/bin/bash"), "x").program,
            "/bin/bash"
        );
    }

    #[test]
    fn windows_argv_is_cmd_exe_with_verbatim_command() {
        assert_eq!(
            shell_argv(Os::Windows, None, "echo \"a b\" & dir"),
            ShellCommand {
                program: "cmd.exe".into(),
                args: vec![
                    Arg::Quoted("/S".into()),
                    Arg::Quoted("/C".into()),
                    Arg::Verbatim("\"echo \"a b\" & dir\"".into())
                ]
            }
        );
        let ps = shell_argv(
            Os::Windows,
            Some("C:\\Windows\\System32\\WindowsPowerShell\\v1.0\\PowerShell.exe"),
            "Get-Date",
        );
        assert_eq!(ps.args.last(), Some(&Arg::Quoted("Get-Date".into())));
        assert!(ps.args.contains(&Arg::Quoted("-Command".into())));
        let bash = shell_argv(Os::Windows, Some("bash.exe"), "ls");
        assert_eq!(
            bash.args,
            vec![Arg::Quoted("-c".into()), Arg::Quoted("ls".into())]
        );
        assert_ne!(
            Os::current(),
            if cfg!(windows) { Os::Unix } else { Os::Windows }
        );
    }

    #[test]
    fn seconds_are_printed_short() {
        assert_eq!(secs(Duration::from_secs(5)), "5");
        assert_eq!(secs(Duration::from_millis(500)), "0.5");
        assert_eq!(secs(Duration::from_millis(2250)), "2.25");
    }

    #[tokio::test]
    async fn line_reader_splits_lines_and_long_pieces() {
        let mut input = b"one\r\ntwo\n".to_vec();
        input.extend(std::iter::repeat_n(b'x', MAX_EVENT_LINE + 10));
        let mut r = LineReader::new(&input[..]);
        assert_eq!(r.next_line().await.as_deref(), Some(&b"one\r\n"[..]));
        assert_eq!(r.next_line().await.as_deref(), Some(&b"two\n"[..]));
        assert_eq!(r.next_line().await.map(|l| l.len()), Some(MAX_EVENT_LINE));
        assert_eq!(r.next_line().await.map(|l| l.len()), Some(10));
        assert_eq!(r.next_line().await, None);
    }
}
