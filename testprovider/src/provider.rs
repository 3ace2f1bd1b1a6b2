//! The `tfplugin6.Provider` gRPC service: decodes each request, hands it to [`resource`] or the
//! provider's configuration, and encodes the answer. Problems travel as diagnostics inside the
//! response (Terraform prints those); a gRPC error status is kept for RPCs Terraform never sends
//! to a provider without data sources, ephemeral resources or functions.

use std::sync::{Mutex, PoisonError};

use tonic::{Request, Response, Status};

use crate::diagnostics;
use crate::resource;
use crate::schema;
use crate::store::Store;
use crate::tfplugin6::provider_server::Provider;
use crate::tfplugin6::{
    Diagnostic, DynamicValue, ServerCapabilities, apply_resource_change, call_function, close_ephemeral_resource,
    configure_provider, get_functions, get_metadata, get_provider_schema, import_resource_state, move_resource_state,
    open_ephemeral_resource, plan_resource_change, read_data_source, read_resource, renew_ephemeral_resource,
    stop_provider, upgrade_resource_state, validate_data_resource_config, validate_ephemeral_resource_config,
    validate_provider_config, validate_resource_config,
};
use crate::values::{Object, ProviderConfig};

/// The provider: the store its `ConfigureProvider` named, once it has.
#[derive(Debug, Default)]
pub(crate) struct KwObjects {
    store: Mutex<Option<Store>>,
}

type Answer<T> = Result<Response<T>, Status>;

impl KwObjects {
    fn store(&self) -> Result<Store, Diagnostic> {
        let store = self.store.lock().unwrap_or_else(PoisonError::into_inner).clone();
        store.ok_or_else(|| {
            diagnostics::error(
                "Provider not configured",
                "The kwobjects provider has no object store yet: its endpoint is unknown until apply.".to_owned(),
            )
        })
    }
}

/// What the provider supports beyond the protocol's minimum: nothing (Terraform must ask for
/// the schema, and plans no destroys with the provider).
fn capabilities() -> Option<ServerCapabilities> {
    Some(ServerCapabilities { plan_destroy: false, get_provider_schema_optional: false, move_resource_state: false })
}

/// `type_name` is `kwobjects_object`, or the diagnostic saying it is not.
fn check_type(type_name: &str) -> Result<(), Diagnostic> {
    if type_name == schema::OBJECT { Ok(()) } else { Err(diagnostics::unknown_type(type_name)) }
}

/// The object in `value`, or the diagnostic naming `what` it was.
fn object(value: Option<&DynamicValue>, what: &str) -> Result<Option<Object>, Diagnostic> {
    Object::decode(value).map_err(|e| diagnostics::value(what, &e))
}

#[tonic::async_trait]
impl Provider for KwObjects {
    async fn get_metadata(&self, _request: Request<get_metadata::Request>) -> Answer<get_metadata::Response> {
        Ok(Response::new(get_metadata::Response {
            server_capabilities: capabilities(),
            resources: vec![get_metadata::ResourceMetadata { type_name: schema::OBJECT.to_owned() }],
            ..get_metadata::Response::default()
        }))
    }

    async fn get_provider_schema(
        &self,
        _request: Request<get_provider_schema::Request>,
    ) -> Answer<get_provider_schema::Response> {
        Ok(Response::new(get_provider_schema::Response {
            provider: Some(schema::provider()),
            resource_schemas: [(schema::OBJECT.to_owned(), schema::object())].into(),
            server_capabilities: capabilities(),
            ..get_provider_schema::Response::default()
        }))
    }

    async fn validate_provider_config(
        &self,
        request: Request<validate_provider_config::Request>,
    ) -> Answer<validate_provider_config::Response> {
        let diagnostics = match ProviderConfig::decode(request.get_ref().config.as_ref()) {
            Err(error) => vec![diagnostics::value("provider configuration", &error)],
            Ok(config) => match config.as_ref().and_then(|c| c.endpoint.known()).map(Store::new) {
                Some(Err(error)) => vec![diagnostics::endpoint(&error)],
                Some(Ok(_)) | None => Vec::new(),
            },
        };
        Ok(Response::new(validate_provider_config::Response { diagnostics }))
    }

    async fn configure_provider(
        &self,
        request: Request<configure_provider::Request>,
    ) -> Answer<configure_provider::Response> {
        let store = match ProviderConfig::decode(request.get_ref().config.as_ref()) {
            Err(error) => Err(diagnostics::value("provider configuration", &error)),
            Ok(config) => match config.as_ref().and_then(|c| c.endpoint.known()) {
                // Unknown until apply: RPCs that need the store say so.
                None => Ok(None),
                Some(endpoint) => Store::new(endpoint).map(Some).map_err(|e| diagnostics::endpoint(&e)),
            },
        };
        let diagnostics = match store {
            Ok(store) => {
                *self.store.lock().unwrap_or_else(PoisonError::into_inner) = store;
                Vec::new()
            }
            Err(diagnostic) => vec![diagnostic],
        };
        Ok(Response::new(configure_provider::Response { diagnostics }))
    }

    async fn validate_resource_config(
        &self,
        request: Request<validate_resource_config::Request>,
    ) -> Answer<validate_resource_config::Response> {
        let request = request.into_inner();
        let diagnostics =
            check_type(&request.type_name).and_then(|()| object(request.config.as_ref(), "configuration")).map_or_else(
                |diagnostic| vec![diagnostic],
                |config| config.map(|c| resource::validate(&c)).unwrap_or_default(),
            );
        Ok(Response::new(validate_resource_config::Response { diagnostics }))
    }

    async fn upgrade_resource_state(
        &self,
        request: Request<upgrade_resource_state::Request>,
    ) -> Answer<upgrade_resource_state::Response> {
        let request = request.into_inner();
        let json = request.raw_state.map(|raw| raw.json).unwrap_or_default();
        let upgraded = check_type(&request.type_name).and_then(|()| {
            if request.version != 0 || json.is_empty() {
                return Err(diagnostics::error(
                    "Unsupported state",
                    format!("Only JSON states of schema version 0 can be read, not version {}.", request.version),
                ));
            }
            Object::from_state_json(&json).map_err(|e| diagnostics::value("stored state", &e))
        });
        Ok(Response::new(match upgraded {
            Ok(state) => upgrade_resource_state::Response {
                upgraded_state: Some(Object::encode(state.as_ref())),
                diagnostics: Vec::new(),
            },
            Err(diagnostic) => upgrade_resource_state::Response { upgraded_state: None, diagnostics: vec![diagnostic] },
        }))
    }

    async fn read_resource(&self, request: Request<read_resource::Request>) -> Answer<read_resource::Response> {
        let request = request.into_inner();
        let current = request.current_state;
        let read = async {
            check_type(&request.type_name)?;
            let prior = object(current.as_ref(), "current state")?;
            resource::read(&self.store()?, prior).await
        };
        Ok(Response::new(match read.await {
            Ok(state) => read_resource::Response {
                new_state: Some(Object::encode(state.as_ref())),
                private: request.private,
                ..read_resource::Response::default()
            },
            // The state stays as it was.
            Err(diagnostic) => read_resource::Response {
                new_state: current,
                private: request.private,
                diagnostics: vec![diagnostic],
                deferred: None,
            },
        }))
    }

    async fn plan_resource_change(
        &self,
        request: Request<plan_resource_change::Request>,
    ) -> Answer<plan_resource_change::Response> {
        let request = request.into_inner();
        let plan = check_type(&request.type_name).and_then(|()| {
            let prior = object(request.prior_state.as_ref(), "prior state")?;
            let proposed = object(request.proposed_new_state.as_ref(), "proposed new state")?;
            Ok(resource::plan(prior.as_ref(), proposed))
        });
        Ok(Response::new(match plan {
            Ok(plan) => plan_resource_change::Response {
                planned_state: Some(Object::encode(plan.planned.as_ref())),
                requires_replace: plan.requires_replace,
                planned_private: request.prior_private,
                ..plan_resource_change::Response::default()
            },
            Err(diagnostic) => plan_resource_change::Response {
                diagnostics: vec![diagnostic],
                ..plan_resource_change::Response::default()
            },
        }))
    }

    async fn apply_resource_change(
        &self,
        request: Request<apply_resource_change::Request>,
    ) -> Answer<apply_resource_change::Response> {
        let request = request.into_inner();
        let prior_state = request.prior_state;
        let applied = async {
            check_type(&request.type_name)?;
            let prior = object(prior_state.as_ref(), "prior state")?;
            let planned = object(request.planned_state.as_ref(), "planned state")?;
            resource::apply(&self.store()?, prior.as_ref(), planned.as_ref()).await
        };
        Ok(Response::new(match applied.await {
            Ok(state) => apply_resource_change::Response {
                new_state: Some(Object::encode(state.as_ref())),
                private: request.planned_private,
                ..apply_resource_change::Response::default()
            },
            // Nothing changed: Terraform keeps the prior state.
            Err(diagnostic) => apply_resource_change::Response {
                new_state: prior_state,
                diagnostics: vec![diagnostic],
                ..apply_resource_change::Response::default()
            },
        }))
    }

    async fn import_resource_state(
        &self,
        request: Request<import_resource_state::Request>,
    ) -> Answer<import_resource_state::Response> {
        let request = request.into_inner();
        let imported = check_type(&request.type_name).map_err(|d| vec![d]).and_then(|()| resource::import(&request.id));
        Ok(Response::new(match imported {
            Ok(object) => import_resource_state::Response {
                imported_resources: vec![import_resource_state::ImportedResource {
                    type_name: request.type_name,
                    state: Some(Object::encode(Some(&object))),
                    private: Vec::new(),
                }],
                ..import_resource_state::Response::default()
            },
            Err(diagnostics) => {
                import_resource_state::Response { diagnostics, ..import_resource_state::Response::default() }
            }
        }))
    }

    async fn stop_provider(&self, _request: Request<stop_provider::Request>) -> Answer<stop_provider::Response> {
        // Requests end on their own within the store client's timeout; nothing to interrupt.
        Ok(Response::new(stop_provider::Response::default()))
    }

    async fn get_functions(&self, _request: Request<get_functions::Request>) -> Answer<get_functions::Response> {
        Ok(Response::new(get_functions::Response::default()))
    }

    async fn validate_data_resource_config(
        &self,
        request: Request<validate_data_resource_config::Request>,
    ) -> Answer<validate_data_resource_config::Response> {
        let diagnostics = vec![diagnostics::unknown_type(&request.get_ref().type_name)];
        Ok(Response::new(validate_data_resource_config::Response { diagnostics }))
    }

    async fn validate_ephemeral_resource_config(
        &self,
        request: Request<validate_ephemeral_resource_config::Request>,
    ) -> Answer<validate_ephemeral_resource_config::Response> {
        let diagnostics = vec![diagnostics::unknown_type(&request.get_ref().type_name)];
        Ok(Response::new(validate_ephemeral_resource_config::Response { diagnostics }))
    }

    async fn move_resource_state(
        &self,
        _request: Request<move_resource_state::Request>,
    ) -> Answer<move_resource_state::Response> {
        Err(Status::unimplemented("kwobjects does not move resource states"))
    }

    async fn read_data_source(
        &self,
        _request: Request<read_data_source::Request>,
    ) -> Answer<read_data_source::Response> {
        Err(Status::unimplemented("kwobjects has no data sources"))
    }

    async fn open_ephemeral_resource(
        &self,
        _request: Request<open_ephemeral_resource::Request>,
    ) -> Answer<open_ephemeral_resource::Response> {
        Err(Status::unimplemented("kwobjects has no ephemeral resources"))
    }

    async fn renew_ephemeral_resource(
        &self,
        _request: Request<renew_ephemeral_resource::Request>,
    ) -> Answer<renew_ephemeral_resource::Response> {
        Err(Status::unimplemented("kwobjects has no ephemeral resources"))
    }

    async fn close_ephemeral_resource(
        &self,
        _request: Request<close_ephemeral_resource::Request>,
    ) -> Answer<close_ephemeral_resource::Response> {
        Err(Status::unimplemented("kwobjects has no ephemeral resources"))
    }

    async fn call_function(&self, _request: Request<call_function::Request>) -> Answer<call_function::Response> {
        Err(Status::unimplemented("kwobjects has no functions"))
    }
}
