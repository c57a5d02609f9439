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

type Reply = SendResponse<Response<Full<Bytes>>>;

/// One request the fake answered.
#[derive(Clone, Debug)]
pub struct Seen {
    pub method: Method,
    pub path: String,
    pub query: String,
    pub body: Value,
}

#[derive(Default)]
struct State {
    lists: HashMap<String, Vec<Value>>,
    watches: HashMap<String, Vec<Reply>>,
    seen: Vec<Seen>,
    version: u64,
    token_review: Value,
}

/// The fake; clone it freely, all clones share one state.
#[derive(Clone)]
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
                serving.answer(request, reply).await;
            }
        });
        (kube::Client::new(service, "default"), fake)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    async fn answer(&self, request: Request<kube::client::Body>, reply: Reply) {
        let method = request.method().clone();
        let path = request.uri().path().to_owned();
        let query = request.uri().query().unwrap_or_default().to_owned();
        let bytes = request
            .into_body()
            .collect()
            .await
            .map(http_body_util::Collected::to_bytes)
            .unwrap_or_default();
        let body: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        let mut state = self.lock();
        state.seen.push(Seen {
            method: method.clone(),
            path: path.clone(),
            query: query.clone(),
            body: body.clone(),
        });
        if method == Method::POST && path.ends_with("/tokenreviews") {
            let mut review = body;
            review["status"] = state.token_review.clone();
            reply.send_response(json_response(StatusCode::CREATED, &review));
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
        } else {
            state.version += 1;
            let items = state.lists.get(&path).cloned().unwrap_or_default();
            let list = json!({
                "apiVersion": "v1",
                "kind": "List",
                "metadata": {"resourceVersion": state.version.to_string()},
                "items": items,
            });
            reply.send_response(json_response(StatusCode::OK, &list));
        }
    }

    /// Sets what a list of `path` returns (the next relist sees it).
    pub fn set_list(&self, path: &str, items: Vec<Value>) {
        self.lock().lists.insert(path.into(), items);
    }

    /// What TokenReviews answer (`status`).
    pub fn set_token_review(&self, status: Value) {
        self.lock().token_review = status;
    }

    pub fn seen(&self) -> Vec<Seen> {
        self.lock().seen.clone()
    }

    /// Waits (up to 10 s) for a watch on `path`, then answers it with `lines`.
    async fn send_watch(&self, path: &str, lines: &[Value]) {
        for _ in 0..1000 {
            let reply = self.lock().watches.get_mut(path).and_then(Vec::pop);
            if let Some(reply) = reply {
                let body: String = lines.iter().map(|l| l.to_string() + "\n").collect();
                let mut response = Response::new(Full::new(Bytes::from(body)));
                response.headers_mut().insert(
                    http::header::CONTENT_TYPE,
                    http::HeaderValue::from_static("application/json"),
                );
                reply.send_response(response);
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("nobody watched {path} within 10 s");
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
