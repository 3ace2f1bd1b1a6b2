//! GitHub's published REST API description (`@octokit/openapi`'s
//! `generated/api.github.com.json`, pinned in tests/npm), loaded once per process, and the checks
//! [`super::FakeGithub`] makes with it: which operation a request is, whether its path and query
//! parameters and JSON body match that operation's schemas, and whether the fake's own answers
//! match the response schemas.
//!
//! The schema checks are the subset of OpenAPI 3.0 the description uses for these operations:
//! `$ref`, `type` (also as a list) with `nullable`, `enum`, `required`, `properties`,
//! `additionalProperties`, `items`, `minLength`/`maxLength`, `minimum`/`maximum`,
//! `minItems`/`maxItems`, `oneOf`/`anyOf`/`allOf`. `format` and `pattern` are not checked.

use std::sync::OnceLock;

use serde_json::Value;

/// The description, parsed, with its operations indexed by path template.
#[allow(missing_debug_implementations)]
pub struct Description {
    root: Value,
    operations: Vec<Operation>,
}

struct Operation {
    method: String,
    template: String,
    segments: Vec<Segment>,
}

enum Segment {
    Literal(String),
    Param(String),
}

/// An operation a request matched, with its path parameters' values.
#[allow(missing_debug_implementations)]
pub struct Matched<'a> {
    /// The path template, e.g. `/repos/{owner}/{repo}/statuses/{sha}`.
    pub template: &'a str,
    /// The path parameters by name.
    pub params: Vec<(String, String)>,
    operation: &'a Value,
    path_item: &'a Value,
}

impl Matched<'_> {
    /// The value of path parameter `name`.
    pub fn param(&self, name: &str) -> &str {
        self.params.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str()).unwrap_or_default()
    }
}

/// The description, read on first use (tens of MB: once per process).
pub fn description() -> &'static Description {
    static DESCRIPTION: OnceLock<Description> = OnceLock::new();
    DESCRIPTION.get_or_init(|| {
        let file =
            crate::github_webhooks::npm_dir().join("node_modules/@octokit/openapi/generated/api.github.com.json");
        let bytes = std::fs::read(&file).unwrap_or_else(|e| {
            panic!("{}: {e} (run scripts/install-test-peers: @octokit/openapi is pinned in tests/npm)", file.display())
        });
        Description::new(serde_json::from_slice(&bytes).expect("the OpenAPI description is JSON"))
    })
}

impl Description {
    fn new(root: Value) -> Self {
        let mut operations = Vec::new();
        for (template, item) in root["paths"].as_object().expect("paths").iter() {
            for method in ["get", "put", "post", "delete", "options", "head", "patch", "trace"] {
                if item.get(method).is_some() {
                    let segments = template
                        .split('/')
                        .skip(1)
                        .map(|s| match s.strip_prefix('{').and_then(|s| s.strip_suffix('}')) {
                            Some(name) => Segment::Param(name.to_owned()),
                            None => Segment::Literal(s.to_owned()),
                        })
                        .collect();
                    operations.push(Operation { method: method.to_owned(), template: template.clone(), segments });
                }
            }
        }
        Self { root, operations }
    }

    /// The value `schema` stands for, following `$ref`s within the description.
    pub fn resolve<'a>(&'a self, mut value: &'a Value) -> &'a Value {
        for _ in 0..32 {
            match value.get("$ref").and_then(Value::as_str).and_then(|r| r.strip_prefix('#')) {
                Some(pointer) => value = self.root.pointer(pointer).unwrap_or(&Value::Null),
                None => return value,
            }
        }
        value
    }

    /// The example `name` of `components/examples`, as a starting point for a realistic answer.
    pub fn example(&self, name: &str) -> Value {
        let example = self.resolve(&self.root["components"]["examples"][name]);
        assert!(!example.is_null(), "no example {name} in the OpenAPI description");
        example["value"].clone()
    }

    /// The operation `method` `path` is, or why none is.
    pub fn find(&self, method: &str, path: &str) -> Result<Matched<'_>, String> {
        let method = method.to_ascii_lowercase();
        let parts: Vec<&str> = path.split('/').skip(1).collect();
        let mut best: Option<(&Operation, usize)> = None;
        let mut other_method = false;
        for operation in &self.operations {
            if operation.segments.len() != parts.len() {
                continue;
            }
            let mut literals = 0;
            let fits = operation.segments.iter().zip(&parts).all(|(segment, part)| match segment {
                Segment::Literal(l) => {
                    literals += 1;
                    l == part
                }
                Segment::Param(_) => !part.is_empty(),
            });
            if !fits {
                continue;
            }
            if operation.method != method {
                other_method = true;
                continue;
            }
            if best.is_none_or(|(_, n)| literals > n) {
                best = Some((operation, literals));
            }
        }
        let Some((operation, _)) = best else {
            return Err(match other_method {
                true => format!("{} is not an operation of {path} in GitHub's REST API", method.to_uppercase()),
                false => format!("{path} is no path of GitHub's REST API"),
            });
        };
        let params = operation
            .segments
            .iter()
            .zip(&parts)
            .filter_map(|(segment, part)| match segment {
                Segment::Param(name) => Some((name.clone(), (*part).to_owned())),
                Segment::Literal(_) => None,
            })
            .collect();
        let path_item = &self.root["paths"][&operation.template];
        Ok(Matched { template: &operation.template, params, operation: &path_item[&method], path_item })
    }

    /// What is wrong with a request for `matched`: its path and query parameters and its body.
    pub fn check_request(
        &self,
        matched: &Matched<'_>,
        query: &[(String, String)],
        body: Option<&Value>,
    ) -> Vec<String> {
        let mut errors = Vec::new();
        let declared: Vec<&Value> = [&matched.path_item["parameters"], &matched.operation["parameters"]]
            .into_iter()
            .filter_map(Value::as_array)
            .flatten()
            .map(|p| self.resolve(p))
            .collect();
        for parameter in &declared {
            let name = parameter["name"].as_str().unwrap_or_default();
            let value = match parameter["in"].as_str() {
                Some("path") => Some(matched.param(name)),
                Some("query") => query.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str()),
                _ => continue,
            };
            match value {
                None if parameter["required"] == true => {
                    errors.push(format!("required query parameter {name} is missing"))
                }
                None => {}
                Some(text) => self.check_parameter(&parameter["schema"], text, name, &mut errors),
            }
        }
        for (name, _) in query {
            let documented = declared.iter().any(|p| p["in"] == "query" && p["name"].as_str() == Some(name.as_str()));
            if !documented {
                errors.push(format!("query parameter {name} is not documented for {}", matched.template));
            }
        }
        let request_body = self.resolve(&matched.operation["requestBody"]);
        match (request_body.is_null(), body) {
            (true, Some(_)) => errors.push(format!("{} takes no request body", matched.template)),
            (true, None) => {}
            (false, None) if request_body["required"] == true => errors.push("a request body is required".to_owned()),
            (false, None) => {}
            (false, Some(body)) => {
                let schema = &request_body["content"]["application/json"]["schema"];
                self.validate(schema, body, "body", &mut errors);
            }
        }
        errors
    }

    /// What is wrong with the fake's own answer `body` with `status` for `matched`.
    pub fn check_response(&self, matched: &Matched<'_>, status: u16, body: &Value) -> Vec<String> {
        let response = self.resolve(&matched.operation["responses"][status.to_string()]);
        if response.is_null() {
            return vec![format!("status {status} is not a documented answer of {}", matched.template)];
        }
        let mut errors = Vec::new();
        let schema = &response["content"]["application/json"]["schema"];
        if !schema.is_null() {
            self.validate(schema, body, "response", &mut errors);
        }
        errors
    }

    fn check_parameter(&self, schema: &Value, text: &str, name: &str, errors: &mut Vec<String>) {
        let schema = self.resolve(schema);
        let value = match schema["type"].as_str() {
            Some("integer") => match text.parse::<i64>() {
                Ok(n) => Value::from(n),
                Err(_) => return errors.push(format!("parameter {name} must be an integer, not {text:?}")),
            },
            Some("boolean") => match text {
                "true" | "false" => Value::from(text == "true"),
                _ => return errors.push(format!("parameter {name} must be a boolean, not {text:?}")),
            },
            _ => Value::from(text),
        };
        self.validate(schema, &value, name, errors);
    }

    /// Checks `value` against `schema`, adding what is wrong (with where) to `errors`.
    pub fn validate(&self, schema: &Value, value: &Value, at: &str, errors: &mut Vec<String>) {
        let schema = self.resolve(schema);
        if value.is_null() && schema["nullable"] == true {
            return;
        }
        for sub in schema["allOf"].as_array().into_iter().flatten() {
            self.validate(sub, value, at, errors);
        }
        if let Some(any) = schema["anyOf"].as_array()
            && !any.iter().any(|sub| self.passes(sub, value))
        {
            errors.push(format!("{at}: matches none of anyOf"));
        }
        if let Some(one) = schema["oneOf"].as_array() {
            let matching = one.iter().filter(|sub| self.passes(sub, value)).count();
            if matching != 1 {
                errors.push(format!("{at}: matches {matching} of oneOf, not exactly one"));
            }
        }
        let types: Vec<&str> = match &schema["type"] {
            Value::String(t) => vec![t.as_str()],
            Value::Array(ts) => ts.iter().filter_map(Value::as_str).collect(),
            _ => Vec::new(),
        };
        if !types.is_empty() && !types.iter().any(|t| has_type(value, t)) {
            return errors.push(format!("{at}: expected {}, got {}", types.join(" or "), type_of(value)));
        }
        if let Some(allowed) = schema["enum"].as_array()
            && !allowed.contains(value)
        {
            errors.push(format!("{at}: {value} is not one of {}", Value::Array(allowed.clone())));
        }
        match value {
            Value::String(text) => {
                let length = text.chars().count() as u64;
                if schema["maxLength"].as_u64().is_some_and(|max| length > max) {
                    errors.push(format!("{at}: longer than {} characters", schema["maxLength"]));
                }
                if schema["minLength"].as_u64().is_some_and(|min| length < min) {
                    errors.push(format!("{at}: shorter than {} characters", schema["minLength"]));
                }
            }
            Value::Number(n) => {
                let n = n.as_f64().unwrap_or_default();
                if schema["minimum"].as_f64().is_some_and(|min| n < min) {
                    errors.push(format!("{at}: below the minimum {}", schema["minimum"]));
                }
                if schema["maximum"].as_f64().is_some_and(|max| n > max) {
                    errors.push(format!("{at}: above the maximum {}", schema["maximum"]));
                }
            }
            Value::Array(items) => {
                let count = items.len() as u64;
                if schema["maxItems"].as_u64().is_some_and(|max| count > max) {
                    errors.push(format!("{at}: more than {} items", schema["maxItems"]));
                }
                if schema["minItems"].as_u64().is_some_and(|min| count < min) {
                    errors.push(format!("{at}: fewer than {} items", schema["minItems"]));
                }
                if !schema["items"].is_null() {
                    for (i, item) in items.iter().enumerate() {
                        self.validate(&schema["items"], item, &format!("{at}[{i}]"), errors);
                    }
                }
            }
            Value::Object(fields) => {
                for required in schema["required"].as_array().into_iter().flatten().filter_map(Value::as_str) {
                    if !fields.contains_key(required) {
                        errors.push(format!("{at}: required field {required} is missing"));
                    }
                }
                let properties = schema["properties"].as_object();
                for (name, field) in fields {
                    let here = format!("{at}.{name}");
                    match properties.and_then(|p| p.get(name)) {
                        Some(property) => self.validate(property, field, &here, errors),
                        None => match &schema["additionalProperties"] {
                            Value::Bool(false) => errors.push(format!("{here}: not a documented field")),
                            extra @ Value::Object(_) => self.validate(extra, field, &here, errors),
                            _ => {}
                        },
                    }
                }
            }
            Value::Null | Value::Bool(_) => {}
        }
    }

    fn passes(&self, schema: &Value, value: &Value) -> bool {
        let mut errors = Vec::new();
        self.validate(schema, value, "", &mut errors);
        errors.is_empty()
    }
}

fn has_type(value: &Value, kind: &str) -> bool {
    match kind {
        "integer" => value.is_i64() || value.is_u64(),
        "number" => value.is_number(),
        "string" => value.is_string(),
        "boolean" => value.is_boolean(),
        "array" => value.is_array(),
        "object" => value.is_object(),
        "null" => value.is_null(),
        _ => true,
    }
}

fn type_of(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(n) if n.is_f64() => "number",
        Value::Number(_) => "integer",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}
