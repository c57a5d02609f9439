//! A scripted Kubernetes API server behind kube's mock service (tower-test), for tests: it
//! answers lists from per-path object sets, holds watches open until a test sends events, and
//! answers TokenReviews and status patches. No API server runs on these machines.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex, PoisonError},
    time::Duration,
};

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt as _, Full};
use serde_json::{json, Value};
use tower_test::mock::SendResponse;

/// Where one answer goes: back through kube's mock service, or to an HTTP connection.
enum Reply {
    Mock(SendResponse<Response<Full<Bytes>>>),
    Http(tokio::sync::oneshot::Sender<Response<Full<Bytes>>>),
}

impl Reply {
    fn send_response(self, response: Response<Full<Bytes>>) {
        match self {
            Self::Mock(reply) => reply.send_response(response),
            Self::Http(reply) => {
                let _ = reply.send(response);
            }
        }
    }
}

/// One request the fake answered.
#[derive(Clone, Debug)]
pub struct Seen {
    pub method: Method,
    pub path: String,
    pub query: String,
    pub body: Value,
    pub at: std::time::Instant,
}

#[derive(Default)]
struct State {
    lists: HashMap<String, Vec<Value>>,
    /// Single objects a `GET` of their exact path answers.
    objects: HashMap<String, Value>,
    watches: HashMap<String, Vec<Reply>>,
    seen: Vec<Seen>,
    version: u64,
    token_review: Value,
    /// How many status patches to answer 503 before accepting them.
    failing_patches: u32,
    /// Paths whose lists wait for [`FakeApi::release_lists`].
    holding_lists: Vec<String>,
    held_lists: Vec<(String, Reply)>,
}

impl State {
    fn list(&mut self, path: &str) -> Response<Full<Bytes>> {
        self.version += 1;
        let items = self.lists.get(path).cloned().unwrap_or_default();
        let list = json!({
            "apiVersion": "v1",
            "kind": "List",
            "metadata": {"resourceVersion": self.version.to_string()},
            "items": items,
        });
        json_response(StatusCode::OK, &list)
    }
}

/// A request body, whole (an unreadable one reads as empty).
async fn collect<B: hyper::body::Body>(body: B) -> Bytes {
    body.collect()
        .await
        .map(http_body_util::Collected::to_bytes)
        .unwrap_or_default()
}

fn status_response(code: StatusCode, message: &str) -> Response<Full<Bytes>> {
    json_response(
        code,
        &json!({"apiVersion": "v1", "kind": "Status", "status": "Failure", "message": message,
                "reason": "InternalError", "code": code.as_u16()}),
    )
}

/// The fake; clone it freely, all clones share one state. `FakeApi::default()` has no client
/// of its own: serve it over HTTP with [`FakeApi::serve_http`].
#[derive(Clone, Default)]
pub struct FakeApi {
    state: Arc<Mutex<State>>,
}

impl std::fmt::Debug for FakeApi {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("FakeApi")
    }
}

fn json_response(status: StatusCode, body: &Value) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body.to_string())));
    *response.status_mut() = status;
    response.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    response
}

impl FakeApi {
    /// A kube client wired to a new fake, and the fake.
    pub fn start() -> (kube::Client, Self) {
        let (service, mut handle) =
            tower_test::mock::pair::<Request<kube::client::Body>, Response<Full<Bytes>>>();
        let fake = Self {
            state: Arc::default(),
        };
        let serving = fake.clone();
        tokio::spawn(async move {
            while let Some((request, reply)) = handle.next_request().await {
                let (parts, body) = request.into_parts();
                serving.answer(&parts, &collect(body).await, Reply::Mock(reply));
            }
        });
        (kube::Client::new(service, "default"), fake)
    }

    /// Answers HTTP/1.1 requests on `listener` as an API server would, for a real agent
    /// process (a kubeconfig naming `http://<address>`). Runs until the runtime stops.
    pub fn serve_http(&self, listener: tokio::net::TcpListener) {
        let fake = self.clone();
        tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    continue;
                };
                let fake = fake.clone();
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(
                        move |request: Request<hyper::body::Incoming>| {
                            let fake = fake.clone();
                            async move {
                                let (parts, body) = request.into_parts();
                                let (tx, rx) = tokio::sync::oneshot::channel();
                                fake.answer(&parts, &collect(body).await, Reply::Http(tx));
                                let response = rx.await.unwrap_or_else(|_| {
                                    status_response(StatusCode::GONE, "the fake stopped")
                                });
                                Ok::<_, std::convert::Infallible>(response)
                            }
                        },
                    );
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(tcp), service)
                        .await;
                });
            }
        });
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn answer(&self, request: &http::request::Parts, bytes: &Bytes, reply: Reply) {
        let method = request.method.clone();
        let path = request.uri.path().to_owned();
        let query = request.uri.query().unwrap_or_default().to_owned();
        let body: Value = serde_json::from_slice(bytes).unwrap_or(Value::Null);
        let mut state = self.lock();
        state.seen.push(Seen {
            method: method.clone(),
            path: path.clone(),
            query: query.clone(),
            body: body.clone(),
            at: std::time::Instant::now(),
        });
        if method == Method::GET && state.objects.contains_key(&path) {
            let object = state.objects[&path].clone();
            reply.send_response(json_response(StatusCode::OK, &object));
        } else if method == Method::POST && path.ends_with("/tokenreviews") {
            let mut review = body;
            review["status"] = state.token_review.clone();
            reply.send_response(json_response(StatusCode::CREATED, &review));
        } else if method == Method::PATCH && state.failing_patches > 0 {
            state.failing_patches -= 1;
            reply.send_response(status_response(
                StatusCode::SERVICE_UNAVAILABLE,
                "the API server is unavailable",
            ));
        } else if method == Method::PATCH {
            let name = path.split('/').rev().nth(1).unwrap_or_default().to_owned();
            reply.send_response(json_response(
                StatusCode::OK,
                &json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name}}),
            ));
        } else if query
            .split('&')
            .any(|q| q == "watch=true" || q == "watch=1")
        {
            state.watches.entry(path).or_default().push(reply);
        } else if state.holding_lists.contains(&path) {
            state.held_lists.push((path, reply));
        } else {
            reply.send_response(state.list(&path));
        }
    }

    /// Sets what a list of `path` returns (the next relist sees it).
    pub fn set_list(&self, path: &str, items: Vec<Value>) {
        self.lock().lists.insert(path.into(), items);
    }

    /// What a `GET` of exactly `path` answers (one object, not a list).
    pub fn set_object(&self, path: &str, object: Value) {
        self.lock().objects.insert(path.into(), object);
    }

    /// What TokenReviews answer (`status`).
    pub fn set_token_review(&self, status: Value) {
        self.lock().token_review = status;
    }

    /// Answers the next `count` status patches with 503.
    pub fn fail_patches(&self, count: u32) {
        self.lock().failing_patches = count;
    }

    /// Lists of `path` wait, unanswered, until [`Self::release_lists`].
    pub fn hold_lists(&self, path: &str) {
        self.lock().holding_lists.push(path.into());
    }

    /// How many lists of `path` are waiting.
    pub fn held_lists(&self, path: &str) -> usize {
        self.lock()
            .held_lists
            .iter()
            .filter(|(p, _)| p == path)
            .count()
    }

    /// Answers the held lists of `path` with its current objects, and stops holding.
    pub fn release_lists(&self, path: &str) {
        let mut state = self.lock();
        state.holding_lists.retain(|p| p != path);
        let (released, kept): (Vec<_>, Vec<_>) = std::mem::take(&mut state.held_lists)
            .into_iter()
            .partition(|(p, _)| p == path);
        state.held_lists = kept;
        for (_, reply) in released {
            let response = state.list(path);
            reply.send_response(response);
        }
    }

    pub fn seen(&self) -> Vec<Seen> {
        self.lock().seen.clone()
    }

    /// Waits (up to 10 s) for a watch on `path`, then answers it with `lines`.
    async fn send_watch(&self, path: &str, lines: &[Value]) {
        let body: String = lines.iter().map(|l| l.to_string() + "\n").collect();
        let mut response = Response::new(Full::new(Bytes::from(body)));
        response.headers_mut().insert(
            http::header::CONTENT_TYPE,
            http::HeaderValue::from_static("application/json"),
        );
        self.answer_watch(path, response).await;
    }

    /// Waits (up to 10 s) for a watch on `path`, then answers it with `response`.
    async fn answer_watch(&self, path: &str, response: Response<Full<Bytes>>) {
        for _ in 0..1000 {
            let reply = self.lock().watches.get_mut(path).and_then(Vec::pop);
            if let Some(reply) = reply {
                reply.send_response(response);
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("nobody watched {path} within 10 s");
    }

    /// Fails the watch on `path` with a 500, as an API server restarting would; returns when.
    pub async fn fail_watch(&self, path: &str) -> std::time::Instant {
        self.answer_watch(
            path,
            status_response(StatusCode::INTERNAL_SERVER_ERROR, "etcd leader changed"),
        )
        .await;
        std::time::Instant::now()
    }

    /// The resourceVersion of the last event sent or list answered.
    pub fn version(&self) -> u64 {
        self.lock().version
    }

    /// Sends one watch event (`ADDED`, `MODIFIED`, `DELETED`) and keeps the list in step.
    pub async fn event(&self, path: &str, kind: &str, mut object: Value) {
        let version = {
            let mut state = self.lock();
            state.version += 1;
            state.version
        };
        object["metadata"]["resourceVersion"] = json!(version.to_string());
        {
            let mut state = self.lock();
            let list = state.lists.entry(path.into()).or_default();
            let same = |o: &Value| {
                o["metadata"]["name"] == object["metadata"]["name"]
                    && o["metadata"]["namespace"] == object["metadata"]["namespace"]
            };
            list.retain(|o| !same(o));
            if kind != "DELETED" {
                list.push(object.clone());
            }
        }
        self.send_watch(path, &[json!({"type": kind, "object": object})])
            .await;
    }

    /// Ends the watch on `path` with 410 Gone: the client must relist.
    pub async fn expire(&self, path: &str) {
        let gone = json!({"type": "ERROR", "object": {"apiVersion": "v1", "kind": "Status", "status": "Failure", "message": "too old resource version", "reason": "Expired", "code": 410}});
        self.send_watch(path, &[gone]).await;
    }
}
