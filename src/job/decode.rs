//! Decode: message bytes and properties to an [`Envelope`], a JSON object with the job's id,
//! type and account picked out, or a [`Rejection`] that says why the bytes are not a job.

use serde_json::{Map, Value};

use super::{ErrorCode, Rejection};
use crate::config::DEFAULT_ACCOUNT;

/// The message properties that decoding looks at.
#[derive(Debug, Clone, Default)]
pub struct MessageMeta {
    pub content_type: Option<String>,
    pub content_encoding: Option<String>,
    pub message_id: Option<String>,
}

/// A message that is a JSON object, not yet validated as a job.
#[derive(Debug, Clone)]
pub struct Envelope {
    /// The job id: the `id` field when it is a usable string, else the AMQP message_id, else a
    /// generated UUID.
    pub job_id: String,
    /// The `type` field when it is a string.
    pub job_type: Option<String>,
    /// The `account` field when it is a string, else the default account.
    pub account: String,
    pub fields: Map<String, Value>,
}

/// Decodes a message body into an [`Envelope`].
///
/// On failure the caller still knows the job id from `meta.message_id`, if any.
pub fn decode(body: &[u8], meta: &MessageMeta, max_bytes: usize) -> Result<Envelope, Rejection> {
    if body.len() > max_bytes {
        return Err(Rejection::new(
            ErrorCode::MessageTooLarge,
            format!(
                "the message body is {} bytes, more than the limit of {max_bytes} bytes \
                 (jobs.max_message_bytes); split the job into smaller ones",
                body.len()
            ),
        ));
    }
    check_content_type(meta)?;

    let text = std::str::from_utf8(body).map_err(|err| {
        Rejection::new(
            ErrorCode::InvalidUtf8,
            format!(
                "the message body is not valid UTF-8 (first invalid byte at offset {}); \
                 send the job as UTF-8 encoded JSON",
                err.valid_up_to()
            ),
        )
    })?;
    let value: Value = serde_json::from_str(text).map_err(|err| {
        Rejection::new(
            ErrorCode::InvalidJson,
            format!("the message body is not valid JSON: {err}"),
        )
    })?;
    let Value::Object(fields) = value else {
        return Err(Rejection::new(
            ErrorCode::NotAnObject,
            format!(
                "the message body is {} in JSON, but a job must be a JSON object with a \"type\" \
                 field",
                json_kind(&value)
            ),
        ));
    };

    let job_id = fields
        .get("id")
        .and_then(Value::as_str)
        .filter(|id| usable_id(id))
        .map(str::to_owned)
        .or_else(|| meta.message_id.clone().filter(|id| !id.is_empty()))
        .unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
    let job_type = fields
        .get("type")
        .and_then(Value::as_str)
        .map(str::to_owned);
    let account = fields
        .get("account")
        .and_then(Value::as_str)
        .unwrap_or(DEFAULT_ACCOUNT)
        .to_owned();
    Ok(Envelope {
        job_id,
        job_type,
        account,
        fields,
    })
}

/// Maximum length in bytes of a job id, so that it fits AMQP short strings such as correlation_id.
pub const MAX_ID_BYTES: usize = 255;

/// Checks that a job id is 1 to 255 bytes without control characters.
pub(super) fn usable_id(id: &str) -> bool {
    !id.is_empty() && id.len() <= MAX_ID_BYTES && !id.chars().any(char::is_control)
}

fn check_content_type(meta: &MessageMeta) -> Result<(), Rejection> {
    if let Some(content_type) = meta.content_type.as_deref() {
        let essence = content_type
            .split(';')
            .next()
            .unwrap_or_default()
            .trim()
            .to_ascii_lowercase();
        if essence != "application/json" {
            return Err(Rejection::new(
                ErrorCode::UnsupportedContentType,
                format!(
                    "content_type {content_type:?} is not supported; publish jobs with \
                     content_type application/json, or without a content_type"
                ),
            ));
        }
    }
    if let Some(encoding) = meta.content_encoding.as_deref() {
        let plain = ["utf-8", "utf8", "identity"];
        if !plain.iter().any(|p| encoding.eq_ignore_ascii_case(p)) {
            return Err(Rejection::new(
                ErrorCode::UnsupportedContentType,
                format!(
                    "content_encoding {encoding:?} is not supported; send the JSON body \
                     uncompressed, without a content_encoding"
                ),
            ));
        }
    }
    Ok(())
}

/// Names the JSON type of a value, for messages.
pub(super) fn json_kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAX: usize = 1024;

    fn meta() -> MessageMeta {
        MessageMeta::default()
    }

    #[test]
    fn object_decodes_with_id_type_account() {
        let body = br#"{"id":"j1","type":"purge_all","account":"shop","service_id":"x"}"#;
        let envelope = decode(body, &meta(), MAX).unwrap();
        assert_eq!(envelope.job_id, "j1");
        assert_eq!(envelope.job_type.as_deref(), Some("purge_all"));
        assert_eq!(envelope.account, "shop");
    }

    #[test]
    fn id_falls_back_to_message_id_then_uuid() {
        let with_message_id = MessageMeta {
            message_id: Some("m-7".to_owned()),
            ..meta()
        };
        let envelope = decode(br#"{"type":"get_token"}"#, &with_message_id, MAX).unwrap();
        assert_eq!(envelope.job_id, "m-7");

        let envelope = decode(br#"{"type":"get_token"}"#, &meta(), MAX).unwrap();
        assert!(uuid::Uuid::parse_str(&envelope.job_id).is_ok());
        assert_eq!(envelope.account, "default");
    }

    #[test]
    fn body_at_size_limit_accepted() {
        let mut body = br#"{"type":"get_token"}"#.to_vec();
        body.resize(MAX, b' ');
        assert!(decode(&body, &meta(), MAX).is_ok());
    }

    #[test]
    fn oversized_body_rejected_unread() {
        let body = vec![b' '; MAX + 1];
        let rejection = decode(&body, &meta(), MAX).unwrap_err();
        assert_eq!(rejection.code, ErrorCode::MessageTooLarge);
        assert!(rejection.message.contains("1025"), "{}", rejection.message);
    }

    #[test]
    fn invalid_utf8_rejected() {
        let rejection = decode(b"{\"type\":\"\xff\"}", &meta(), MAX).unwrap_err();
        assert_eq!(rejection.code, ErrorCode::InvalidUtf8);
    }

    #[test]
    fn invalid_json_rejected() {
        let rejection = decode(b"{\"type\":", &meta(), MAX).unwrap_err();
        assert_eq!(rejection.code, ErrorCode::InvalidJson);
    }

    #[test]
    fn non_object_rejected() {
        for body in [&b"[1,2]"[..], b"\"purge\"", b"42", b"null"] {
            let rejection = decode(body, &meta(), MAX).unwrap_err();
            assert_eq!(rejection.code, ErrorCode::NotAnObject);
        }
    }

    #[test]
    fn deep_nesting_rejected_without_overflow() {
        let body = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
        let rejection = decode(body.as_bytes(), &meta(), usize::MAX).unwrap_err();
        assert_eq!(rejection.code, ErrorCode::InvalidJson);
    }

    #[test]
    fn content_types() {
        for accepted in ["application/json", "Application/JSON; charset=utf-8"] {
            let meta = MessageMeta {
                content_type: Some(accepted.to_owned()),
                ..meta()
            };
            assert!(decode(b"{}", &meta, MAX).is_ok(), "{accepted}");
        }
        for rejected in ["text/plain", "application/xml", ""] {
            let meta = MessageMeta {
                content_type: Some(rejected.to_owned()),
                ..meta()
            };
            let rejection = decode(b"{}", &meta, MAX).unwrap_err();
            assert_eq!(rejection.code, ErrorCode::UnsupportedContentType);
        }
        let gzip = MessageMeta {
            content_encoding: Some("gzip".to_owned()),
            ..meta()
        };
        let rejection = decode(b"{}", &gzip, MAX).unwrap_err();
        assert_eq!(rejection.code, ErrorCode::UnsupportedContentType);
    }
}
