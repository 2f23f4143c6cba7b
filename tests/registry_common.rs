//! What the tests that need an OCI registry or HTTP share: Debian's
//! `docker-registry` started on a free loopback port with htpasswd auth
//! (user `acme`, password `s3cret`), and `curl`.

#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// A running `docker-registry` with htpasswd auth on a free loopback port.
pub struct RegistryServer {
    child: Child,
    pub addr: String,
    _dir: PathBuf,
}

impl Drop for RegistryServer {
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

pub fn registry(dir: &Path) -> RegistryServer {
    let exe = ["/usr/bin/docker-registry", "/usr/sbin/docker-registry"]
        .into_iter()
        .find(|p| Path::new(p).exists())
        .expect("docker-registry (Debian package docker-registry; scripts/setup.sh installs it)");
    let htpasswd = Command::new("htpasswd")
        .args(["-Bbn", "acme", "s3cret"])
        .output()
        .expect("htpasswd (apache2-utils)");
    assert!(htpasswd.status.success());
    std::fs::write(dir.join("htpasswd"), &htpasswd.stdout).unwrap();
    let port = free_port();
    let addr = format!("127.0.0.1:{port}");
    let cfg = format!(
        "version: 0.1\nlog:\n  level: info\nstorage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\n\
         http:\n  addr: {addr}\nauth:\n  htpasswd:\n    realm: flexmodel-tests\n    path: {}\n",
        dir.join("storage").display(),
        dir.join("htpasswd").display()
    );
    std::fs::write(dir.join("config.yml"), cfg).unwrap();
    let mut child = Command::new(exe)
        .args(["serve", s(&dir.join("config.yml"))])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if line.contains("listening on") {
                let _ = tx.send(());
            }
        }
    });
    rx.recv_timeout(std::time::Duration::from_secs(30))
        .expect("docker-registry logs \"listening on\"");
    RegistryServer {
        child,
        addr,
        _dir: dir.to_path_buf(),
    }
}

pub fn curl(args: &[&str]) -> (u16, String) {
    let o = Command::new("curl")
        .args(["-s", "-w", "\n%{http_code}"])
        .args(args)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&o.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').unwrap();
    (code.trim().parse().unwrap(), body.to_string())
}
