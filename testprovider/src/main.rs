//! `terraform-provider-kwobjects`: a small Terraform provider of Keyward's own, for tests.
//!
//! Why it exists: Keyward's drift checks (issue 19) must be tested against real drift — an
//! object changed or deleted behind Terraform's back, seen by a real `terraform plan` — and no
//! registry provider can be downloaded where the tests run. This provider manages the objects
//! of a tiny HTTP object store (`GET`/`PUT`/`DELETE {endpoint}/objects/{name}`, plain text;
//! the tests' own store is `keyward-tests`' `object_store`), with one resource type:
//!
//! ```hcl
//! provider "kwobjects" { endpoint = "http://127.0.0.1:8080" }
//! resource "kwobjects_object" "config" {
//!   name    = "config.json"   # a new name replaces the object
//!   content = "hello"
//! }
//! ```
//!
//! It speaks Terraform's plugin protocol 6.8 over gRPC (tonic), started by Terraform through
//! go-plugin with automatic mutual TLS. Map: [`plugin`] (launch, handshake, TLS server, go-plugin's
//! own services), [`tls`] (certificates), [`provider`] (the `tfplugin6.Provider` service),
//! [`resource`] (plan, apply, read, import), [`values`] and [`msgpack`] (the wire format),
//! [`store`] (the HTTP client), [`schema`], [`diagnostics`].

mod diagnostics;
mod msgpack;
mod plugin;
mod provider;
mod resource;
mod schema;
mod store;
mod tls;
mod values;

use std::process::ExitCode;

/// Terraform's plugin protocol 6.8 (`proto/tfplugin6/tfplugin6.8.proto`, from Terraform 1.11.4).
mod tfplugin6 {
    #![allow(unreachable_pub, missing_docs, dead_code, clippy::all, clippy::pedantic)]
    tonic::include_proto!("tfplugin6");
}

/// go-plugin's controller and stdio services (`proto/plugin/`, from go-plugin 1.6.0).
mod go_plugin {
    #![allow(unreachable_pub, missing_docs, dead_code, clippy::all, clippy::pedantic)]
    tonic::include_proto!("plugin");
}

fn main() -> ExitCode {
    let launch = match plugin::Launch::from_env(|key| std::env::var(key).ok()) {
        Ok(launch) => launch,
        Err(error) => {
            eprintln!("terraform-provider-kwobjects: {error}");
            return ExitCode::FAILURE;
        }
    };
    let served = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| e.to_string())
        .and_then(|runtime| runtime.block_on(plugin::serve(launch)).map_err(|e| e.to_string()));
    match served {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("terraform-provider-kwobjects: {error}");
            ExitCode::FAILURE
        }
    }
}
