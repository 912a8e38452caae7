//! Identifiers checked where they enter a service: model ids, user ids and measurements. Errors
//! quote at most a short prefix of what they refuse.

use crate::error::Error;
use crate::text::quote;

/// Model ids: 1–128 bytes of `[A-Za-z0-9._-]` in `/`-separated segments (`acme/mobilenet`), none of
/// them `.` or `..` (model ids become blob paths).
pub fn check_model_id(id: &str) -> Result<(), Error> {
    let ok = !id.is_empty()
        && id.len() <= 128
        && id.split('/').all(|seg| {
            !seg.is_empty()
                && seg != "."
                && seg != ".."
                && seg.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
        });
    if ok {
        Ok(())
    } else {
        Err(Error::invalid(format!(
            "invalid model id {}: use letters, digits, '.', '_', '-' in '/'-separated parts, at most 128 bytes",
            quote(id)
        )))
    }
}

/// User ids: `u_` and hex, at most 64 bytes (`u_0123456789abcdef0123`).
pub fn check_user_id(id: &str) -> Result<(), Error> {
    match id.strip_prefix("u_") {
        Some(rest) if id.len() <= 64 && !rest.is_empty() && rest.bytes().all(|b| b.is_ascii_hexdigit()) => Ok(()),
        _ => Err(Error::invalid(format!("invalid user id {} (user ids look like u_0123456789abcdef0123)", quote(id)))),
    }
}

/// A measurement as a user gives it (hex, 16 to 64 bytes, any case), lowercased.
pub fn normalize_measurement(m: &str) -> Result<String, Error> {
    let m = m.trim().to_ascii_lowercase();
    let ok = m.len().is_multiple_of(2) && (32..=128).contains(&m.len()) && m.bytes().all(|b| b.is_ascii_hexdigit());
    if ok {
        Ok(m)
    } else {
        Err(Error::invalid(format!(
            "invalid measurement {}: hex, 16 to 64 bytes (as `enclava find` or `enclava evidence verify` print it)",
            quote(&m)
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_checked_and_quoted_short() {
        assert!(check_model_id("acme/mobilenet").is_ok());
        for bad in ["", "../x", "a//b", "a b", &"x".repeat(200)] {
            let e = check_model_id(bad).expect_err(bad);
            assert!(e.message.len() < 200, "{e}");
        }
        assert!(check_user_id("u_0123abcd").is_ok());
        assert!(check_user_id("u_").is_err() && check_user_id("x_12").is_err());
        assert_eq!(normalize_measurement(&"AB".repeat(48)).expect("ok"), "ab".repeat(48));
        assert!(normalize_measurement("abcd").is_err());
    }
}
