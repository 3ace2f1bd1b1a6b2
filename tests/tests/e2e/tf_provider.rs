//! Real drift, end to end, with no agent and no broker: the real Terraform 1.11 runs the test
//! provider `kwobjects` (`testprovider/`, installed from a filesystem mirror) against the tests'
//! object store, and the test changes or deletes objects behind Terraform's back.
//!
//! A drift check (`plan -detailed-exitcode`) exits 2 and names exactly the object that was
//! changed (an update) or deleted (a create), reads the store without writing to it, and an
//! apply puts the object back, after which the check exits 0. A store that cannot be reached
//! is an error (exit 1) with a diagnostic saying so, never "in sync". Also: a new name replaces
//! the object, an object made outside Terraform can be imported by name, and a name that is not
//! one safe path segment is refused at validation, before the store sees a request.

use std::path::PathBuf;

use keyward_tests::broker::Output;
use keyward_tests::free_addr;
use keyward_tests::object_store::ObjectStore;
use keyward_tests::tf_provider::{ProviderMirror, SOURCE};
use serde_json::Value;
use tempfile::TempDir;

/// Two objects, so that "exactly the one that drifted" means something.
const TWO_OBJECTS: &str = r#"
resource "kwobjects_object" "a" {
  name    = "a.txt"
  content = "alpha"
}

resource "kwobjects_object" "b" {
  name    = "b.txt"
  content = "beta"
}
"#;

/// A Terraform work dir with the provider installed, its configuration `main.tf`, initialised.
struct Workspace {
    _dir: TempDir,
    work: PathBuf,
    mirror: ProviderMirror,
}

impl Workspace {
    /// `resources` with the provider pointed at `endpoint` (`var.endpoint`, from
    /// `terraform.tfvars`), after `terraform init`.
    async fn init(endpoint: &str, resources: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let mirror = ProviderMirror::install(dir.path());
        let work = dir.path().join("work");
        std::fs::create_dir(&work).unwrap();
        std::fs::write(
            work.join("main.tf"),
            format!(
                "terraform {{\n  required_providers {{\n    kwobjects = {{ source = \"{SOURCE}\" }}\n  }}\n}}\n\n\
                 variable \"endpoint\" {{\n  type = string\n}}\n\n\
                 provider \"kwobjects\" {{\n  endpoint = var.endpoint\n}}\n{resources}"
            ),
        )
        .unwrap();
        std::fs::write(work.join("terraform.tfvars"), format!("endpoint = \"{endpoint}\"\n")).unwrap();
        let workspace = Workspace { _dir: dir, work, mirror };
        workspace.ok(&["init", "-input=false"]).await;
        workspace
    }

    async fn run(&self, args: &[&str]) -> Output {
        self.mirror.terraform(&self.work, args).await
    }

    /// Runs a command that must succeed.
    async fn ok(&self, args: &[&str]) -> Output {
        let output = self.run(args).await;
        assert!(output.success, "terraform {args:?} failed:\n{}\n{}", output.stdout, output.stderr);
        output
    }

    /// A drift check: `plan -detailed-exitcode`, with its machine-readable log, saved to `out`.
    async fn drift_check(&self, out: &str) -> Output {
        self.run(&["plan", "-input=false", "-detailed-exitcode", "-json", &format!("-out={out}")]).await
    }
}

/// The `(address, action)` of each message of `kind` (`planned_change`, `resource_drift`) in
/// the JSON lines of `plan -json`, sorted.
fn changes(log: &str, kind: &str) -> Vec<(String, String)> {
    let mut changes: Vec<(String, String)> = log
        .lines()
        .filter_map(|line| serde_json::from_str::<Value>(line).ok())
        .filter(|message| message["type"] == kind)
        .map(|message| {
            let change = &message["change"];
            (change["resource"]["addr"].as_str().unwrap().to_owned(), change["action"].as_str().unwrap().to_owned())
        })
        .collect();
    changes.sort();
    changes
}

fn pair(address: &str, action: &str) -> (String, String) {
    (address.to_owned(), action.to_owned())
}

/// The resource changes of `show -json PLAN` other than no-ops.
fn resource_changes(show: &Output) -> Vec<Value> {
    let plan: Value = serde_json::from_str(&show.stdout).unwrap();
    plan["resource_changes"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|change| change["change"]["actions"] != serde_json::json!(["no-op"]))
        .cloned()
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn content_changed_behind_terraforms_back_is_exactly_one_update_and_apply_puts_it_back() {
    let store = ObjectStore::start().await;
    let tf = Workspace::init(store.endpoint(), TWO_OBJECTS).await;
    tf.ok(&["apply", "-input=false", "-auto-approve"]).await;
    assert_eq!(store.names(), ["a.txt", "b.txt"]);
    assert_eq!(store.get("a.txt").as_deref(), Some("alpha"));
    assert_eq!(store.get("b.txt").as_deref(), Some("beta"));

    store.put("b.txt", "changed behind Terraform's back");
    let before = store.requests();
    let check = tf.drift_check("drift.tfplan").await;
    assert_eq!(check.code, Some(2), "drift is exit 2:\n{}\n{}", check.stdout, check.stderr);
    assert_eq!(changes(&check.stdout, "planned_change"), [pair("kwobjects_object.b", "update")]);
    // The check read both objects and wrote nothing.
    let after = store.requests();
    assert_eq!((after.get - before.get, after.put, after.delete), (2, before.put, before.delete));

    let show = tf.ok(&["show", "-json", "drift.tfplan"]).await;
    let changed = resource_changes(&show);
    assert_eq!(changed.len(), 1, "{changed:#?}");
    assert_eq!(changed[0]["address"], "kwobjects_object.b");
    assert_eq!(changed[0]["change"]["actions"], serde_json::json!(["update"]));
    assert_eq!(changed[0]["change"]["before"]["content"], "changed behind Terraform's back");
    assert_eq!(changed[0]["change"]["after"]["content"], "beta");

    tf.ok(&["apply", "-input=false", "drift.tfplan"]).await;
    assert_eq!(store.get("b.txt").as_deref(), Some("beta"));
    assert_eq!(store.get("a.txt").as_deref(), Some("alpha"));
    let again = tf.drift_check("again.tfplan").await;
    assert_eq!(again.code, Some(0), "in sync again:\n{}\n{}", again.stdout, again.stderr);
    assert_eq!(changes(&again.stdout, "planned_change"), []);
}

#[tokio::test(flavor = "multi_thread")]
async fn an_object_deleted_behind_terraforms_back_is_planned_as_a_create() {
    let store = ObjectStore::start().await;
    let tf = Workspace::init(store.endpoint(), TWO_OBJECTS).await;
    tf.ok(&["apply", "-input=false", "-auto-approve"]).await;

    assert!(store.delete("a.txt"));
    let check = tf.drift_check("drift.tfplan").await;
    assert_eq!(check.code, Some(2), "{}\n{}", check.stdout, check.stderr);
    assert_eq!(changes(&check.stdout, "planned_change"), [pair("kwobjects_object.a", "create")]);
    assert_eq!(changes(&check.stdout, "resource_drift"), [pair("kwobjects_object.a", "delete")]);

    let puts = store.requests().put;
    tf.ok(&["apply", "-input=false", "drift.tfplan"]).await;
    assert_eq!(store.get("a.txt").as_deref(), Some("alpha"));
    assert_eq!(store.requests().put, puts + 1, "only the deleted object is written");
    assert_eq!(tf.drift_check("again.tfplan").await.code, Some(0));
}

#[tokio::test(flavor = "multi_thread")]
async fn an_unreachable_store_is_an_error_that_says_so_never_in_sync() {
    let store = ObjectStore::start().await;
    let tf = Workspace::init(store.endpoint(), TWO_OBJECTS).await;
    // A reserved loopback port nothing listens on.
    let nowhere = format!("http://{}", free_addr());
    let unreachable = format!("-var=endpoint={nowhere}");

    // An apply that cannot reach the store creates nothing, in the store or in the state.
    let apply = tf.run(&["apply", "-input=false", "-auto-approve", &unreachable]).await;
    assert_eq!(apply.code, Some(1), "{}\n{}", apply.stdout, apply.stderr);
    let detail = format!("cannot reach the object store at {nowhere}/");
    for expected in ["Error: Object store unreachable", &detail, "Connection refused"] {
        assert!(apply.stderr.contains(expected), "{expected:?} not in:\n{}", apply.stderr);
    }
    assert_eq!(store.requests().put, 0);
    let state = tf.run(&["state", "list"]).await;
    assert_eq!(state.stdout.trim(), "", "{}", state.stderr);

    // A drift check whose refresh cannot reach the store fails (1): it is neither in sync nor drift.
    tf.ok(&["apply", "-input=false", "-auto-approve"]).await;
    let check = tf.run(&["plan", "-input=false", "-detailed-exitcode", &unreachable]).await;
    assert_eq!(check.code, Some(1), "{}\n{}", check.stdout, check.stderr);
    assert!(check.stderr.contains("Error: Object store unreachable"), "{}", check.stderr);
    assert!(check.stderr.contains("with kwobjects_object."), "the diagnostic names the resource:\n{}", check.stderr);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_new_name_replaces_the_object() {
    let store = ObjectStore::start().await;
    let tf = Workspace::init(store.endpoint(), TWO_OBJECTS).await;
    tf.ok(&["apply", "-input=false", "-auto-approve"]).await;

    std::fs::write(
        tf.work.join("main.tf"),
        std::fs::read_to_string(tf.work.join("main.tf")).unwrap().replace("b.txt", "b2.txt"),
    )
    .unwrap();
    let check = tf.drift_check("rename.tfplan").await;
    assert_eq!(check.code, Some(2), "{}\n{}", check.stdout, check.stderr);
    assert_eq!(changes(&check.stdout, "planned_change"), [pair("kwobjects_object.b", "replace")]);
    tf.ok(&["apply", "-input=false", "rename.tfplan"]).await;
    assert_eq!(store.names(), ["a.txt", "b2.txt"]);
}

#[tokio::test(flavor = "multi_thread")]
async fn an_object_made_outside_terraform_is_imported_by_name() {
    let store = ObjectStore::start().await;
    let tf = Workspace::init(store.endpoint(), TWO_OBJECTS).await;
    store.put("a.txt", "alpha");

    tf.ok(&["import", "-input=false", "kwobjects_object.a", "a.txt"]).await;
    let state = tf.ok(&["state", "show", "kwobjects_object.a"]).await;
    assert!(state.stdout.contains(r#"content = "alpha""#), "{}", state.stdout);
    // Only b is left to create; a is in sync.
    let check = tf.drift_check("after-import.tfplan").await;
    assert_eq!(changes(&check.stdout, "planned_change"), [pair("kwobjects_object.b", "create")]);

    let missing = tf.run(&["import", "-input=false", "kwobjects_object.b", "b.txt"]).await;
    assert_eq!(missing.code, Some(1));
    assert!(missing.stderr.contains("Cannot import non-existent remote object"), "{}", missing.stderr);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_name_that_is_not_one_path_segment_is_refused_before_anything_runs() {
    let store = ObjectStore::start().await;
    let bad = "resource \"kwobjects_object\" \"bad\" {\n  name    = \"../escape\"\n  content = \"x\"\n}\n";
    let tf = Workspace::init(store.endpoint(), bad).await;

    let validate = tf.run(&["validate"]).await;
    assert_eq!(validate.code, Some(1), "{}\n{}", validate.stdout, validate.stderr);
    // The provider's diagnostic, pointed at the attribute's line by Terraform.
    for expected in ["Error: Invalid object name", "\"../escape\" is not an object name", "name    = \"../escape\""] {
        assert!(validate.stderr.contains(expected), "{expected:?} not in:\n{}", validate.stderr);
    }
    assert_eq!(tf.run(&["apply", "-input=false", "-auto-approve"]).await.code, Some(1));
    assert_eq!(store.requests(), Default::default(), "nothing reached the store");
}
