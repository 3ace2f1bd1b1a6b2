//! `ObjectStore`: the tiny HTTP object store that the test provider `kwobjects`
//! (`testprovider/`) manages, so a test can make real drift — change or delete an object behind
//! Terraform's back — and watch a real `terraform plan` find it.
//!
//! `PUT`, `GET` and `DELETE /objects/{name}` with plain-text bodies (404 for a missing object),
//! on a loopback port of its own. The test reads and changes the objects directly
//! ([`ObjectStore::put`], [`ObjectStore::delete`]) and counts the requests Terraform made
//! ([`ObjectStore::requests`]), e.g. that a drift check wrote nothing.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, PoisonError};

use axum::Router;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;

/// How many requests of each kind the store answered (whatever the answer).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Requests {
    /// `GET`s: Terraform's reads (refresh, import).
    pub get: usize,
    /// `PUT`s: creates and updates.
    pub put: usize,
    /// `DELETE`s.
    pub delete: usize,
}

#[derive(Debug, Default)]
struct Contents {
    objects: BTreeMap<String, String>,
    requests: Requests,
}

type Shared = Arc<Mutex<Contents>>;

/// A running store; stops when dropped.
#[allow(missing_debug_implementations)]
pub struct ObjectStore {
    endpoint: String,
    contents: Shared,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for ObjectStore {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl ObjectStore {
    /// Starts an empty store on a free loopback port.
    pub async fn start() -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind the object store");
        let endpoint = format!("http://{}", listener.local_addr().expect("the object store's address"));
        let contents = Shared::default();
        let app = Router::new()
            .route("/objects/{name}", get(read).put(write).delete(remove))
            .with_state(Arc::clone(&contents));
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        ObjectStore { endpoint, contents, task }
    }

    /// `http://127.0.0.1:PORT`, the provider's `endpoint`.
    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    /// Object `name`'s content, if the store has it.
    pub fn get(&self, name: &str) -> Option<String> {
        self.lock().objects.get(name).cloned()
    }

    /// Creates or replaces object `name` behind Terraform's back (not counted as a request).
    pub fn put(&self, name: &str, content: &str) {
        self.lock().objects.insert(name.to_owned(), content.to_owned());
    }

    /// Deletes object `name` behind Terraform's back; whether it was there.
    pub fn delete(&self, name: &str) -> bool {
        self.lock().objects.remove(name).is_some()
    }

    /// The names of the objects the store holds, sorted.
    pub fn names(&self) -> Vec<String> {
        self.lock().objects.keys().cloned().collect()
    }

    /// The requests answered so far.
    pub fn requests(&self) -> Requests {
        self.lock().requests
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Contents> {
        self.contents.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

async fn read(State(contents): State<Shared>, Path(name): Path<String>) -> Response {
    let mut contents = contents.lock().unwrap_or_else(PoisonError::into_inner);
    contents.requests.get += 1;
    match contents.objects.get(&name) {
        Some(content) => ([("content-type", "text/plain; charset=utf-8")], content.clone()).into_response(),
        None => StatusCode::NOT_FOUND.into_response(),
    }
}

async fn write(State(contents): State<Shared>, Path(name): Path<String>, body: String) -> StatusCode {
    let mut contents = contents.lock().unwrap_or_else(PoisonError::into_inner);
    contents.requests.put += 1;
    contents.objects.insert(name, body);
    StatusCode::NO_CONTENT
}

async fn remove(State(contents): State<Shared>, Path(name): Path<String>) -> StatusCode {
    let mut contents = contents.lock().unwrap_or_else(PoisonError::into_inner);
    contents.requests.delete += 1;
    match contents.objects.remove(&name) {
        Some(_) => StatusCode::NO_CONTENT,
        None => StatusCode::NOT_FOUND,
    }
}
