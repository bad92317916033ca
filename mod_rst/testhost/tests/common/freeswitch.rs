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

/// What the gated test and the bench each give FreeSWITCH; [`Setup::xml`]
/// writes the rest, which they share: the modules (mod_rst among them),
/// logging, the event socket fs_cli uses, one SIP profile on loopback,
/// and `rst.conf` naming the receiver.
pub struct Setup<'a> {
    pub receiver_port: u16,
    pub sip_port: u16,
    pub max_sessions: u32,
    /// The lowest level FreeSWITCH logs and writes to its log file.
    pub loglevel: &'a str,
    /// FreeSWITCH's RTP port range.
    pub rtp_ports: (u16, u16),
    /// `(name, value)` settings of the SIP profile beyond the shared ones.
    pub sofia: &'a [(&'a str, &'a str)],
    /// The `default` context's extensions (XML).
    pub extensions: &'a str,
    /// `(name, value)` params of `rst.conf` beyond the receiver's address.
    pub rst: &'a [(&'a str, &'a str)],
}

impl Setup<'_> {
    /// `freeswitch.xml`, for [`start_freeswitch`]'s `config`.
    pub fn xml(&self, esl_port: u16, logfile: &Path) -> String {
        const LEVELS: [&str; 7] = ["debug", "info", "notice", "warning", "err", "crit", "alert"];
        let from = LEVELS.iter().position(|l| *l == self.loglevel).unwrap_or(0);
        let logged = LEVELS[from..].join(",");
        let Setup {
            receiver_port,
            sip_port,
            max_sessions,
            loglevel,
            rtp_ports: (rtp_start, rtp_end),
            extensions,
            ..
        } = self;
        let logfile = logfile.display();
        let params = |params: &[(&str, &str)], indent: &str| -> String {
            params
                .iter()
                .map(|(name, value)| {
                    format!("\n{indent}<param name=\"{name}\" value=\"{value}\"/>")
                })
                .collect()
        };
        let sofia = params(self.sofia, "            ");
        let rst = params(self.rst, "        ");
        format!(
            r#"<?xml version="1.0"?>
<document type="freeswitch/xml">
  <section name="configuration">
    <configuration name="switch.conf">
      <settings>
        <param name="max-sessions" value="{max_sessions}"/>
        <param name="sessions-per-second" value="1000"/>
        <param name="loglevel" value="{loglevel}"/>
        <param name="rtp-start-port" value="{rtp_start}"/>
        <param name="rtp-end-port" value="{rtp_end}"/>
      </settings>
    </configuration>
    <configuration name="modules.conf">
      <modules>
        <load module="mod_logfile"/>
        <load module="mod_event_socket"/>
        <load module="mod_commands"/>
        <load module="mod_dptools"/>
        <load module="mod_dialplan_xml"/>
        <load module="mod_loopback"/>
        <load module="mod_sofia"/>
        <load module="mod_tone_stream"/>
        <load module="mod_rst"/>
      </modules>
    </configuration>
    <configuration name="logfile.conf">
      <settings><param name="rotate-on-hup" value="true"/></settings>
      <profiles><profile name="default"><settings>
        <param name="logfile" value="{logfile}"/>
      </settings><mappings><map name="all" value="{logged}"/></mappings></profile></profiles>
    </configuration>
    <configuration name="event_socket.conf">
      <settings>
        <param name="listen-ip" value="127.0.0.1"/>
        <param name="listen-port" value="{esl_port}"/>
        <param name="password" value="ClueCon"/>
      </settings>
    </configuration>
    <configuration name="sofia.conf">
      <global_settings><param name="log-level" value="0"/></global_settings>
      <profiles>
        <profile name="rst">
          <settings>
            <param name="sip-ip" value="127.0.0.1"/>
            <param name="rtp-ip" value="127.0.0.1"/>
            <param name="sip-port" value="{sip_port}"/>
            <param name="context" value="default"/>
            <param name="dialplan" value="XML"/>
            <param name="auth-calls" value="false"/>{sofia}
          </settings>
        </profile>
      </profiles>
    </configuration>
    <configuration name="rst.conf">
      <settings>
        <param name="udp-server-ip" value="127.0.0.1"/>
        <param name="udp-server-port" value="{receiver_port}"/>{rst}
      </settings>
    </configuration>
  </section>
  <section name="dialplan">
    <context name="default">
      {extensions}
    </context>
  </section>
</document>
"#
        )
    }
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
