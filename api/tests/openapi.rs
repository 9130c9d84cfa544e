//! `api/openapi.json` says what the server accepts: every request body the
//! routes decode is checked against its schema, field by field, so a new
//! field (like `batch`) cannot be accepted by the server and refused by
//! clients that validate against the document.

use std::collections::BTreeMap;

use halite_api::types::{JobRequest, LoginRequest};
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::{json, Value};

fn document() -> Value {
    serde_json::from_str(halite_api::routes::OPENAPI).expect("openapi.json is JSON")
}

/// A validator for `#/components/schemas/NAME`, refs resolved in the
/// document.
fn validator(name: &str) -> jsonschema::Validator {
    let doc = document();
    let schema = json!({
        "$ref": format!("#/components/schemas/{name}"),
        "components": doc["components"],
    });
    jsonschema::validator_for(&schema).expect("a valid JSON Schema")
}

fn schema(name: &str) -> Value {
    document()["components"]["schemas"][name].clone()
}

/// Checks, for the body type `T` and its schema `name`:
/// - a body with every field set is valid against the schema;
/// - the schema lists exactly the fields the type has;
/// - a field the type does not know is refused by both or by neither.
fn agrees<T: Serialize + DeserializeOwned>(name: &str, full: &T) {
    let body = serde_json::to_value(full).expect("serialize");
    let errors: Vec<String> = validator(name)
        .iter_errors(&body)
        .map(|e| e.to_string())
        .collect();
    assert!(errors.is_empty(), "{name}: {body} refused: {errors:?}");
    let fields: Vec<&String> = body.as_object().expect("an object").keys().collect();
    let schema = schema(name);
    let properties: Vec<&String> = schema["properties"]
        .as_object()
        .expect("properties")
        .keys()
        .collect();
    let mut fields_sorted = fields.clone();
    fields_sorted.sort();
    let mut properties_sorted = properties.clone();
    properties_sorted.sort();
    assert_eq!(
        fields_sorted, properties_sorted,
        "{name}: the server's fields and the document's"
    );
    let mut extra = body.clone();
    extra["not_a_field"] = json!(1);
    let server_refuses = serde_json::from_value::<T>(extra.clone()).is_err();
    let document_refuses = !validator(name).is_valid(&extra);
    assert_eq!(
        server_refuses, document_refuses,
        "{name}: an unknown field is refused by the server: {server_refuses}, by the document: {document_refuses}"
    );
}

#[test]
fn job_requests_match_the_document() {
    let full = JobRequest {
        target: "web*".into(),
        tgt_type: halite_proto::TargetType::Compound,
        fun: "git_deploy.deploy".into(),
        arg: vec![json!("x")],
        kwarg: json!({"app": "shop"})
            .as_object()
            .cloned()
            .unwrap_or_default(),
        secret: BTreeMap::from([("token".to_owned(), "s3cret".to_owned())]),
        timeout: Some(60),
        require_up: true,
        batch: Some("25%".into()),
        override_freeze: true,
        // Never in a body: the master sets them for a request's deploy
        // and a freeze override.
        release_request: None,
        freeze_overridden: None,
    };
    agrees("JobRequest", &full);
    // The batch forms the server takes.
    for batch in ["10", "25%"] {
        let body = json!({"target": "*", "fun": "test.ping", "batch": batch});
        assert!(validator("JobRequest").is_valid(&body), "{body}");
    }
}

#[test]
fn login_requests_match_the_document() {
    let full = LoginRequest {
        username: "alice".into(),
        password: "a long password".into(),
        eauth: Some("pam".into()),
    };
    agrees("LoginRequest", &full);
}
