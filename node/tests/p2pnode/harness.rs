//! Real `p2pnode` processes for the tests: spawn one, read its stdout and
//! stderr line by line, wait for a line with a bounded timeout, kill it.

use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// The longest any one awaited line may take.
pub const PATIENCE: Duration = Duration::from_secs(90);

/// The tests share two slow cores: one swarm at a time.
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

/// Holds the machine for one test.
pub fn exclusive() -> MutexGuard<'static, ()> {
    ONE_AT_A_TIME
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn binary() -> &'static str {
    env!("CARGO_BIN_EXE_p2pnode")
}

/// A fresh scratch folder for `test`.
pub fn scratch(test: &str) -> PathBuf {
    let root = std::env::temp_dir().join(format!("p2pnode-{test}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&root);
    std::fs::create_dir_all(&root).unwrap();
    root
}

/// Runs a short `p2pnode` command to its end.
pub fn run(args: &[&str]) -> Output {
    Command::new(binary()).args(args).output().unwrap()
}

/// Runs a short `p2pnode` command that must succeed; returns its stdout.
pub fn run_ok(args: &[&str]) -> String {
    let output = run(args);
    assert!(
        output.status.success(),
        "p2pnode {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).unwrap()
}

/// One node's setting for `test`: a scratch folder, a new run of one
/// contributor per round in its `solo/`, and where its key goes. Returns
/// (folder, data directory, key).
pub fn solo(test: &str) -> (PathBuf, PathBuf, PathBuf) {
    let root = scratch(test);
    let dir = root.join("solo");
    init(&dir, 1);
    let key = root.join("solo.key");
    (root, dir, key)
}

/// A new run in `dir` with rounds small enough for a test: H = 2 steps of
/// 2 sequences, a round of at least `min` contributions.
pub fn init(dir: &Path, min: u32) {
    let min = min.to_string();
    run_ok(&[
        "init",
        "--dir",
        dir.to_str().unwrap(),
        "--inner-steps",
        "2",
        "--batch-size",
        "2",
        "--min-contributors",
        &min,
        "--deadline-ms",
        "8000",
        "--commit-window-ms",
        "300",
    ]);
}

/// Which stream a line came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stream {
    Out,
    Err,
}

/// A running `p2pnode`.
pub struct Node {
    name: String,
    child: Child,
    lines: Receiver<(Stream, String)>,
    /// Every line read so far.
    pub seen: Vec<(Stream, String)>,
}

impl Node {
    /// Starts `p2pnode join` on loopback, no mDNS, with `dir` and `key`
    /// and further `args`.
    pub fn join(name: &str, dir: &Path, key: &Path, args: &[&str]) -> Self {
        let mut command = Command::new(binary());
        command
            .args(["join", "--no-mdns", "--listen", "/ip4/127.0.0.1/tcp/0"])
            .arg("--dir")
            .arg(dir)
            .arg("--key")
            .arg(key)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = command.spawn().unwrap();
        let (tx, lines) = mpsc::channel();
        // Every line also goes to DIR.log, for a failed test's post-mortem.
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.with_extension("log"))
            .unwrap();
        let log = std::sync::Arc::new(Mutex::new(log));
        let out = child.stdout.take().unwrap();
        let err = child.stderr.take().unwrap();
        for (stream, pipe) in [
            (Stream::Out, Box::new(out) as Box<dyn Read + Send>),
            (Stream::Err, Box::new(err)),
        ] {
            let tx = tx.clone();
            let log = log.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(pipe).lines() {
                    let Ok(line) = line else { break };
                    if let Ok(mut log) = log.lock() {
                        let _ = writeln!(log, "{line}");
                    }
                    if tx.send((stream, line)).is_err() {
                        break;
                    }
                }
            });
        }
        Self {
            name: name.to_owned(),
            child,
            lines,
            seen: Vec::new(),
        }
    }

    /// The first line (seen before or arriving within [`PATIENCE`]) for
    /// which `pick` says something.
    pub fn wait_for<T>(
        &mut self,
        what: &str,
        mut pick: impl FnMut(Stream, &str) -> Option<T>,
    ) -> T {
        if let Some(found) = self.seen.iter().find_map(|(s, l)| pick(*s, l)) {
            return found;
        }
        let deadline = Instant::now() + PATIENCE;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok((stream, line)) => {
                    let found = pick(stream, &line);
                    self.seen.push((stream, line));
                    if let Some(found) = found {
                        return found;
                    }
                }
                Err(RecvTimeoutError::Timeout) => {
                    panic!(
                        "{}: no {what} within {PATIENCE:?}\n{}",
                        self.name,
                        self.log()
                    )
                }
                Err(RecvTimeoutError::Disconnected) => {
                    panic!("{}: exited before {what}\n{}", self.name, self.log())
                }
            }
        }
    }

    /// The address it listens on, with its peer id.
    pub fn address(&mut self) -> String {
        self.wait_for("listening address", |s, line| {
            let address = line.strip_prefix("listening on ")?;
            (s == Stream::Err).then(|| address.to_owned())
        })
    }

    /// Its `round R: checkpoint H` line for `round`: the hash.
    pub fn round(&mut self, round: u64) -> String {
        self.wait_for(&format!("round {round}"), |s, line| {
            let (r, hash, _) = round_line(s, line)?;
            (r == round).then_some(hash)
        })
    }

    /// Every round line seen so far: (round, hash, adopted).
    pub fn rounds(&self) -> Vec<(u64, String, bool)> {
        self.seen
            .iter()
            .filter_map(|(s, l)| round_line(*s, l))
            .collect()
    }

    /// Whether some line seen so far contains `text`.
    pub fn said(&self, text: &str) -> bool {
        self.seen.iter().any(|(_, l)| l.contains(text))
    }

    /// Reads to the end of its output and its exit, within [`PATIENCE`].
    pub fn exit(&mut self) -> ExitStatus {
        let deadline = Instant::now() + PATIENCE;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => self.seen.push(line),
                Err(RecvTimeoutError::Disconnected) => return self.child.wait().unwrap(),
                Err(RecvTimeoutError::Timeout) => {
                    panic!(
                        "{}: still running after {PATIENCE:?}\n{}",
                        self.name,
                        self.log()
                    )
                }
            }
        }
    }

    /// SIGTERM: the polite request to stop that `kill` sends.
    pub fn terminate(&mut self) {
        self.signal("-TERM");
    }

    /// SIGSTOP: frozen, its connections open and silent, as a peer on a
    /// stalled link is.
    pub fn pause(&mut self) {
        self.signal("-STOP");
    }

    /// SIGCONT: goes on from where [`pause`](Self::pause) froze it.
    pub fn resume(&mut self) {
        self.signal("-CONT");
    }

    fn signal(&self, signal: &str) {
        let pid = self.child.id().to_string();
        let sent = Command::new("kill").args([signal, &pid]).status();
        assert!(sent.is_ok_and(|s| s.success()), "kill {signal} {pid}");
    }

    /// SIGKILL: no chance to finish a write.
    pub fn kill(&mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }

    /// Every line seen so far.
    pub fn log(&self) -> String {
        let lines: Vec<&str> = self.seen.iter().map(|(_, l)| l.as_str()).collect();
        lines.join("\n")
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `round R: checkpoint H (...)` on stdout, as (R, H, adopted).
pub fn round_line(stream: Stream, line: &str) -> Option<(u64, String, bool)> {
    if stream != Stream::Out {
        return None;
    }
    let rest = line.strip_prefix("round ")?;
    let (round, rest) = rest.split_once(": checkpoint ")?;
    let (hash, note) = rest.split_once(' ').unwrap_or((rest, ""));
    Some((
        round.parse().ok()?,
        hash.to_owned(),
        note.contains("adopted"),
    ))
}
