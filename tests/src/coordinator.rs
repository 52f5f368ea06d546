//! A real coordinator process under test.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// A running `dtx-coordinator serve`, killed (SIGKILL) on drop.
#[derive(Debug)]
pub struct CoordinatorProc {
    /// Base URL, e.g. `http://127.0.0.1:40123`.
    pub url: String,
    child: Option<Child>,
    database_url: String,
    env: Vec<(String, String)>,
}

/// The coordinator binary: `DTX_COORDINATOR_BIN`, else `dtx-coordinator-under-test` (this
/// package's copy of the coordinator's `main`) beside the running test or benchmark
/// executable; cargo builds it before the tests and puts both in one target directory.
pub fn binary() -> PathBuf {
    if let Ok(p) = std::env::var("DTX_COORDINATOR_BIN") {
        return PathBuf::from(p);
    }
    let exe = std::env::current_exe().expect("current_exe");
    let mut dir = exe.parent().map(PathBuf::from).unwrap_or_default();
    // Integration tests run from target/<profile>/deps.
    if dir.ends_with("deps") {
        dir.pop();
    }
    let bin = dir.join("dtx-coordinator-under-test");
    assert!(
        bin.exists(),
        "{} not found: build it first (cargo build -p dtx-tests) or set DTX_COORDINATOR_BIN",
        bin.display()
    );
    bin
}

impl CoordinatorProc {
    /// Starts a coordinator on `database_url`, on a free loopback port, with test-friendly
    /// timings (poll every 100 ms) overridable through `env`.
    pub async fn start(database_url: &str, env: &[(&str, &str)]) -> Self {
        let mut me = Self {
            url: String::new(),
            child: None,
            database_url: database_url.to_owned(),
            env: env
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
        };
        me.spawn().await;
        me
    }

    async fn spawn(&mut self) {
        let mut cmd = Command::new(binary());
        cmd.arg("serve")
            .env("DTX_DATABASE_URL", &self.database_url)
            .env("DTX_LISTEN", "127.0.0.1:0")
            .env("DTX_POLL_INTERVAL_MS", "100")
            .env(
                "DTX_LOG",
                std::env::var("DTX_TEST_LOG").unwrap_or_else(|_| "warn".into()),
            )
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("spawn dtx-coordinator");
        let stdout = child.stdout.take().expect("stdout");
        // The coordinator prints `listening on http://ADDR` once it accepts requests.
        let line = tokio::task::spawn_blocking(move || {
            let mut reader = BufReader::new(stdout);
            let mut line = String::new();
            let _ = reader.read_line(&mut line);
            // Keep draining so the child never blocks on a full pipe.
            std::thread::spawn(move || {
                let mut sink = String::new();
                while reader.read_line(&mut sink).map(|n| n > 0).unwrap_or(false) {
                    sink.clear();
                }
            });
            line
        });
        let line = tokio::time::timeout(Duration::from_secs(30), line)
            .await
            .expect("coordinator did not start within 30 s")
            .expect("reader");
        let url = line
            .trim()
            .strip_prefix("listening on ")
            .unwrap_or_else(|| {
                panic!("coordinator failed to start (first line: {line:?}); see its log above")
            })
            .to_owned();
        self.url = url;
        self.child = Some(child);
    }

    /// Kills the process at once (SIGKILL): no shutdown code runs.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Sends a signal (`STOP`, `CONT`, ...) to the process.
    pub fn signal(&self, name: &str) {
        if let Some(child) = &self.child {
            let _ = Command::new("kill")
                .arg(format!("-{name}"))
                .arg(child.id().to_string())
                .status();
        }
    }

    /// Sends SIGTERM and waits for the process to exit; returns how long it took.
    pub fn terminate(&mut self, within: Duration) -> Duration {
        let started = std::time::Instant::now();
        if let Some(mut child) = self.child.take() {
            let _ = Command::new("kill")
                .arg("-TERM")
                .arg(child.id().to_string())
                .status();
            loop {
                if let Ok(Some(_)) = child.try_wait() {
                    break;
                }
                if started.elapsed() > within {
                    let _ = child.kill();
                    let _ = child.wait();
                    panic!("coordinator did not exit within {within:?} of SIGTERM");
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        started.elapsed()
    }

    /// Starts the coordinator again on the same database (on a new port).
    pub async fn restart(&mut self) {
        self.kill();
        self.spawn().await;
    }

    /// The process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    /// A native-API client.
    pub fn client(&self) -> dtx::Client {
        dtx::Client::with_timeout(&self.url, Duration::from_secs(60))
    }
}

impl Drop for CoordinatorProc {
    fn drop(&mut self) {
        self.kill();
    }
}
