//! Every schema documented in controller/openapi.yaml against the type that carries it:
//! - the type's fields (as serde reads them) are exactly the schema's properties;
//! - an instance built from the schema, with every documented property, reads into the type
//!   and writes back with exactly the documented properties, recursively (nested types and
//!   enum values included);
//! - every object schema is covered here, and the query parameters of the list endpoints are
//!   the fields of their query types.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeSet;

use jitgate_api as api;
use serde::de::DeserializeOwned;
use serde::{Deserializer, Serialize};
use serde_json::{Value, json};

fn spec() -> Value {
    serde_yaml_ng::from_str(include_str!("../../controller/openapi.yaml")).expect("openapi.yaml")
}

/// The schema behind `$ref`s and single-element `allOf`s.
fn resolve<'a>(spec: &'a Value, s: &'a Value) -> &'a Value {
    if let Some(r) = s.get("$ref").and_then(Value::as_str) {
        let name = r.strip_prefix("#/components/schemas/").expect("local ref");
        return resolve(spec, &spec["components"]["schemas"][name]);
    }
    if let Some([one]) = s.get("allOf").and_then(Value::as_array).map(Vec::as_slice) {
        return resolve(spec, one);
    }
    s
}

fn properties(s: &Value) -> Option<BTreeSet<String>> {
    s.get("properties")
        .and_then(Value::as_object)
        .map(|p| p.keys().cloned().collect())
}

/// A value with every documented property (first enum value, example, or a valid placeholder).
fn example(spec: &Value, s: &Value) -> Value {
    let s = resolve(spec, s);
    if let Some(e) = s.get("enum").and_then(Value::as_array) {
        return e[0].clone();
    }
    if let Some(e) = s.get("example") {
        return e.clone();
    }
    if let Some(p) = s.get("properties").and_then(Value::as_object) {
        return Value::Object(
            p.iter()
                .map(|(k, v)| (k.clone(), example(spec, v)))
                .collect(),
        );
    }
    match s.get("type").and_then(Value::as_str) {
        Some("array") => json!([example(spec, &s["items"])]),
        Some("object") => json!({"anything": "goes"}),
        Some("integer") => json!(1),
        Some("number") => json!(1.5),
        Some("boolean") => json!(true),
        Some("string") => match s.get("format").and_then(Value::as_str) {
            Some("date-time") => json!("2026-01-31T17:00:00.000Z"),
            _ => json!("x"),
        },
        other => panic!("schema without a type: {other:?} {s}"),
    }
}

/// `value` has exactly the documented properties, recursively.
fn same_shape(spec: &Value, s: &Value, value: &Value, at: &str) {
    let s = resolve(spec, s);
    if let Some(props) = properties(s) {
        let obj = value.as_object().unwrap_or_else(|| panic!("{at}: {value}"));
        let keys: BTreeSet<String> = obj.keys().cloned().collect();
        assert_eq!(
            keys.difference(&props).collect::<Vec<_>>(),
            Vec::<&String>::new(),
            "{at}: written by the type but not documented"
        );
        assert_eq!(
            props.difference(&keys).collect::<Vec<_>>(),
            Vec::<&String>::new(),
            "{at}: documented but not written by the type"
        );
        for (k, v) in obj {
            if !v.is_null() {
                same_shape(spec, &s["properties"][k], v, &format!("{at}.{k}"));
            }
        }
    } else if s.get("type").and_then(Value::as_str) == Some("array") {
        for (i, v) in value.as_array().expect("array").iter().enumerate() {
            same_shape(spec, &s["items"], v, &format!("{at}[{i}]"));
        }
    }
}

/// The field names serde reads for a struct (captured from `deserialize_struct`).
fn fields_of<T: DeserializeOwned>() -> BTreeSet<String> {
    struct Capture<'a>(&'a mut Vec<&'static str>);
    impl<'de> Deserializer<'de> for Capture<'_> {
        type Error = serde::de::value::Error;
        fn deserialize_any<V: serde::de::Visitor<'de>>(
            self,
            _: V,
        ) -> Result<V::Value, Self::Error> {
            Err(serde::de::Error::custom("not a struct"))
        }
        fn deserialize_struct<V: serde::de::Visitor<'de>>(
            self,
            _: &'static str,
            fields: &'static [&'static str],
            _: V,
        ) -> Result<V::Value, Self::Error> {
            self.0.extend_from_slice(fields);
            Err(serde::de::Error::custom("captured"))
        }
        serde::forward_to_deserialize_any! {
            bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes
            byte_buf option unit unit_struct newtype_struct seq tuple tuple_struct map enum
            identifier ignored_any
        }
    }
    let mut out = Vec::new();
    let _ = T::deserialize(Capture(&mut out));
    assert!(
        !out.is_empty(),
        "{} is not a struct",
        std::any::type_name::<T>()
    );
    out.into_iter().map(String::from).collect()
}

fn check<T: DeserializeOwned + Serialize>(spec: &Value, name: &str, seen: &mut BTreeSet<String>) {
    let s = &spec["components"]["schemas"][name];
    assert!(s.is_object(), "no schema {name}");
    let props = properties(s).unwrap_or_else(|| panic!("{name} has no properties"));
    assert_eq!(
        fields_of::<T>(),
        props,
        "{name}: the fields of {} differ from the documented properties",
        std::any::type_name::<T>()
    );
    let ex = example(spec, s);
    let typed: T = serde_json::from_value(ex.clone())
        .unwrap_or_else(|e| panic!("{name}: documented instance does not read: {e}\n{ex}"));
    let back = serde_json::to_value(&typed).expect("serialises");
    same_shape(spec, s, &back, name);
    seen.insert(name.to_string());
}

#[test]
fn every_schema_matches_its_type() {
    let spec = spec();
    let mut seen = BTreeSet::new();
    let s = &spec;
    let seen = &mut seen;
    check::<api::ErrorBody>(s, "Error", seen);
    check::<api::Me>(s, "Me", seen);
    check::<api::EnrollRequest>(s, "EnrollRequest", seen);
    check::<api::EnrollResponse>(s, "EnrollResponse", seen);
    check::<api::Agent>(s, "Agent", seen);
    check::<api::InterfaceHook>(s, "InterfaceHook", seen);
    check::<api::ProgramAhead>(s, "ProgramAhead", seen);
    check::<api::Connection>(s, "Connection", seen);
    check::<api::AgentRecord>(s, "AgentRecord", seen);
    check::<api::AgentAuditVerify>(s, "AgentAuditVerify", seen);
    check::<api::AgentChainReport>(s, "AgentChainReport", seen);
    check::<api::Vm>(s, "Vm", seen);
    check::<api::VmDetail>(s, "VmDetail", seen);
    check::<api::VmAgent>(s, "VmAgent", seen);
    check::<api::ResourceGroup>(s, "ResourceGroup", seen);
    check::<api::Finding>(s, "ComplianceFinding", seen);
    check::<api::ComplianceResult>(s, "ComplianceResult", seen);
    check::<api::ScanSummary>(s, "ComplianceScan", seen);
    check::<api::ComplianceReport>(s, "ComplianceReport", seen);
    check::<api::ComplianceGroup>(s, "ComplianceGroup", seen);
    check::<api::Assignment>(s, "ComplianceAssignment", seen);
    check::<api::ScanBody>(s, "ComplianceScanBody", seen);
    check::<api::AssignBody>(s, "ComplianceAssignBody", seen);
    check::<api::RemediateBody>(s, "ComplianceRemediateBody", seen);
    check::<api::PolicyPort>(s, "PolicyPort", seen);
    check::<api::ApprovalRule>(s, "ApprovalRule", seen);
    check::<api::ApprovalStage>(s, "ApprovalStage", seen);
    check::<api::DecisionBody>(s, "DecisionBody", seen);
    check::<api::ApprovalRecord>(s, "ApprovalRecord", seen);
    check::<api::PendingStage>(s, "PendingStage", seen);
    check::<api::ApprovalEntry>(s, "ApprovalEntry", seen);
    check::<api::NewSink>(s, "NewSink", seen);
    check::<api::SinkView>(s, "SinkView", seen);
    check::<api::SinkInfo>(s, "SinkInfo", seen);
    check::<api::DeliveryFailure>(s, "DeliveryFailure", seen);
    check::<api::SinkStatus>(s, "SinkStatus", seen);
    check::<api::SinkTestResult>(s, "SinkTestResult", seen);
    check::<api::DeadDeliveries>(s, "DeadDeliveries", seen);
    check::<api::DeadCount>(s, "DeadCount", seen);
    check::<api::SecretBody>(s, "SecretBody", seen);
    check::<api::PolicyBody>(s, "PolicyBody", seen);
    check::<api::PolicyView>(s, "PolicyView", seen);
    check::<api::InitiatePort>(s, "InitiatePort", seen);
    check::<api::InitiateVm>(s, "InitiateVm", seen);
    check::<api::InitiateBody>(s, "InitiateBody", seen);
    check::<api::DenialReason>(s, "DenialReason", seen);
    check::<api::RequestPort>(s, "RequestPort", seen);
    check::<api::RequestVm>(s, "RequestVm", seen);
    check::<api::RequestView>(s, "Request", seen);
    // The activity log's bodies are the offline verifier's types.
    check::<jitgate_proto::audit::ActivityEntry>(s, "ActivityEntry", seen);
    check::<jitgate_proto::audit::Report>(s, "VerifyReport", seen);
    check::<jitgate_proto::audit::Checkpoint>(s, "Checkpoint", seen);
    check::<jitgate_proto::audit::Export>(s, "ActivityExport", seen);
    check::<api::CheckpointList>(s, "CheckpointList", seen);
    check::<api::LoginBody>(s, "LoginBody", seen);
    check::<api::LoginStarted>(s, "LoginStarted", seen);
    check::<api::CallbackBody>(s, "CallbackBody", seen);
    check::<api::DeviceStarted>(s, "DeviceStarted", seen);
    check::<api::GrantView>(s, "Grant", seen);
    check::<api::Whoami>(s, "Whoami", seen);
    check::<api::SessionGranted>(s, "SessionGranted", seen);
    check::<api::SessionView>(s, "Session", seen);
    check::<api::KeyStatus>(s, "KeyStatus", seen);
    check::<api::GrantKey>(s, "GrantKey", seen);
    check::<api::KeyAgent>(s, "KeyAgent", seen);
    check::<api::ApplyBody>(s, "ApplyBody", seen);
    check::<api::Document>(s, "Document", seen);
    check::<api::GroupDecl>(s, "GroupDecl", seen);
    check::<api::VmDecl>(s, "VmDecl", seen);
    check::<api::PolicyDecl>(s, "PolicyDecl", seen);
    check::<api::PortDecl>(s, "PortDecl", seen);
    check::<api::ApprovalDecl>(s, "ApprovalDecl", seen);
    check::<api::AssignmentDecl>(s, "AssignmentDecl", seen);
    check::<api::SinkDecl>(s, "SinkDecl", seen);
    check::<api::Plan>(s, "Plan", seen);
    check::<api::PlannedChange>(s, "PlannedChange", seen);
    check::<api::FieldChange>(s, "FieldChange", seen);
    // Every object schema is checked above.
    for (name, schema) in spec["components"]["schemas"].as_object().expect("schemas") {
        if properties(schema).is_some() {
            assert!(
                seen.contains(name),
                "schema {name} is not checked against a type"
            );
        }
    }
}

/// The query parameters documented for `path` (GET).
fn query_params(spec: &Value, path: &str) -> BTreeSet<String> {
    let item = &spec["paths"][path];
    assert!(item.is_object(), "no path {path}");
    let mut out = BTreeSet::new();
    for list in [&item["parameters"], &item["get"]["parameters"]] {
        for p in list.as_array().into_iter().flatten() {
            let p = match p.get("$ref").and_then(Value::as_str) {
                Some(r) => {
                    let n = r.strip_prefix("#/components/parameters/").expect("ref");
                    &spec["components"]["parameters"][n]
                }
                None => p,
            };
            if p["in"] == "query" {
                out.insert(p["name"].as_str().expect("name").to_string());
            }
        }
    }
    out
}

#[test]
fn query_types_match_the_documented_parameters() {
    let spec = spec();
    assert_eq!(
        fields_of::<api::ActivityQuery>(),
        query_params(&spec, "/api/v1/activityLog")
    );
    let views: BTreeSet<String> = query_params(&spec, "/api/v1/virtualMachines/{vm}/connections")
        .union(&query_params(
            &spec,
            "/api/v1/virtualMachines/{vm}/agentAudit",
        ))
        .cloned()
        .collect();
    assert_eq!(fields_of::<api::ViewQuery>(), views);
    assert_eq!(
        fields_of::<api::ApprovalsQuery>(),
        query_params(&spec, "/api/v1/approvals")
    );
    assert_eq!(
        fields_of::<api::ReportQuery>(),
        query_params(&spec, "/api/v1/compliance")
    );
    assert_eq!(
        fields_of::<api::HistoryQuery>(),
        query_params(&spec, "/api/v1/virtualMachines/{vm}/requests")
    );
    assert_eq!(
        fields_of::<api::ComplianceHistoryQuery>(),
        query_params(&spec, "/api/v1/compliance/history")
    );
}

/// Documented enums are the values the types know.
#[test]
fn documented_enums_are_known() {
    let spec = spec();
    let schema = |path: &[&str]| {
        let [name, prop] = path else {
            panic!("{path:?}")
        };
        let v = resolve(
            &spec,
            &spec["components"]["schemas"][*name]["properties"][*prop],
        );
        let mut got: Vec<String> = v["enum"]
            .as_array()
            .unwrap_or_else(|| panic!("{path:?} has no enum"))
            .iter()
            .map(|x| x.as_str().expect("string").to_string())
            .collect();
        got.sort();
        got
    };
    let names = |n: &[&str]| {
        let mut v: Vec<String> = n.iter().map(|s| s.to_string()).collect();
        v.sort();
        v
    };
    assert_eq!(
        schema(&["Request", "status"]),
        names(api::PortStatus::NAMES)
    );
    assert_eq!(
        schema(&["RequestPort", "status"]),
        names(api::PortStatus::NAMES)
    );
    for s in ["ApprovalRecord", "ApprovalEntry"] {
        assert_eq!(schema(&[s, "decision"]), names(api::Decision::NAMES), "{s}");
    }
    let denial = schema(&["DenialReason", "reason"]);
    assert!(
        denial
            .iter()
            .all(|d| api::StatusReason::NAMES.contains(&d.as_str())),
        "{denial:?}"
    );
    assert_eq!(
        schema(&["RequestPort", "statusReason"]),
        names(api::StatusReason::NAMES)
    );
    assert_eq!(schema(&["Agent", "status"]), names(api::AgentStatus::NAMES));
    assert_eq!(
        schema(&["InterfaceHook", "hook"]),
        names(api::HookKind::NAMES)
    );
    assert_eq!(
        schema(&["ProgramAhead", "hook"]),
        names(api::HookKind::NAMES)
    );
    assert_eq!(
        schema(&["InterfaceHook", "mode"]),
        names(api::HookMode::NAMES)
    );
    assert_eq!(
        schema(&["InterfaceHook", "problem"]),
        names(api::HookProblem::NAMES)
    );
    let mut conn = names(api::AgentConnection::NAMES);
    conn.retain(|c| c != "none");
    assert_eq!(schema(&["Agent", "connection"]), conn);
    let mut vm = names(api::AgentConnection::NAMES);
    vm.retain(|c| c != "revoked");
    assert_eq!(schema(&["Vm", "status"]), vm);
    assert_eq!(
        schema(&["Vm", "policySource"]),
        names(api::PolicyScope::NAMES)
    );
    assert_eq!(
        schema(&["PolicyView", "scope"]),
        names(api::PolicyScope::NAMES)
    );
    assert_eq!(schema(&["Me", "role"]), names(api::Role::NAMES));
    assert_eq!(
        schema(&["Connection", "outcome"]),
        names(api::ConnectionOutcome::NAMES)
    );
    assert_eq!(
        schema(&["Connection", "grantOrigin"]),
        names(api::GrantOrigin::NAMES)
    );
    assert_eq!(
        schema(&["ComplianceFinding", "code"]),
        names(api::FindingCode::NAMES)
    );
    assert_eq!(
        schema(&["ComplianceResult", "kind"]),
        names(api::ResourceKind::NAMES)
    );
    assert_eq!(
        schema(&["ComplianceResult", "state"]),
        names(api::ComplianceState::NAMES)
    );
    assert_eq!(
        schema(&["ComplianceScan", "reason"]),
        names(api::ScanReason::NAMES)
    );
    assert_eq!(
        schema(&["ComplianceAssignment", "effect"]),
        names(api::AssignmentEffect::NAMES)
    );
    assert_eq!(
        schema(&["ActivityEntry", "resourceType"]),
        names(api::ResourceType::NAMES)
    );
    assert_eq!(
        schema(&["ActivityEntry", "outcome"]),
        names(api::ActivityOutcome::NAMES)
    );
}
