//! Spawning meshgate and other processes: a `meshgate gateway` on a written config with its admin
//! endpoint polled until ready (metrics, signals, descriptors, CPU time), any child process with its
//! stderr collected, one-shot commands, and scratch directories removed on drop.

use super::net::free_port;
use super::waits::wait_for;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// A `meshgate gateway` child process.
pub struct Gateway {
    pub child: Child,
    pub listen: SocketAddr,
    pub admin: SocketAddr,
    pub config: PathBuf,
    _dir: TempDir,
}

/// A temporary directory removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        let dir = std::env::temp_dir().join(format!(
            "meshgate-test-{tag}-{}-{}",
            std::process::id(),
            free_port()
        ));
        std::fs::create_dir_all(&dir).expect("mkdir");
        TempDir(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

impl Gateway {
    /// Writes `[gateway]` (listen, admin, workers = 2, plus `extra_gateway` lines) and `rest` to a file
    /// and starts the binary; returns once `/ready` answers 200.
    pub fn start(extra_gateway: &str, rest: &str) -> Gateway {
        Self::start_with_fd_limit(extra_gateway, rest, None)
    }

    /// Like [`Gateway::start`], with `ulimit -n` set to `fds` for the gateway process.
    pub fn start_with_fd_limit(extra_gateway: &str, rest: &str, fds: Option<u32>) -> Gateway {
        Self::start_full(extra_gateway, rest, fds, &[])
    }

    /// Like [`Gateway::start`], with extra files (relative path, content) written beside the config first.
    pub fn start_with_files(extra_gateway: &str, rest: &str, files: &[(&str, &str)]) -> Gateway {
        Self::start_full(extra_gateway, rest, None, files)
    }

    /// Like [`Gateway::start_with_files`], at log level `info` with stderr kept in `gateway.log` beside
    /// the config (read it with [`Gateway::log`]).
    pub fn start_logged(extra_gateway: &str, rest: &str, files: &[(&str, &str)]) -> Gateway {
        Self::start_inner(extra_gateway, rest, None, files, true)
    }

    /// What the gateway has logged so far ([`Gateway::start_logged`] only).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.config.with_file_name("gateway.log")).unwrap_or_default()
    }

    fn start_full(
        extra_gateway: &str,
        rest: &str,
        fds: Option<u32>,
        files: &[(&str, &str)],
    ) -> Gateway {
        Self::start_inner(extra_gateway, rest, fds, files, false)
    }

    fn start_inner(
        extra_gateway: &str,
        rest: &str,
        fds: Option<u32>,
        files: &[(&str, &str)],
        logged: bool,
    ) -> Gateway {
        let listen = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let admin = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let dir = TempDir::new("gw");
        for (name, text) in files {
            let path = dir.0.join(name);
            std::fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
            std::fs::write(&path, text).expect("write file");
        }
        let config = dir.0.join("gateway.toml");
        let workers = if extra_gateway.contains("workers") {
            ""
        } else {
            "workers = 2\n"
        };
        let text = format!(
            "[gateway]\nlisten = [\"{listen}\"]\nadmin = \"{admin}\"\n{workers}{extra_gateway}\n{rest}"
        );
        std::fs::write(&config, text).expect("write config");
        let mut command = match fds {
            Some(n) => {
                let mut c = Command::new("sh");
                c.arg("-c")
                    .arg(format!(
                        "ulimit -n {n} && exec \"$0\" gateway --config \"$1\""
                    ))
                    .arg(env!("CARGO_BIN_EXE_meshgate"))
                    .arg(&config);
                c
            }
            None => {
                let mut c = Command::new(env!("CARGO_BIN_EXE_meshgate"));
                c.args(["gateway", "--config"]).arg(&config);
                c
            }
        };
        if logged {
            let log = std::fs::File::create(dir.0.join("gateway.log")).expect("log file");
            command.env("MESHGATE_LOG", "info").stderr(log);
        } else {
            command.env("MESHGATE_LOG", "warn");
        }
        let child = command
            .stdin(Stdio::null())
            .spawn()
            .expect("spawn meshgate");
        let mut gw = Gateway {
            child,
            listen,
            admin,
            config,
            _dir: dir,
        };
        wait_for(Duration::from_secs(20), "gateway /ready", || {
            if let Ok(Some(status)) = gw.child.try_wait() {
                panic!("gateway exited early: {status}");
            }
            gw.get("/ready")
                .ok()
                .filter(|r| r.starts_with("HTTP/1.1 200"))
        });
        gw
    }

    /// Writes a file beside the config (e.g. into a catalog directory).
    pub fn write_file(&self, name: &str, text: &str) {
        let path = self.config.parent().expect("dir").join(name);
        std::fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
        std::fs::write(&path, text).expect("write file");
    }

    /// Rewrites the config file (same listen/admin) with new routes; `workers = 2` unless
    /// `extra_gateway` sets it, as [`Gateway::start`] wrote it.
    pub fn rewrite(&self, extra_gateway: &str, rest: &str) {
        let workers = if extra_gateway.contains("workers") {
            ""
        } else {
            "workers = 2\n"
        };
        let text = format!(
            "[gateway]\nlisten = [\"{}\"]\nadmin = \"{}\"\n{workers}{extra_gateway}\n{rest}",
            self.listen, self.admin
        );
        std::fs::write(&self.config, text).expect("rewrite config");
    }

    /// GET `path` on the admin endpoint; the whole response.
    pub fn get(&self, path: &str) -> std::io::Result<String> {
        let mut s = TcpStream::connect_timeout(&self.admin, Duration::from_secs(2))?;
        s.set_read_timeout(Some(Duration::from_secs(5)))?;
        write!(s, "GET {path} HTTP/1.1\r\nHost: admin\r\n\r\n")?;
        let mut out = String::new();
        s.read_to_string(&mut out)?;
        Ok(out)
    }

    /// The value of the first metric line starting with `series` (name and labels), or 0.
    pub fn metric(&self, series: &str) -> f64 {
        let text = self.get("/metrics").expect("metrics");
        text.lines()
            .filter(|l| !l.starts_with('#'))
            .find_map(|l| {
                l.strip_prefix(series)
                    .and_then(|rest| rest.strip_prefix(' '))
                    .and_then(|v| v.trim().parse().ok())
            })
            .unwrap_or(0.0)
    }

    /// Waits until `series` reaches at least `want`.
    pub fn wait_metric(&self, series: &str, want: f64) {
        wait_for(Duration::from_secs(10), series, || {
            (self.metric(series) >= want).then_some(())
        });
    }

    /// Sends a signal by name (`HUP`, `TERM`).
    pub fn signal(&self, name: &str) {
        let status = Command::new("kill")
            .arg(format!("-{name}"))
            .arg(self.child.id().to_string())
            .status()
            .expect("kill");
        assert!(status.success());
    }

    /// Open file descriptors of the gateway process.
    pub fn open_fds(&self) -> usize {
        std::fs::read_dir(format!("/proc/{}/fd", self.child.id()))
            .map(|d| d.count())
            .unwrap_or(0)
    }

    /// CPU time the gateway process used so far, in seconds (utime + stime).
    pub fn cpu_seconds(&self) -> f64 {
        let stat =
            std::fs::read_to_string(format!("/proc/{}/stat", self.child.id())).unwrap_or_default();
        // Fields after the command name (which is in parentheses and may contain spaces).
        let after = stat.rsplit_once(')').map_or("", |(_, r)| r);
        let f: Vec<u64> = after
            .split_whitespace()
            .filter_map(|x| x.parse().ok())
            .collect();
        // utime and stime are fields 14 and 15 of the full line, 12 and 13 after the name and state.
        let ticks = f.get(10).copied().unwrap_or(0) + f.get(11).copied().unwrap_or(0);
        ticks as f64 / 100.0
    }

    /// Waits for the process to exit, for at most `limit`.
    pub fn wait_exit(&mut self, limit: Duration) -> ExitStatus {
        wait_for(limit, "gateway exit", || {
            self.child.try_wait().expect("try_wait")
        })
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A child process (optionally inside a network namespace) whose stderr is collected for assertions.
pub struct Proc {
    name: &'static str,
    child: Child,
    log: std::sync::Arc<std::sync::Mutex<String>>,
}

impl Proc {
    /// Runs `cmd` (inside namespace `netns` when given), with meshgate's logs at `info`.
    pub fn start_in(name: &'static str, netns: Option<&str>, cmd: &[&str]) -> Proc {
        let mut command = match netns {
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns]).args(cmd);
                c
            }
            None => {
                let mut c = Command::new(cmd[0]);
                c.args(&cmd[1..]);
                c
            }
        };
        let mut child = command
            .env("MESHGATE_LOG", "info")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
        let log = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
        let stderr = child.stderr.take().expect("stderr");
        let sink = log.clone();
        std::thread::spawn(move || {
            use std::io::BufRead;
            for line in std::io::BufReader::new(stderr)
                .lines()
                .map_while(Result::ok)
            {
                if let Ok(mut l) = sink.lock() {
                    l.push_str(&line);
                    l.push('\n');
                }
            }
        });
        Proc { name, child, log }
    }

    /// Waits (at most 15 s) for the process to exit.
    pub fn wait_exit(&mut self) -> ExitStatus {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return status;
            }
            assert!(Instant::now() < deadline, "{} did not exit", self.name);
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// How it ended, if it has.
    pub fn exited(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    /// Its process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Everything it wrote to stderr so far.
    pub fn log(&self) -> String {
        self.log.lock().map(|l| l.clone()).unwrap_or_default()
    }

    /// Waits (at most 15 s) until one stderr line contains every one of `needles`; returns it.
    pub fn wait_log(&self, needles: &[&str]) -> String {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let log = self.log();
            if let Some(line) = log.lines().find(|l| needles.iter().all(|n| l.contains(n))) {
                return line.to_owned();
            }
            assert!(
                Instant::now() < deadline,
                "{}: no line with {needles:?} in:\n{log}",
                self.name
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGTERM (tcpdump flushes its capture) and wait for the exit.
    pub fn stop(&mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let _ = self.child.wait();
    }
}

/// Prints the logs of the given processes if the test panics while it is alive (CI shows only the test's
/// output: without this a failure deep in a multi-process test says nothing about why).
pub struct DumpOnPanic(Vec<(&'static str, std::sync::Arc<std::sync::Mutex<String>>)>);

impl DumpOnPanic {
    pub fn new(procs: &[&Proc]) -> DumpOnPanic {
        DumpOnPanic(procs.iter().map(|p| (p.name, p.log.clone())).collect())
    }
}

impl Drop for DumpOnPanic {
    fn drop(&mut self) {
        if std::thread::panicking() {
            for (name, log) in &self.0 {
                let text = log.lock().map(|l| l.clone()).unwrap_or_default();
                eprintln!("---- log of {name} ----\n{text}");
            }
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs a command (`args[0]` with the rest) and requires success (its stderr is the failure message);
/// its stdout.
pub fn sh(args: &[&str]) -> String {
    let out = Command::new(args[0])
        .args(&args[1..])
        .output()
        .unwrap_or_else(|e| panic!("{args:?}: {e}"));
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Runs `meshgate ARGS` to completion and requires success; its stdout.
pub fn meshgate_ok(args: &[&str]) -> String {
    let mut argv = vec![env!("CARGO_BIN_EXE_meshgate")];
    argv.extend_from_slice(args);
    sh(&argv)
}
