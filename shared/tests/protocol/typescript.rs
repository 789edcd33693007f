//! The npm package's TypeScript for the task DTO (`client-wasm/src/dto.d.ts`, which the
//! package's `.d.ts` includes) against this crate's Rust type, through the JSON the server
//! sends: the same property names, the same types, optional exactly where the JSON may
//! leave a property out, and the same status names.

use std::collections::BTreeMap;

use serde_json::Value;
use taskpulse_shared::{TaskProgressDto, TaskStatus};

const DTO_TYPES: &str =
    include_str!(concat!(env!("CARGO_MANIFEST_DIR"), "/../client-wasm/src/dto.d.ts"));

/// `name -> (optional, type)` of the properties of `export interface {name}` in `source`.
fn interface(source: &str, name: &str) -> BTreeMap<String, (bool, String)> {
    let start = format!("export interface {name} {{");
    let body = source.split(&start).nth(1).expect("the interface is declared");
    let body = body.split('}').next().expect("the interface ends");
    body.lines()
        .map(str::trim)
        .filter(|line| !line.is_empty() && !line.starts_with("/*") && !line.starts_with('*'))
        .map(|line| {
            let (property, kind) = line.trim_end_matches(';').split_once(':').expect("name: type");
            let optional = property.ends_with('?');
            let property = property.trim_end_matches('?').trim().to_owned();
            (property, (optional, kind.trim().to_owned()))
        })
        .collect()
}

/// The TypeScript type of a JSON value of the DTO (its status by name).
fn typescript(property: &str, value: &Value) -> String {
    match value {
        _ if property == "status" => "TaskStatus".into(),
        Value::String(_) => "string".into(),
        Value::Number(_) => "number".into(),
        other => panic!("{property}: a DTO property of an unexpected JSON type: {other}"),
    }
}

#[test]
fn the_typescript_task_dto_matches_the_rust_type() {
    // Every property set, and only the ones that are always there.
    let mut full = TaskProgressDto::new("T-1", TaskStatus::Failed, 40, "sampling");
    full.result_url = Some("/api/results/T-1".into());
    full.error_message = Some("out of memory".into());
    full.queue_position = Some(2);
    let full = serde_json::to_value(&full).unwrap();
    let minimal =
        serde_json::to_value(TaskProgressDto::new("T-1", TaskStatus::Queued, 0, "")).unwrap();
    let expected: BTreeMap<String, (bool, String)> = full
        .as_object()
        .unwrap()
        .iter()
        .map(|(property, value)| {
            let optional = minimal.get(property).is_none();
            (property.clone(), (optional, typescript(property, value)))
        })
        .collect();
    assert_eq!(interface(DTO_TYPES, "TaskProgressDto"), expected);

    let statuses: Vec<String> =
        TaskStatus::ALL.iter().map(|s| serde_json::to_string(s).unwrap()).collect();
    let declared = format!("export type TaskStatus = {};", statuses.join(" | "));
    assert!(DTO_TYPES.contains(&declared), "expected {declared:?} in dto.d.ts");
}
