//! `TaskProgressDto` to and from JavaScript values, with the browser's own `JSON.parse`.
//!
//! Why not serde here: any serde deserializer instantiates serde's error messages, whose
//! formatting of floats alone (`Unexpected::Float`) costs the package about a quarter of its
//! gzipped size (docs/BENCHMARKS.md). The DTO is still the one in `shared`; this module only
//! reads and writes its seven fields, and rejects documents that break its rules.

use js_sys::{JSON, Object, Reflect};
use taskpulse_shared::{TaskProgressDto, TaskStatus};
use wasm_bindgen::JsValue;

/// Reads a task update from a MESSAGE body.
///
/// # Errors
/// A sentence naming the field that is missing or invalid.
pub(crate) fn parse(body: &[u8]) -> Result<TaskProgressDto, String> {
    let text = std::str::from_utf8(body).map_err(|_| "the body is not UTF-8".to_owned())?;
    let value = JSON::parse(text).map_err(|_| "the body is not JSON".to_owned())?;
    if !value.is_object() || js_sys::Array::is_array(&value) {
        return Err("the body is not a JSON object".into());
    }
    let status = string(&value, "status")?.ok_or("status is missing")?;
    let status = status
        .parse::<TaskStatus>()
        .map_err(|_| "status is not one of created, queued, processing, completed, failed")?;
    let progress = integer(&value, "progress", 100)?.ok_or("progress is missing")?;
    let mut update = TaskProgressDto::new(
        string(&value, "taskNo")?.ok_or("taskNo is missing")?,
        status,
        progress as u8,
        string(&value, "message")?.unwrap_or_default(),
    );
    update.result_url = string(&value, "resultUrl")?;
    update.error_message = string(&value, "errorMessage")?;
    update.queue_position = integer(&value, "queuePosition", u32::MAX.into())?.map(|n| n as u32);
    Ok(update)
}

/// The update as a plain object, the same document the server sent.
pub(crate) fn to_js(update: &TaskProgressDto) -> JsValue {
    let object = Object::new();
    let set = |name: &str, value: JsValue| {
        let _ = Reflect::set(&object, &name.into(), &value);
    };
    set("taskNo", update.task_no.as_str().into());
    set("status", update.status.as_str().into());
    set("progress", update.progress.into());
    set("message", update.message.as_str().into());
    if let Some(url) = &update.result_url {
        set("resultUrl", url.as_str().into());
    }
    if let Some(error) = &update.error_message {
        set("errorMessage", error.as_str().into());
    }
    if let Some(position) = update.queue_position {
        set("queuePosition", position.into());
    }
    object.into()
}

fn field(object: &JsValue, name: &str) -> Option<JsValue> {
    let value = Reflect::get(object, &name.into()).ok()?;
    (!value.is_undefined() && !value.is_null()).then_some(value)
}

fn string(object: &JsValue, name: &str) -> Result<Option<String>, String> {
    match field(object, name) {
        None => Ok(None),
        Some(value) => value.as_string().map(Some).ok_or(format!("{name} is not a string")),
    }
}

fn integer(object: &JsValue, name: &str, max: u64) -> Result<Option<u64>, String> {
    match field(object, name).map(|v| v.as_f64()) {
        None => Ok(None),
        Some(Some(n)) if n >= 0.0 && n.fract() == 0.0 && n <= max as f64 => Ok(Some(n as u64)),
        Some(_) => Err(format!("{name} is not an integer from 0 to {max}")),
    }
}
