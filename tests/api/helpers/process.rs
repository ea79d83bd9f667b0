//! Tests of the real binary: the path cargo built it at, free ports to give
//! it, and a guard that kills and reaps it when the test ends, however the
//! test ends, so that a failing test leaves no process behind.

use super::eventually;
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, ChildStdout, Command, ExitStatus};
use std::time::Duration;

/// The `flywheel` binary of this build.
pub fn flywheel() -> Command {
    Command::new(env!("CARGO_BIN_EXE_flywheel"))
}

/// A loopback port nothing listened on a moment ago (the OS's pick), for
/// a process that is told its port on the command line or in its config.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A running child process, killed (SIGKILL) and reaped when dropped
/// unless the test stopped it first.
pub struct Process {
    name: String,
    child: Option<Child>,
}

impl Process {
    /// Starts `command`; `name` says which process in failure messages.
    pub fn spawn(name: &str, command: &mut Command) -> Self {
        let child = command
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {name}: {e}"));
        Process {
            name: name.to_string(),
            child: Some(child),
        }
    }

    fn child(&mut self) -> &mut Child {
        self.child
            .as_mut()
            .unwrap_or_else(|| panic!("{} was already stopped", self.name))
    }

    pub fn id(&mut self) -> u32 {
        self.child().id()
    }

    /// The child's stdout, when it was spawned with a pipe for it.
    pub fn take_stdout(&mut self) -> ChildStdout {
        let name = self.name.clone();
        self.child()
            .stdout
            .take()
            .unwrap_or_else(|| panic!("{name} has no piped stdout"))
    }

    /// SIGTERM, as an operator stops it; waits (up to 30 s) for it to exit.
    pub async fn terminate(&mut self) -> ExitStatus {
        let sent = Command::new("kill")
            .args(["-TERM", &self.id().to_string()])
            .status()
            .unwrap();
        assert!(sent.success(), "cannot send SIGTERM to {}", self.name);
        let label = format!("{} to exit after SIGTERM", self.name);
        let status = eventually(&label, Duration::from_secs(30), async || {
            self.child().try_wait().unwrap()
        })
        .await;
        self.child = None;
        status
    }

    /// SIGKILL, as a crash would stop it; waits until it is gone.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.kill().unwrap();
            child.wait().unwrap();
        }
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// `flywheel simulate` on a free loopback port, once it accepts
/// connections; the process and its address.
pub async fn simulate() -> (Process, SocketAddr) {
    let addr = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let process = Process::spawn(
        "flywheel simulate",
        flywheel().args(["simulate", "--listen", &addr.to_string()]),
    );
    listening(addr.port()).await;
    (process, addr)
}

/// `flywheel serve --config <config>`, its log on the test's stderr (which
/// the harness shows when the test fails).
pub fn serve(config: &Path) -> Process {
    Process::spawn(
        "flywheel serve",
        flywheel()
            .args(["serve", "--config"])
            .arg(config)
            .stderr(std::process::Stdio::inherit()),
    )
}

/// Waits until the server at `base` answers `GET /readyz` with a 200.
pub async fn ready(http: &reqwest::Client, base: &str) {
    eventually(
        &format!("{base}/readyz to answer 600"),
        Duration::from_secs(60),
        || async {
            let response = http.get(format!("{base}/readyz")).send().await;
            response.is_ok_and(|r| r.status() == 200).then_some(())
        },
    )
    .await;
}

/// Waits until something accepts connections on the loopback `port`.
pub async fn listening(port: u16) {
    eventually(
        &format!("a server listening on port {port}"),
        Duration::from_secs(20),
        || async {
            tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .ok()
                .map(drop)
        },
    )
    .await;
}
