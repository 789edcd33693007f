//! What the task service accepts: submissions, external workers' reports, task numbers.
//! Pure functions, unit tested.

use taskpulse_shared::{
    TaskProgressDto, TaskStatus,
    dto::{ProgressReport, SubmitTaskRequest, TaskKind},
};

use super::TaskError;

/// Checks a submission; `max` is `tasks.max_prompt_chars`.
pub(super) fn validate(request: &SubmitTaskRequest, max: usize) -> Result<(), TaskError> {
    let invalid = |field, reason: String| Err(TaskError::Invalid { field, reason });
    let prompt = request.prompt();
    let field = if request.kind() == TaskKind::External { "description" } else { "prompt" };
    if request.kind() != TaskKind::External && prompt.trim().is_empty() {
        return invalid(field, "must not be empty".into());
    }
    if prompt.chars().count() > max {
        return invalid(
            field,
            format!("must be at most {max} characters (tasks.max_prompt_chars)"),
        );
    }
    if prompt.chars().any(|c| c.is_control() && c != '\n' && c != '\t') {
        return invalid(field, "must not contain control characters".into());
    }
    if let SubmitTaskRequest::ImageToImage { image_url, .. } = request {
        if image_url.len() > MAX_TEXT_CHARS {
            return invalid("imageUrl", format!("must be at most {MAX_TEXT_CHARS} characters"));
        }
        match reqwest::Url::parse(image_url) {
            Ok(url) if matches!(url.scheme(), "http" | "https") && url.host().is_some() => {}
            Ok(_) => return invalid("imageUrl", "must be an http:// or https:// URL".into()),
            Err(e) => return invalid("imageUrl", format!("is not a URL: {e}")),
        }
    }
    Ok(())
}

/// Longest `message`, `errorMessage` and `resultUrl` an external worker may report, and
/// longest `imageUrl`: every task update is stored, logged and pushed to every session of
/// its owner, so its size is bounded.
pub const MAX_TEXT_CHARS: usize = 2048;

/// The state an external report leads to, or why it is refused.
pub(super) fn next_external_state(
    current: &TaskProgressDto,
    report: ProgressReport,
) -> Result<TaskProgressDto, TaskError> {
    let invalid = |field, reason: &str| TaskError::Invalid { field, reason: reason.to_owned() };
    for (field, text) in [
        ("message", &report.message),
        ("errorMessage", &report.error_message),
        ("resultUrl", &report.result_url),
    ] {
        if text.as_ref().is_some_and(|t| t.chars().count() > MAX_TEXT_CHARS) {
            return Err(TaskError::Invalid {
                field,
                reason: format!("must be at most {MAX_TEXT_CHARS} characters"),
            });
        }
    }
    let status = report.status.unwrap_or(current.status);
    if status == TaskStatus::Created && current.status != TaskStatus::Created {
        return Err(invalid("status", "a task cannot go back to created"));
    }
    let progress = match report.progress {
        Some(p) if p > 100 => return Err(invalid("progress", "must be between 0 and 100")),
        Some(p) => p as u8,
        None if status == TaskStatus::Completed => 100,
        None => current.progress,
    };
    let mut next = TaskProgressDto::new(
        &current.task_no,
        status,
        progress,
        report.message.unwrap_or_else(|| {
            if status == current.status { current.message.clone() } else { status.to_string() }
        }),
    );
    match status {
        TaskStatus::Completed => {
            let url = report
                .result_url
                .filter(|u| !u.trim().is_empty())
                .ok_or_else(|| invalid("resultUrl", "is required with status completed"))?;
            next.result_url = Some(url);
        }
        TaskStatus::Failed => {
            let error = report
                .error_message
                .filter(|u| !u.trim().is_empty())
                .ok_or_else(|| invalid("errorMessage", "is required with status failed"))?;
            next.error_message = Some(error);
        }
        _ => {
            if report.result_url.is_some() {
                return Err(invalid("resultUrl", "is only accepted with status completed"));
            }
            if report.error_message.is_some() {
                return Err(invalid("errorMessage", "is only accepted with status failed"));
            }
        }
    }
    Ok(next)
}

/// 128 random bits, hex: unique and not guessable.
pub(super) fn new_task_no() -> String {
    crate::secret::random_hex(16).expect("the OS provides randomness")
}

/// True when `s` could be a task number (so it is safe in a file name).
pub fn is_task_no(s: &str) -> bool {
    s.len() == 32 && s.bytes().all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn processing() -> TaskProgressDto {
        TaskProgressDto::new("T", TaskStatus::Processing, 40, "working")
    }

    #[test]
    fn external_reports_are_validated() {
        let report =
            |json: &str| next_external_state(&processing(), serde_json::from_str(json).unwrap());
        let next = report(r#"{"progress":60}"#).unwrap();
        assert_eq!(
            (next.status, next.progress, next.message.as_str()),
            (TaskStatus::Processing, 60, "working")
        );
        let done = report(r#"{"status":"completed","resultUrl":"https://x/r.png"}"#).unwrap();
        assert_eq!((done.progress, done.result_url.as_deref()), (100, Some("https://x/r.png")));
        for (json, field) in [
            (r#"{"progress":101}"#, "progress"),
            (r#"{"status":"completed"}"#, "resultUrl"),
            (r#"{"status":"failed"}"#, "errorMessage"),
            (r#"{"status":"created"}"#, "status"),
            (r#"{"resultUrl":"x"}"#, "resultUrl"),
        ] {
            match report(json) {
                Err(TaskError::Invalid { field: f, .. }) => assert_eq!(f, field, "{json}"),
                other => panic!("{json}: {other:?}"),
            }
        }
    }

    #[test]
    fn task_numbers_are_random_hex() {
        let a = new_task_no();
        assert!(is_task_no(&a), "{a}");
        assert_ne!(a, new_task_no());
        assert!(!is_task_no("../../etc/passwd"));
    }
}
