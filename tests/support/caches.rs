//! Real HTTP caches for the cache-invalidation tests: `varnishd` and
//! `nginx` (installed from Debian packages by `scripts/test`), each
//! instance on its own loopback address and all on one port, as the pods
//! of a headless Service are, in front of one in-process [`Origin`] that
//! counts every fetch.
//!
//! Each instance runs in the foreground in its own process group, with its
//! working files in a temporary directory, and is stopped (SIGTERM to its
//! group, then SIGKILL) when dropped. A missing binary fails the test with
//! the command that installs it; nothing is skipped.
//!
//! The configurations are the recipes' own files under `docs/recipes/`,
//! read at run time, with only the addresses replaced: the port the
//! instance listens on, where its application (the origin) is, and, for
//! nginx, where its cache lives.
#![allow(dead_code)]

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::Request;
use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use tokio::net::TcpListener;

/// What to run when a cache binary is missing.
const INSTALL_HINT: &str = "run `bash scripts/test`, which installs the Debian packages varnish, varnish-modules, nginx and libnginx-mod-http-cache-purge (or install them with apt-get)";

/// The path of a recipe file, e.g. `varnish/purge.vcl`.
pub fn recipe_path(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("docs/recipes")
        .join(name)
}

/// The text of a recipe file.
pub fn recipe(name: &str) -> String {
    let path = recipe_path(name);
    std::fs::read_to_string(&path)
        .unwrap_or_else(|error| panic!("cannot read {}: {error}", path.display()))
}

/// `text` with the one occurrence of `from` replaced by `to`; fails when
/// `from` is not there exactly once, so a recipe edit cannot silently
/// leave a test running something else.
pub fn replace_once(text: &str, from: &str, to: &str) -> String {
    let count = text.matches(from).count();
    assert_eq!(count, 1, "expected `{from}` exactly once in:\n{text}");
    text.replacen(from, to, 1)
}

/// The full path of `binary`, looked up in `PATH` and the sbin
/// directories; fails the test with how to install it when missing.
pub fn require(binary: &str) -> PathBuf {
    let path = std::env::var("PATH").unwrap_or_default();
    path.split(':')
        .chain(["/usr/sbin", "/sbin", "/usr/local/sbin"])
        .map(|dir| Path::new(dir).join(binary))
        .find(|candidate| candidate.is_file())
        .unwrap_or_else(|| {
            panic!("`{binary}` is not installed, and this test needs it: {INSTALL_HINT}")
        })
}

/// Loopback addresses 127.0.0.`first` … for `count` instances.
pub fn loopback(first: u8, count: usize) -> Vec<IpAddr> {
    (0..count)
        .map(|i| IpAddr::V4(Ipv4Addr::new(127, 0, 0, first + i as u8)))
        .collect()
}

/// A port free on every one of `ips` right now.
pub fn free_port(ips: &[IpAddr]) -> u16 {
    'port: for _ in 0..50 {
        let first = std::net::TcpListener::bind((ips[0], 0)).expect("bind a probe");
        let port = first.local_addr().unwrap().port();
        for ip in &ips[1..] {
            if std::net::TcpListener::bind((*ip, port)).is_err() {
                continue 'port;
            }
        }
        return port;
    }
    panic!("no port free on all of {ips:?}");
}

/// The application behind the caches: answers every GET with a cacheable
/// body naming how many times it was fetched, and counts fetches by
/// `Host` and path. A query parameter `xkey` becomes the response's
/// `xkey` header (surrogate keys, `+`-separated), for vmod xkey.
#[derive(Clone)]
pub struct Origin {
    /// Its address, on 127.0.0.1.
    pub addr: SocketAddr,
    fetches: Arc<Mutex<HashMap<String, usize>>>,
}

impl Origin {
    /// Starts the origin on an ephemeral port.
    pub async fn start() -> Origin {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind origin");
        let origin = Origin {
            addr: listener.local_addr().unwrap(),
            fetches: Arc::default(),
        };
        let counting = origin.clone();
        let app = axum::Router::new().fallback(move |request: Request| {
            let origin = counting.clone();
            async move { origin.answer(request) }
        });
        tokio::spawn(async move { axum::serve(listener, app).await });
        origin
    }

    fn answer(&self, request: Request) -> Response {
        let host = request
            .headers()
            .get("host")
            .and_then(|host| host.to_str().ok())
            .unwrap_or_default()
            .to_owned();
        let uri = request.uri();
        let path = uri.path_and_query().map_or("/", |pq| pq.as_str());
        let key = format!("{host}{path}");
        let count = {
            let mut fetches = self.fetches.lock().unwrap();
            let count = fetches.entry(key.clone()).or_default();
            *count += 1;
            *count
        };
        let mut response = (StatusCode::OK, format!("{key} fetch {count}\n")).into_response();
        let headers = response.headers_mut();
        headers.insert(
            "cache-control",
            HeaderValue::from_static("public, max-age=600"),
        );
        let tags = uri
            .query()
            .into_iter()
            .flat_map(|query| query.split('&'))
            .find_map(|pair| pair.strip_prefix("xkey="));
        if let Some(tags) = tags {
            headers.insert(
                "xkey",
                HeaderValue::from_str(&tags.replace('+', " ")).unwrap(),
            );
        }
        response
    }

    /// How many times `host` + `path` (with its query) was fetched.
    pub fn fetches(&self, host: &str, path: &str) -> usize {
        let fetches = self.fetches.lock().unwrap();
        fetches.get(&format!("{host}{path}")).copied().unwrap_or(0)
    }
}

/// One cache process, stopped when dropped.
pub struct Daemon {
    /// Where it listens.
    pub addr: SocketAddr,
    child: Option<Child>,
    name: &'static str,
    dir: tempfile::TempDir,
}

impl Daemon {
    /// Starts `command` (in a new process group) and waits until `addr`
    /// answers HTTP.
    async fn spawn(
        name: &'static str,
        mut command: Command,
        addr: SocketAddr,
        dir: tempfile::TempDir,
    ) -> Daemon {
        use std::os::unix::process::CommandExt;
        let log = std::fs::File::create(dir.path().join("output.log")).expect("log file");
        command
            .process_group(0)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log);
        let child = command
            .spawn()
            .unwrap_or_else(|error| panic!("cannot start {name}: {error}"));
        let mut daemon = Daemon {
            addr,
            child: Some(child),
            name,
            dir,
        };
        daemon.wait_ready().await;
        daemon
    }

    async fn wait_ready(&mut self) {
        let client = reqwest::Client::builder().no_proxy().build().unwrap();
        let give_up = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            let probe = client
                .head(format!("http://{}/__ready", self.addr))
                .timeout(Duration::from_secs(2))
                .send()
                .await;
            if probe.is_ok() {
                return;
            }
            if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
                panic!(
                    "{} on {} exited ({status}) before it was ready:\n{}",
                    self.name,
                    self.addr,
                    self.output()
                );
            }
            assert!(
                tokio::time::Instant::now() < give_up,
                "{} on {} was not ready within 30s:\n{}",
                self.name,
                self.addr,
                self.output()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// What the process wrote so far.
    pub fn output(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("output.log")).unwrap_or_default()
    }

    /// Stops the process group: SIGTERM, then SIGKILL after 5 s.
    pub fn stop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        let group = -(child.id() as i32);
        kill_group(group, libc::SIGTERM);
        let give_up = std::time::Instant::now() + Duration::from_secs(5);
        while std::time::Instant::now() < give_up {
            if child.try_wait().ok().flatten().is_some() {
                kill_group(group, libc::SIGKILL);
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        kill_group(group, libc::SIGKILL);
        let _ = child.wait();
    }
}

/// Sends `signal` to the process group `group` (negative: a group id)
/// with the `kill` command, which needs no `unsafe` code.
fn kill_group(group: i32, signal: i32) {
    let _ = Command::new("kill")
        .arg(format!("-{signal}"))
        .arg("--")
        .arg(group.to_string())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Starts one `varnishd` per address of `ips`, all on `port`, running the
/// recipe VCL `vcl` (a file under `docs/recipes/`) with its backend
/// pointed at `origin`.
pub async fn varnish(vcl: &str, ips: &[IpAddr], port: u16, origin: &Origin) -> Vec<Daemon> {
    let varnishd = require("varnishd");
    let text = replace_once(
        &recipe(vcl),
        ".port = \"8080\";",
        &format!(".port = \"{}\";", origin.addr.port()),
    );
    let mut started = Vec::new();
    let starting: Vec<_> = ips
        .iter()
        .map(|ip| {
            let dir = tempfile::tempdir().expect("temporary directory");
            let file = dir.path().join("purge.vcl");
            std::fs::write(&file, &text).expect("write the VCL");
            let addr = SocketAddr::new(*ip, port);
            let mut command = Command::new(&varnishd);
            command
                .arg("-F")
                .args(["-j", "none"])
                .arg("-n")
                .arg(dir.path().join("work"))
                .args(["-a", &addr.to_string()])
                .arg("-f")
                .arg(&file)
                .args(["-s", "malloc,32m", "-T", "none"])
                // Bans are checked at lookup: no lurker delay in tests.
                .args(["-p", "ban_lurker_sleep=0.01"]);
            Daemon::spawn("varnishd", command, addr, dir)
        })
        .collect();
    for daemon in futures_util::future::join_all(starting).await {
        started.push(daemon);
    }
    started
}

/// Starts one `nginx` per address of `ips`, all on `port`, each with the
/// recipe `site` (a file under `docs/recipes/`, for the `http` block)
/// proxying to `origin`, with its cache in its own directory.
pub async fn nginx(site: &str, ips: &[IpAddr], port: u16, origin: &Origin) -> Vec<Daemon> {
    let nginx = require("nginx");
    let module = ["/usr/lib/nginx/modules/ngx_http_cache_purge_module.so"]
        .into_iter()
        .map(PathBuf::from)
        .find(|path| path.is_file())
        .unwrap_or_else(|| panic!("the nginx cache purge module is not installed: {INSTALL_HINT}"));
    let recipe_text = recipe(site);
    let starting: Vec<_> = ips
        .iter()
        .map(|ip| {
            let dir = tempfile::tempdir().expect("temporary directory");
            let root = dir.path();
            let addr = SocketAddr::new(*ip, port);
            let site = replace_once(&recipe_text, "listen 8080;", &format!("listen {addr};"));
            let site = replace_once(
                &site,
                "/var/cache/nginx/app",
                &root.join("cache").display().to_string(),
            );
            let site = replace_once(
                &site,
                "http://127.0.0.1:8081;",
                &format!("http://{};", origin.addr),
            );
            std::fs::write(root.join("site.conf"), site).expect("write the site");
            let temp = |name: &str| root.join(name).display().to_string();
            let main = format!(
                "daemon off;\nmaster_process on;\nworker_processes 1;\nuser root;\npid {pid};\nerror_log stderr warn;\nload_module {module};\nevents {{ worker_connections 64; }}\nhttp {{\n  access_log off;\n  client_body_temp_path {body};\n  proxy_temp_path {proxy};\n  fastcgi_temp_path {fastcgi};\n  uwsgi_temp_path {uwsgi};\n  scgi_temp_path {scgi};\n  include {site};\n}}\n",
                pid = temp("nginx.pid"),
                module = module.display(),
                body = temp("body"),
                proxy = temp("proxy"),
                fastcgi = temp("fastcgi"),
                uwsgi = temp("uwsgi"),
                scgi = temp("scgi"),
                site = temp("site.conf"),
            );
            std::fs::write(root.join("nginx.conf"), main).expect("write nginx.conf");
            let mut command = Command::new(&nginx);
            command
                .arg("-p")
                .arg(root)
                .arg("-c")
                .arg(root.join("nginx.conf"))
                .args(["-e", "stderr"]);
            Daemon::spawn("nginx", command, addr, dir)
        })
        .collect();
    futures_util::future::join_all(starting).await
}

/// GETs `path` from one cache with `Host: host`; returns the body.
pub async fn get(cache: &Daemon, host: &str, path: &str) -> String {
    let response = reqwest::Client::builder()
        .no_proxy()
        .build()
        .unwrap()
        .get(format!("http://{}{path}", cache.addr))
        .header("host", host)
        .timeout(Duration::from_secs(10))
        .send()
        .await
        .unwrap_or_else(|error| panic!("GET {path} from {}: {error}", cache.addr));
    assert_eq!(
        response.status(),
        StatusCode::OK,
        "GET {path} from {}",
        cache.addr
    );
    response.text().await.unwrap()
}
