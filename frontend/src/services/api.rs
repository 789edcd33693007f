//! The task service's HTTP API with `shared`'s DTOs. Every failure becomes an [`ApiFailure`]
//! that keeps the server's message and the field it names.

use gloo_net::http::{Request, RequestBuilder, Response};
use serde::{Serialize, de::DeserializeOwned};
use taskpulse_shared::{
    dto::{
        ApiError, Credentials, Me, ShareLink, SubmitTaskRequest, TaskDetails, TaskPage,
        TaskSubmitted, TokenResponse,
    },
    stats::Stats,
};

/// Why a call failed.
#[derive(Debug, Clone, PartialEq)]
pub struct ApiFailure {
    /// The HTTP status; 0 when the server could not be reached.
    pub status: u16,
    /// What the server said, or what went wrong on the way.
    pub message: String,
    /// The request field the server blamed.
    pub field: Option<String>,
}

impl ApiFailure {
    /// The token is no longer accepted: the user must sign in again.
    pub fn is_unauthorized(&self) -> bool {
        self.status == 401
    }

    fn network(error: impl std::fmt::Display) -> ApiFailure {
        ApiFailure {
            status: 0,
            message: format!("the server cannot be reached ({error})"),
            field: None,
        }
    }
}

async fn read<T: DeserializeOwned>(response: Response) -> Result<T, ApiFailure> {
    let status = response.status();
    if response.ok() {
        return response.json::<T>().await.map_err(|e| ApiFailure {
            status,
            message: format!("unexpected answer: {e}"),
            field: None,
        });
    }
    let body: Option<ApiError> = response.json().await.ok();
    Err(match body {
        Some(error) => ApiFailure { status, message: error.error, field: error.field },
        None => {
            ApiFailure { status, message: format!("the server answered {status}"), field: None }
        }
    })
}

fn authorized(builder: RequestBuilder, token: &str) -> RequestBuilder {
    builder.header("Authorization", &format!("Bearer {token}"))
}

async fn send<T: DeserializeOwned>(
    request: Result<Request, gloo_net::Error>,
) -> Result<T, ApiFailure> {
    let request = request.map_err(ApiFailure::network)?;
    let response = request.send().await.map_err(ApiFailure::network)?;
    read(response).await
}

async fn post<B: Serialize, T: DeserializeOwned>(
    path: &str,
    token: Option<&str>,
    body: &B,
) -> Result<T, ApiFailure> {
    let mut builder = Request::post(path);
    if let Some(token) = token {
        builder = authorized(builder, token);
    }
    send(builder.json(body)).await
}

/// `POST /api/auth/register`.
pub async fn register(credentials: &Credentials) -> Result<TokenResponse, ApiFailure> {
    post("/api/auth/register", None, credentials).await
}

/// `POST /api/auth/login`.
pub async fn login(credentials: &Credentials) -> Result<TokenResponse, ApiFailure> {
    post("/api/auth/login", None, credentials).await
}

/// `POST /api/auth/logout`: the token stops working everywhere.
pub async fn logout(token: &str) -> Result<(), ApiFailure> {
    no_content(authorized(Request::post("/api/auth/logout"), token).build()).await
}

/// Sends a request whose success has no body.
async fn no_content(request: Result<Request, gloo_net::Error>) -> Result<(), ApiFailure> {
    let request = request.map_err(ApiFailure::network)?;
    let response = request.send().await.map_err(ApiFailure::network)?;
    if response.ok() { Ok(()) } else { read::<()>(response).await }
}

/// `GET /api/me`.
pub async fn me(token: &str) -> Result<Me, ApiFailure> {
    send(authorized(Request::get("/api/me"), token).build()).await
}

/// `GET /api/tasks?limit=100`: the newest tasks, or with `before` (a page's `nextCursor`)
/// the next older ones.
pub async fn tasks(token: &str, before: Option<&str>) -> Result<TaskPage, ApiFailure> {
    let url = match before {
        Some(cursor) => {
            format!("/api/tasks?limit=100&before={}", js_sys::encode_uri_component(cursor))
        }
        None => "/api/tasks?limit=100".to_owned(),
    };
    send(authorized(Request::get(&url), token).build()).await
}

/// `GET /api/tasks/{taskNo}`.
pub async fn task(token: &str, task_no: &str) -> Result<TaskDetails, ApiFailure> {
    send(authorized(Request::get(&format!("/api/tasks/{task_no}")), token).build()).await
}

/// `POST /api/tasks`.
pub async fn submit(token: &str, request: &SubmitTaskRequest) -> Result<TaskSubmitted, ApiFailure> {
    post("/api/tasks", Some(token), request).await
}

/// `POST /api/tasks/{taskNo}/cancel`.
pub async fn cancel(token: &str, task_no: &str) -> Result<TaskDetails, ApiFailure> {
    send(authorized(Request::post(&format!("/api/tasks/{task_no}/cancel")), token).build()).await
}

/// `POST /api/tasks/{taskNo}/share`: a new read-only link (the task's earlier one stops
/// working).
pub async fn share(token: &str, task_no: &str) -> Result<ShareLink, ApiFailure> {
    send(authorized(Request::post(&format!("/api/tasks/{task_no}/share")), token).build()).await
}

/// `DELETE /api/tasks/{taskNo}/share`: the link stops working.
pub async fn unshare(token: &str, task_no: &str) -> Result<(), ApiFailure> {
    no_content(authorized(Request::delete(&format!("/api/tasks/{task_no}/share")), token).build())
        .await
}

/// `GET /api/admin/stats` (operators).
pub async fn stats(token: &str) -> Result<Stats, ApiFailure> {
    send(authorized(Request::get("/api/admin/stats"), token).build()).await
}

/// `POST /api/admin/disconnect` (operators): closes `user`'s connections; returns how many.
pub async fn disconnect(token: &str, user: &str) -> Result<u64, ApiFailure> {
    #[derive(Serialize)]
    struct Body<'a> {
        user: &'a str,
    }
    #[derive(serde::Deserialize)]
    struct Closed {
        closed: u64,
    }
    let closed: Closed = post("/api/admin/disconnect", Some(token), &Body { user }).await?;
    Ok(closed.closed)
}
