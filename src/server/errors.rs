//! HTTP error responses in SGLang's two shapes.
//!
//! * OpenAI routes (flat): `{"object":"error","message":..,"type":"BadRequestError","param":..,"code":400}`
//! * Native routes (`/generate`, ...): `{"error":{"message":..,"type":..,"param":..,"code":400}}`
//!
//! Messages name the field, the offending value and the limit.

use actix_web::http::StatusCode;
use actix_web::{HttpResponse, ResponseError};
use serde_json::{json, Value};
use std::fmt;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Shape {
    OpenAi,
    Native,
}

#[derive(Clone, Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub message: String,
    pub param: Option<String>,
    pub shape: Shape,
    pub retry_after: Option<u32>,
}

impl ApiError {
    pub fn new(status: StatusCode, message: impl Into<String>) -> Self {
        ApiError { status, message: message.into(), param: None, shape: Shape::OpenAi, retry_after: None }
    }
    pub fn bad(param: impl Into<String>, message: impl Into<String>) -> Self {
        ApiError { param: Some(param.into()), ..Self::new(StatusCode::BAD_REQUEST, message) }
    }
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, message)
    }
    pub fn unavailable(message: impl Into<String>) -> Self {
        ApiError { retry_after: Some(1), ..Self::new(StatusCode::SERVICE_UNAVAILABLE, message) }
    }
    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, message)
    }
    pub fn status_code(code: u16, message: impl Into<String>) -> Self {
        let status = StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let mut e = Self::new(status, message);
        if status == StatusCode::SERVICE_UNAVAILABLE {
            e.retry_after = Some(1);
        }
        e
    }
    pub fn param(mut self, param: impl Into<String>) -> Self {
        self.param = Some(param.into());
        self
    }
    pub fn shape(mut self, shape: Shape) -> Self {
        self.shape = shape;
        self
    }

    pub fn type_name(&self) -> String {
        match self.status.as_u16() {
            400 => "BadRequestError".into(),
            401 => "AuthenticationError".into(),
            404 => "NotFoundError".into(),
            408 => "RequestTimeoutError".into(),
            413 => "PayloadTooLargeError".into(),
            431 => "RequestHeaderFieldsTooLargeError".into(),
            500 => "InternalServerError".into(),
            c => c.to_string(),
        }
    }

    /// The error object (inner part of the native shape; the whole flat OpenAI body).
    pub fn object(&self) -> Value {
        json!({
            "object": "error",
            "message": self.message,
            "type": self.type_name(),
            "param": self.param,
            "code": self.status.as_u16(),
        })
    }

    pub fn body(&self) -> Value {
        match self.shape {
            Shape::OpenAi => self.object(),
            Shape::Native => json!({"error": {
                "message": self.message,
                "type": self.type_name(),
                "param": self.param,
                "code": self.status.as_u16(),
            }}),
        }
    }
}

impl fmt::Display for ApiError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.status, self.message)
    }
}

impl ResponseError for ApiError {
    fn status_code(&self) -> StatusCode {
        self.status
    }
    fn error_response(&self) -> HttpResponse {
        let mut r = HttpResponse::build(self.status);
        if let Some(s) = self.retry_after {
            r.insert_header(("Retry-After", s.to_string()));
        }
        r.json(self.body())
    }
}

pub type ApiResult<T> = Result<T, ApiError>;
