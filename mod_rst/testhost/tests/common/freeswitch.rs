//! A real FreeSWITCH for the gated tests and benchmarks: started from an
//! installed prefix (`FREESWITCH_PREFIX`) with the built module and a
//! configuration of the caller's, driven with fs_cli.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A FreeSWITCH started by [`start_freeswitch`], killed when dropped.
pub struct FreeSwitch {
    prefix: PathBuf,
    esl_port: u16,
    pub child: Child,
    pub dirs: tempfile::TempDir,
}

impl FreeSwitch {
    /// One fs_cli command; its output, trimmed.
    pub fn cli(&self, command: &str) -> String {
        let output = Command::new(self.prefix.join("bin/fs_cli"))
            .args([
                "-H",
                "127.0.0.1",
                "-P",
                &self.esl_port.to_string(),
                "-p",
                "ClueCon",
                "-T",
                "5000",
                "-t",
                "5000",
                "-x",
                command,
            ])
            .output()
            .expect("fs_cli runs");
        String::from_utf8_lossy(&output.stdout).trim().to_owned()
    }
}

impl Drop for FreeSwitch {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Starts `prefix`'s FreeSWITCH with `module` as mod_rst and the configuration
/// `config(esl_port, logfile)` gives (it must load mod_event_socket on
/// `esl_port` with password ClueCon), in a folder of its own; returns once it
/// is ready.
pub fn start_freeswitch(
    prefix: &Path,
    module: &Path,
    config: &dyn Fn(u16, &Path) -> String,
) -> FreeSwitch {
    let dirs = tempfile::tempdir().unwrap();
    let sub = |name: &str| {
        let dir = dirs.path().join(name);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    };
    let (conf, modules) = (sub("conf"), sub("mod"));
    let esl_port = free_port();
    std::fs::write(
        conf.join("freeswitch.xml"),
        config(esl_port, &sub("log").join("freeswitch.log")),
    )
    .unwrap();
    // The installed modules plus ours, under the file name FreeSWITCH requires.
    for entry in std::fs::read_dir(prefix.join("mod")).unwrap().flatten() {
        let _ = std::os::unix::fs::symlink(entry.path(), modules.join(entry.file_name()));
    }
    std::fs::copy(module, modules.join("mod_rst.so")).unwrap();
    let child = Command::new(prefix.join("bin/freeswitch"))
        .args(["-nf", "-nc", "-nonat", "-nocal", "-nort"])
        .arg("-conf")
        .arg(&conf)
        .arg("-mod")
        .arg(&modules)
        .arg("-log")
        .arg(sub("log"))
        .arg("-db")
        .arg(sub("db"))
        .arg("-run")
        .arg(sub("run"))
        .arg("-temp")
        .arg(sub("temp"))
        .arg("-storage")
        .arg(sub("storage"))
        .arg("-cache")
        .arg(sub("cache"))
        .arg("-recordings")
        .arg(sub("recordings"))
        .arg("-sounds")
        .arg(sub("sounds"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("freeswitch starts");
    let fs = FreeSwitch {
        prefix: prefix.to_owned(),
        esl_port,
        child,
        dirs,
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    while !fs.cli("status").contains("is ready") {
        assert!(
            Instant::now() < deadline,
            "FreeSWITCH did not get ready; log in {}",
            fs.dirs.path().display()
        );
        std::thread::sleep(Duration::from_millis(300));
    }
    fs
}
