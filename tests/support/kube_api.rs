//! A Kubernetes API server for tests: the `discovery.k8s.io/v1`
//! EndpointSlice list and watch protocol, served in process on 127.0.0.1
//! and reached by the router's real kube-rs client through a kubeconfig
//! file the test writes, as a cluster's API server would be.
//!
//! What it implements, as the API server does:
//! - `GET /apis/discovery.k8s.io/v1/namespaces/{ns}/endpointslices`: a
//!   JSON list whose `metadata.resourceVersion` is the store's, filtered
//!   by `labelSelector` (`key=value`);
//! - the same path with `watch=true`: a chunked stream of JSON events, one
//!   per line (`ADDED`, `MODIFIED`, `DELETED`, `BOOKMARK`), starting after
//!   `resourceVersion` (history is replayed), with a `BOOKMARK` first when
//!   `allowWatchBookmarks=true`; a `resourceVersion` older than the last
//!   compaction gets an `ERROR` event with a `410 Expired` Status, as the
//!   API server sends it; `sendInitialEvents=true` (streaming lists) sends
//!   the current objects as `ADDED`, then a `BOOKMARK` annotated
//!   `k8s.io/initial-events-end`.
//!
//! The test changes slices ([`KubeApi::set_slice`]), drops watches mid-stream
//! ([`KubeApi::drop_watches`]), compacts history ([`KubeApi::compact`]), and
//! stops and restarts the server on its port ([`KubeApi::stop`],
//! [`KubeApi::serve`]). Pages (`limit`/`continue`) are not split: the
//! router asks for 500 slices a page, more than any test has.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http_body_util::{BodyExt, Full, StreamBody, combinators::BoxBody};
use hyper::body::{Frame, Incoming};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};
use tokio::sync::mpsc;
use tokio::task::JoinSet;

type Body = BoxBody<Bytes, std::io::Error>;
type Chunk = Result<Frame<Bytes>, std::io::Error>;

const SLICES: &str = "/apis/discovery.k8s.io/v1/namespaces/";
const SERVICE_LABEL: &str = "kubernetes.io/service-name";

/// One endpoint of a slice as the test describes it.
#[derive(Debug, Clone)]
pub struct Ep {
    /// The pod's IP address.
    pub ip: IpAddr,
    /// The pod's name.
    pub pod: String,
    /// `conditions.ready`.
    pub ready: bool,
    /// `conditions.serving`.
    pub serving: bool,
    /// `conditions.terminating`.
    pub terminating: bool,
}

impl Ep {
    /// A ready pod.
    pub fn ready(ip: IpAddr, pod: &str) -> Self {
        Self {
            ip,
            pod: pod.to_owned(),
            ready: true,
            serving: true,
            terminating: false,
        }
    }

    /// The same pod failing its readiness probe.
    pub fn not_ready(mut self) -> Self {
        (self.ready, self.serving, self.terminating) = (false, false, false);
        self
    }

    /// The same pod shutting down while it still serves.
    pub fn terminating_but_serving(mut self) -> Self {
        (self.ready, self.serving, self.terminating) = (false, true, true);
        self
    }
}

/// The API server's store and its open watches.
#[derive(Default)]
struct Store {
    resource_version: u64,
    /// Objects by (namespace, name).
    slices: BTreeMap<(String, String), Value>,
    /// Every change: resource version, event type, object.
    history: Vec<(u64, &'static str, Value)>,
    /// Watches from before this resource version get 410.
    compacted: u64,
    watches: Vec<OpenWatch>,
    /// Every request's path and query, in order.
    requests: Vec<String>,
}

struct OpenWatch {
    namespace: String,
    selector: Option<(String, String)>,
    events: mpsc::UnboundedSender<Chunk>,
}

/// The test API server.
pub struct KubeApi {
    /// Where it listens (or will).
    pub addr: SocketAddr,
    store: Arc<Mutex<Store>>,
    server: Option<JoinSet<()>>,
    dir: tempfile::TempDir,
}

impl KubeApi {
    /// Starts the server on a free port.
    pub async fn start() -> KubeApi {
        let mut api = KubeApi::reserve();
        api.serve().await;
        api
    }

    /// Picks a free port without listening on it yet: the API is down
    /// until [`KubeApi::serve`].
    pub fn reserve() -> KubeApi {
        let probe = std::net::TcpListener::bind("127.0.0.1:0").expect("a free port");
        let addr = probe.local_addr().unwrap();
        drop(probe);
        KubeApi {
            addr,
            store: Arc::default(),
            server: None,
            dir: tempfile::tempdir().unwrap(),
        }
    }

    /// Listens on the server's port (again).
    pub async fn serve(&mut self) {
        let listener = tokio::net::TcpListener::bind(self.addr)
            .await
            .expect("the API port is free again");
        let store = Arc::clone(&self.store);
        let mut server = JoinSet::new();
        server.spawn(async move {
            let mut connections = JoinSet::new();
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let store = Arc::clone(&store);
                connections.spawn(async move {
                    let service = hyper::service::service_fn(move |request| {
                        let store = Arc::clone(&store);
                        async move { Ok::<_, Infallible>(handle(&store, request)) }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        self.server = Some(server);
    }

    /// Stops listening and cuts every connection: the API is down.
    pub async fn stop(&mut self) {
        if let Some(mut server) = self.server.take() {
            server.shutdown().await;
        }
        self.store.lock().unwrap().watches.clear();
    }

    /// Writes a kubeconfig whose current context reaches this server with
    /// a bearer token, in `namespace`; returns its path.
    pub fn kubeconfig(&self, namespace: &str) -> PathBuf {
        let path = self.dir.path().join(format!("kubeconfig-{namespace}"));
        write_kubeconfig(&path, self.addr, namespace);
        path
    }

    /// Creates or replaces the slice `name` of `service` in `namespace`,
    /// with one port `port_name` = `port` and these endpoints.
    pub fn set_slice(
        &self,
        namespace: &str,
        service: &str,
        name: &str,
        ports: &[(&str, u16)],
        endpoints: &[Ep],
    ) {
        let endpoints: Vec<Value> = endpoints
            .iter()
            .map(|ep| {
                json!({
                    "addresses": [ep.ip.to_string()],
                    "conditions": { "ready": ep.ready, "serving": ep.serving, "terminating": ep.terminating },
                    "nodeName": "node-1",
                    "zone": "zone-a",
                    "targetRef": { "kind": "Pod", "namespace": namespace, "name": ep.pod }
                })
            })
            .collect();
        let ports: Vec<Value> = ports
            .iter()
            .map(|(name, port)| json!({ "name": name, "port": port, "protocol": "TCP" }))
            .collect();
        let object = json!({
            "kind": "EndpointSlice",
            "apiVersion": "discovery.k8s.io/v1",
            "metadata": {
                "name": name,
                "namespace": namespace,
                "labels": { SERVICE_LABEL: service },
            },
            "addressType": "IPv4",
            "endpoints": endpoints,
            "ports": ports,
        });
        self.change(namespace, name, Some(object));
    }

    /// Deletes the slice `name` in `namespace`.
    pub fn delete_slice(&self, namespace: &str, name: &str) {
        self.change(namespace, name, None);
    }

    fn change(&self, namespace: &str, name: &str, object: Option<Value>) {
        let mut store = self.store.lock().unwrap();
        store.resource_version += 1;
        let version = store.resource_version;
        let key = (namespace.to_owned(), name.to_owned());
        let (kind, mut object) = match object {
            Some(object) if store.slices.contains_key(&key) => ("MODIFIED", object),
            Some(object) => ("ADDED", object),
            None => (
                "DELETED",
                store
                    .slices
                    .remove(&key)
                    .expect("deleting a slice that exists"),
            ),
        };
        object["metadata"]["resourceVersion"] = version.to_string().into();
        if kind != "DELETED" {
            store.slices.insert(key, object.clone());
        }
        store.history.push((version, kind, object.clone()));
        let line = event_line(kind, &object);
        store.watches.retain(|watch| {
            !watch.matches(&object) || watch.events.send(Ok(Frame::data(line.clone()))).is_ok()
        });
    }

    /// Cuts every open watch mid-stream (the connection breaks, as when
    /// the API server or a proxy in between restarts).
    pub fn drop_watches(&self) {
        let mut store = self.store.lock().unwrap();
        for watch in store.watches.drain(..) {
            let _ = watch
                .events
                .send(Err(std::io::Error::other("watch cut by the test")));
        }
    }

    /// Forgets history: watches resuming from an older resource version
    /// get `410 Gone` and must list again.
    pub fn compact(&self) {
        let mut store = self.store.lock().unwrap();
        store.compacted = store.resource_version + 1;
        store.history.clear();
    }

    /// Sends a `BOOKMARK` with the current resource version to every watch.
    pub fn bookmark(&self) {
        let mut store = self.store.lock().unwrap();
        let line = bookmark(store.resource_version, false);
        store
            .watches
            .retain(|watch| watch.events.send(Ok(Frame::data(line.clone()))).is_ok());
    }

    /// Every request so far (path and query).
    pub fn requests(&self) -> Vec<String> {
        self.store.lock().unwrap().requests.clone()
    }

    /// How many watches are open.
    pub fn open_watches(&self) -> usize {
        let mut store = self.store.lock().unwrap();
        store.watches.retain(|watch| !watch.events.is_closed());
        store.watches.len()
    }
}

impl Drop for KubeApi {
    fn drop(&mut self) {
        if let Some(server) = self.server.as_mut() {
            server.abort_all();
        }
    }
}

/// Writes a kubeconfig reaching `addr` over plain HTTP with a bearer token.
pub fn write_kubeconfig(path: &Path, addr: SocketAddr, namespace: &str) {
    let text = format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: test\n  cluster:\n    server: http://{addr}\ncontexts:\n- name: test\n  context:\n    cluster: test\n    user: test\n    namespace: {namespace}\ncurrent-context: test\nusers:\n- name: test\n  user:\n    token: test-token\n"
    );
    std::fs::write(path, text).expect("kubeconfig written");
}

impl OpenWatch {
    fn matches(&self, object: &Value) -> bool {
        object["metadata"]["namespace"] == self.namespace.as_str()
            && selected(&self.selector, object)
    }
}

fn selected(selector: &Option<(String, String)>, object: &Value) -> bool {
    selector
        .as_ref()
        .is_none_or(|(key, value)| object["metadata"]["labels"][key] == value.as_str())
}

fn event_line(kind: &str, object: &Value) -> Bytes {
    let mut line = serde_json::to_vec(&json!({ "type": kind, "object": object })).unwrap();
    line.push(b'\n');
    line.into()
}

fn bookmark(version: u64, initial_events_end: bool) -> Bytes {
    let mut metadata = json!({ "resourceVersion": version.to_string() });
    if initial_events_end {
        metadata["annotations"] = json!({ "k8s.io/initial-events-end": "true" });
    }
    event_line(
        "BOOKMARK",
        &json!({ "kind": "EndpointSlice", "apiVersion": "discovery.k8s.io/v1", "metadata": metadata }),
    )
}

fn full(status: StatusCode, body: Value) -> Response<Body> {
    Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .body(
            Full::new(Bytes::from(serde_json::to_vec(&body).unwrap()))
                .map_err(|never| match never {})
                .boxed(),
        )
        .unwrap()
}

fn status(code: u16, reason: &str, message: &str) -> Value {
    json!({
        "kind": "Status", "apiVersion": "v1", "metadata": {},
        "status": "Failure", "message": message, "reason": reason, "code": code
    })
}

fn handle(store: &Mutex<Store>, request: Request<Incoming>) -> Response<Body> {
    let uri = request.uri().clone();
    let mut store = store.lock().unwrap();
    store.requests.push(uri.to_string());
    let namespace = uri
        .path()
        .strip_prefix(SLICES)
        .and_then(|rest| rest.strip_suffix("/endpointslices"))
        .filter(|namespace| !namespace.contains('/'));
    let Some(namespace) = namespace else {
        let message = format!(
            "the server could not find the requested resource {}",
            uri.path()
        );
        return full(StatusCode::NOT_FOUND, status(404, "NotFound", &message));
    };
    let query: BTreeMap<String, String> = uri
        .query()
        .unwrap_or_default()
        .split('&')
        .filter_map(|pair| pair.split_once('='))
        .map(|(key, value)| {
            let decode = |text: &str| {
                percent_encoding::percent_decode_str(text)
                    .decode_utf8_lossy()
                    .into_owned()
            };
            (decode(key), decode(value))
        })
        .collect();
    let selector = query.get("labelSelector").and_then(|selector| {
        let (key, value) = selector.split_once('=')?;
        Some((key.to_owned(), value.to_owned()))
    });
    let items = |store: &Store| -> Vec<Value> {
        store
            .slices
            .iter()
            .filter(|((ns, _), object)| ns == namespace && selected(&selector, object))
            .map(|(_, object)| object.clone())
            .collect()
    };
    if query
        .get("watch")
        .is_none_or(|watch| watch != "true" && watch != "1")
    {
        let list = json!({
            "kind": "EndpointSliceList",
            "apiVersion": "discovery.k8s.io/v1",
            "metadata": { "resourceVersion": store.resource_version.to_string() },
            "items": items(&store),
        });
        return full(StatusCode::OK, list);
    }

    let (events, stream) = mpsc::unbounded_channel::<Chunk>();
    let send = |line: Bytes| {
        let _ = events.send(Ok(Frame::data(line)));
    };
    let from: u64 = query
        .get("resourceVersion")
        .and_then(|version| version.parse().ok())
        .unwrap_or(0);
    let mut open = true;
    if query
        .get("sendInitialEvents")
        .is_some_and(|value| value == "true")
    {
        for object in items(&store) {
            send(event_line("ADDED", &object));
        }
        send(bookmark(store.resource_version, true));
    } else if from != 0 && from < store.compacted {
        let message = format!("too old resource version: {from} ({})", store.compacted);
        send(event_line("ERROR", &status(410, "Expired", &message)));
        open = false;
    } else {
        for (version, kind, object) in &store.history {
            if *version > from
                && object["metadata"]["namespace"] == namespace
                && selected(&selector, object)
            {
                send(event_line(kind, object));
            }
        }
        if query
            .get("allowWatchBookmarks")
            .is_some_and(|value| value == "true")
        {
            send(bookmark(store.resource_version, false));
        }
    }
    if open {
        store.watches.push(OpenWatch {
            namespace: namespace.to_owned(),
            selector,
            events,
        });
    }
    let body = StreamBody::new(futures_util::stream::unfold(stream, |mut stream| async {
        stream.recv().await.map(|chunk| (chunk, stream))
    }));
    Response::builder()
        .status(StatusCode::OK)
        .header("content-type", "application/json")
        .body(BodyExt::boxed(body))
        .unwrap()
}
