//! A trainer process: started in a process group of its own (so a stop
//! reaches whatever it started), its stdout and stderr read line by line
//! into a bounded buffer the job's steps drain, and its exit kept.
//! Stopping sends the group SIGTERM and, after a bounded grace, SIGKILL.

use std::collections::{HashMap, VecDeque};
use std::path::Path;
use std::process::Stdio;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};
use tokio::process::Command;
use tokio::sync::watch;
use tokio::time::Instant;

/// The variable that names the job in the trainer's environment; a
/// restarted Flywheel checks it before it stops a process it finds under
/// a recorded id.
pub const JOB_ENV: &str = "FLYWHEEL_JOB_ID";
/// Output lines held between two polls; older ones are counted, not kept.
const MAX_BUFFERED: usize = 500;
/// The stderr lines a failed job's error quotes.
pub const STDERR_TAIL: usize = 20;
/// Longer lines are cut.
const MAX_LINE_CHARS: usize = 2000;
/// How long a stopped trainer gets to exit after SIGTERM before SIGKILL.
pub const STOP_GRACE: Duration = Duration::from_secs(10);
/// How long output still read after the trainer exited (a child it left
/// behind may hold the pipes open).
const DRAIN: Duration = Duration::from_secs(5);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stream {
    Stdout,
    Stderr,
}

/// How the trainer ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Exit {
    Code(i32),
    /// Killed by a signal, or its status could not be read.
    Other(String),
}

/// One line of output and when it was read (RFC 3339).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Line {
    pub at: String,
    pub text: String,
}

#[derive(Debug, Default)]
struct Output {
    lines: VecDeque<Line>,
    skipped: u64,
    stderr_tail: VecDeque<String>,
}

/// One running trainer.
#[derive(Debug)]
pub struct Run {
    /// Its process id, which is also its process group's id.
    pub pid: u32,
    pub started: Instant,
    output: Mutex<Output>,
    exit: watch::Sender<Option<Exit>>,
}

impl Run {
    /// The lines since the last call, and how many were dropped for room.
    pub fn drain(&self) -> (Vec<Line>, u64) {
        let mut out = self.output.lock().unwrap_or_else(PoisonError::into_inner);
        let skipped = std::mem::take(&mut out.skipped);
        (out.lines.drain(..).collect(), skipped)
    }

    /// The last stderr lines, oldest first.
    pub fn stderr_tail(&self) -> Vec<String> {
        let out = self.output.lock().unwrap_or_else(PoisonError::into_inner);
        out.stderr_tail.iter().cloned().collect()
    }

    /// How it ended, once it has and its output has been read.
    pub fn exit(&self) -> Option<Exit> {
        self.exit.borrow().clone()
    }

    fn push(&self, stream: Stream, mut text: String) {
        if text.chars().count() > MAX_LINE_CHARS {
            text = text.chars().take(MAX_LINE_CHARS).collect::<String>() + "…";
        }
        let mut out = self.output.lock().unwrap_or_else(PoisonError::into_inner);
        if stream == Stream::Stderr {
            out.stderr_tail.push_back(text.clone());
            if out.stderr_tail.len() > STDERR_TAIL {
                out.stderr_tail.pop_front();
            }
        }
        out.lines.push_back(Line {
            at: crate::ids::now_rfc3339(),
            text,
        });
        if out.lines.len() > MAX_BUFFERED {
            out.lines.pop_front();
            out.skipped += 1;
        }
    }

    /// Waits until it has ended, at most `limit`; whether it has.
    pub async fn wait(&self, limit: Duration) -> bool {
        let mut rx = self.exit.subscribe();
        tokio::time::timeout(limit, rx.wait_for(Option::is_some))
            .await
            .is_ok_and(|r| r.is_ok())
    }

    /// SIGTERM to the group, SIGKILL after [`STOP_GRACE`] if the trainer
    /// has not exited, and once more to the group for what it left behind.
    pub async fn stop(&self) {
        signal_group(self.pid, "TERM").await;
        self.wait(STOP_GRACE).await;
        signal_group(self.pid, "KILL").await;
    }
}

/// The trainers this process started, by job id.
#[derive(Debug, Default)]
pub struct Running {
    runs: Mutex<HashMap<String, Arc<Run>>>,
}

impl Running {
    pub fn get(&self, job: &str) -> Option<Arc<Run>> {
        let runs = self.runs.lock().unwrap_or_else(PoisonError::into_inner);
        runs.get(job).cloned()
    }

    pub fn insert(&self, job: &str, run: Arc<Run>) {
        let mut runs = self.runs.lock().unwrap_or_else(PoisonError::into_inner);
        runs.insert(job.to_string(), run);
    }

    pub fn remove(&self, job: &str) -> Option<Arc<Run>> {
        let mut runs = self.runs.lock().unwrap_or_else(PoisonError::into_inner);
        runs.remove(job)
    }
}

/// Starts `argv` in `dir` in a new process group, with stdin closed and
/// [`JOB_ENV`] set to `job`.
pub fn spawn(argv: &[String], dir: &Path, job: &str) -> std::io::Result<Arc<Run>> {
    let (program, args) = argv
        .split_first()
        .ok_or_else(|| std::io::Error::other("the command is empty"))?;
    let mut child = Command::new(program)
        .args(args)
        .current_dir(dir)
        .env(JOB_ENV, job)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .spawn()?;
    let pid = child
        .id()
        .ok_or_else(|| std::io::Error::other("the trainer exited before it had an id"))?;
    let (exit, _) = watch::channel(None);
    let run = Arc::new(Run {
        pid,
        started: Instant::now(),
        output: Mutex::default(),
        exit,
    });
    let stdout = child
        .stdout
        .take()
        .map(|o| read(o, Stream::Stdout, run.clone()));
    let stderr = child
        .stderr
        .take()
        .map(|e| read(e, Stream::Stderr, run.clone()));
    let watched = run.clone();
    tokio::spawn(async move {
        let status = child.wait().await;
        let readers = async {
            if let Some(task) = stdout {
                let _ = task.await;
            }
            if let Some(task) = stderr {
                let _ = task.await;
            }
        };
        let _ = tokio::time::timeout(DRAIN, readers).await;
        let exit = match status {
            Ok(s) => s
                .code()
                .map_or_else(|| Exit::Other(s.to_string()), Exit::Code),
            Err(e) => Exit::Other(format!("its status could not be read: {e}")),
        };
        watched.exit.send_replace(Some(exit));
    });
    Ok(run)
}

fn read(
    pipe: impl AsyncRead + Unpin + Send + 'static,
    stream: Stream,
    run: Arc<Run>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut lines = BufReader::new(pipe).lines();
        while let Ok(Some(line)) = lines.next_line().await {
            run.push(stream, line);
        }
    })
}

/// `kill -SIG -- -pgid`: the whole group (the project forbids `unsafe`,
/// so no direct `kill(2)`). A group already gone is no error.
async fn signal_group(pgid: u32, signal: &str) {
    let sent = Command::new("kill")
        .arg(format!("-{signal}"))
        .arg("--")
        .arg(format!("-{pgid}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
    match tokio::time::timeout(Duration::from_secs(5), sent).await {
        Ok(Ok(_)) => {}
        Ok(Err(e)) => tracing::warn!(pgid, error = %e, "could not run `kill`"),
        Err(_) => tracing::warn!(pgid, "`kill` did not finish in 5 s"),
    }
}

/// When process `pid` started, in clock ticks since boot (`/proc`'s
/// `starttime`); `None` where `/proc` cannot tell.
pub fn start_ticks(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let (_, rest) = stat.rsplit_once(')')?;
    // After the name: state is field 3, starttime field 22.
    rest.split_whitespace().nth(19)?.parse().ok()
}

/// Whether process group `pgid` is still the one started for `job`: its
/// leader alive with the start time recorded, or a live member whose
/// environment names the job (the leader may have exited, or be a
/// wrapper — a version manager's shim — that does not keep the
/// variable); false where `/proc` cannot tell.
pub fn is_ours(pgid: u32, job: &str, started: Option<u64>) -> bool {
    let members = group(pgid);
    if started.is_some() && members.contains(&pgid) && start_ticks(pgid) == started {
        return true;
    }
    let wanted = format!("{JOB_ENV}={job}");
    members.into_iter().any(|pid| {
        std::fs::read(format!("/proc/{pid}/environ")).is_ok_and(|environ| {
            environ
                .split(|b| *b == 0)
                .any(|entry| entry == wanted.as_bytes())
        })
    })
}

/// The live (not zombie) processes of process group `pgid`.
fn group(pgid: u32) -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(|entry| entry.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
                return false;
            };
            // After the command name's closing parenthesis: state, parent, group.
            let Some((_, rest)) = stat.rsplit_once(')') else {
                return false;
            };
            let mut fields = rest.split_whitespace();
            let state = fields.next();
            let group = fields.nth(1).and_then(|g| g.parse::<u32>().ok());
            state != Some("Z") && group == Some(pgid)
        })
        .collect()
}

/// Stops a trainer a previous Flywheel process left running: SIGTERM to
/// its group, SIGKILL after [`STOP_GRACE`].
pub async fn stop_orphan(pgid: u32) {
    signal_group(pgid, "TERM").await;
    let deadline = Instant::now() + STOP_GRACE;
    while !group(pgid).is_empty() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    signal_group(pgid, "KILL").await;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn argv(script: &str) -> Vec<String> {
        ["sh", "-c", script].map(String::from).to_vec()
    }

    #[tokio::test]
    async fn output_is_kept_in_order_and_the_exit_after_the_last_line() {
        let dir = std::env::temp_dir();
        let run = spawn(
            &argv("echo one; echo two >&2; echo \"$FLYWHEEL_JOB_ID\"; exit 3"),
            &dir,
            "job_t",
        )
        .unwrap();
        assert!(run.wait(Duration::from_secs(10)).await, "it did not end");
        assert_eq!(run.exit(), Some(Exit::Code(3)));
        let (lines, skipped) = run.drain();
        let mut lines: Vec<String> = lines.into_iter().map(|l| l.text).collect();
        lines.sort();
        assert_eq!(
            (lines, skipped),
            (vec!["job_t".into(), "one".into(), "two".into()], 0)
        );
        assert_eq!(run.stderr_tail(), ["two"]);
        assert_eq!(run.drain(), (Vec::new(), 0), "drained once");
    }

    /// Whether process `pid` ignores SIGTERM (signal 15: bit 14 of the
    /// `SigIgn` mask in its `/proc` status).
    fn ignores_term(pid: u32) -> bool {
        std::fs::read_to_string(format!("/proc/{pid}/status"))
            .ok()
            .and_then(|status| {
                let mask = status.lines().find_map(|l| l.strip_prefix("SigIgn:"))?;
                u64::from_str_radix(mask.trim(), 16).ok()
            })
            .is_some_and(|mask| mask & (1 << 14) != 0)
    }

    #[tokio::test]
    async fn a_stop_ends_the_whole_group_and_a_flood_is_bounded() {
        let dir = std::env::temp_dir();
        // A child of its own that ignores SIGTERM, and more lines than are kept.
        let run = spawn(
            &argv("seq 1 2000; trap '' TERM; (trap '' TERM; sleep 60) & wait"),
            &dir,
            "job_s",
        )
        .unwrap();
        let pid = run.pid;
        // Ready once the shell ignores SIGTERM — so `seq`, run in the
        // foreground before the trap, has ended — and another process is
        // in the group: the subshell, which inherits the ignored signal at
        // its fork. Counting two processes alone could count `seq`, and a
        // stop sent then ends the shell at once, before it read a line.
        tokio::time::timeout(Duration::from_secs(10), async {
            while !(ignores_term(pid) && group(pid).len() >= 2) {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
        .await
        .expect("the child to start");
        assert!(is_ours(pid, "job_s", start_ticks(pid)));
        assert!(!is_ours(pid, "job_other", None));
        run.stop().await;
        assert!(run.wait(Duration::from_secs(10)).await);
        // SIGKILL is delivered, not awaited: the child goes a moment later.
        let gone = tokio::time::timeout(Duration::from_secs(10), async {
            while !group(pid).is_empty() {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
        .await;
        assert!(gone.is_ok(), "{:?} still run", group(pid));
        let (lines, skipped) = run.drain();
        assert_eq!(lines.len(), MAX_BUFFERED);
        assert_eq!(skipped, 2000 - MAX_BUFFERED as u64);
        assert_eq!(lines.last().map(|l| l.text.as_str()), Some("2000"));
    }
}
