//! The notification value of LISTEN/NOTIFY, as every driver delivers it.

/// One notification: sent with `NOTIFY channel, 'payload'` (or `pg_notify`) by the backend
/// `process_id`, delivered to every session listening on `channel`.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Notification {
    /// The channel.
    pub channel: String,
    /// The payload (empty when none was given).
    pub payload: String,
    /// The process id of the sending backend.
    pub process_id: i32,
}

impl Notification {
    /// A notification from its parts.
    pub fn new(channel: impl Into<String>, payload: impl Into<String>, process_id: i32) -> Self {
        Notification {
            channel: channel.into(),
            payload: payload.into(),
            process_id,
        }
    }
}

/// The longest payload the server accepts, in bytes (it refuses 8000 and more).
pub const MAX_PAYLOAD: usize = 7999;

/// The longest channel name the server keeps, in bytes (longer ones are truncated, so two
/// long names could collide).
pub const MAX_CHANNEL: usize = 63;

/// Checks a channel name and payload before anything is sent.
///
/// # Errors
/// [`ErrorKind::Config`](crate::ErrorKind::Config) for an empty or too long channel name, or
/// a payload over [`MAX_PAYLOAD`] bytes.
pub fn check_notification(channel: &str, payload: &str) -> crate::Result<()> {
    check_channel(channel)?;
    if payload.len() > MAX_PAYLOAD {
        return Err(crate::Error::new(
            crate::ErrorKind::Config,
            format!(
                "the payload is {} bytes; the server accepts at most {MAX_PAYLOAD}",
                payload.len()
            ),
        )
        .with_hint("send a key and let listeners read the data from a table"));
    }
    Ok(())
}

/// Checks a channel name.
///
/// # Errors
/// As [`check_notification`].
pub fn check_channel(channel: &str) -> crate::Result<()> {
    if channel.is_empty() || channel.len() > MAX_CHANNEL || channel.contains('\0') {
        return Err(crate::Error::new(
            crate::ErrorKind::Config,
            format!(
                "channel name {channel:?} must be 1 to {MAX_CHANNEL} bytes without NUL ({} given)",
                channel.len()
            ),
        )
        .with_hint("the server truncates longer names, so use a shorter one"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_are_checked_before_sending() {
        assert!(check_notification("jobs", &"x".repeat(MAX_PAYLOAD)).is_ok());
        let e = check_notification("jobs", &"x".repeat(MAX_PAYLOAD + 1)).unwrap_err();
        assert!(
            e.message().contains("8000") || e.message().contains("7999"),
            "{e}"
        );
        assert!(check_channel("").is_err());
        assert!(check_channel(&"c".repeat(64)).is_err());
        assert!(check_channel("we \"ird\" channel; DROP TABLE x").is_ok());
        let n = Notification::new("a", "b", 7);
        assert_eq!(
            (n.channel.as_str(), n.payload.as_str(), n.process_id),
            ("a", "b", 7)
        );
    }
}
